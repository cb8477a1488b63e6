"""Serving camera policies without torch: the hand-built camera ONNX policy of test/onnx_policies.py,
the model/contract check naming the camera that differs, and the stalest term of an observation."""
import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx_policies import camera_policy, camera_reference  # noqa: E402

from bc_policy_node.core.contract import Contract, ObservationAssembler  # noqa: E402
from bc_policy_node.core.control.controller import PolicyController, load_policy  # noqa: E402
from bc_policy_node.core.control.params import PolicyParams  # noqa: E402
from bc_policy_node.core.control.runtime import OnnxPolicy, PolicyContractMismatch  # noqa: E402
from bc_policy_node.graph import config_path  # noqa: E402

CONTRACT = Contract.load(config_path("contracts", "camera", "planar3_curved_reach.yaml"))
GAIN = np.array([[0.3, -0.2, 0.1], [0.0, 0.4, -0.1], [-0.2, 0.1, 0.5]])   # colour channel -> joint


def with_camera(**change) -> Contract:
    d = CONTRACT.to_dict()
    d["observation"][2].update(change)
    return Contract.from_dict(d)


def test_camera_policy_actions_follow_the_mean_pixel_value(tmp_path):
    path = camera_policy(tmp_path / "cam.onnx", CONTRACT, gain=GAIN, drift=0.01)
    policy = OnnxPolicy(path)
    assert [t.name for t in policy.contract.images] == ["overhead"]
    rng = np.random.default_rng(0)
    obs = rng.normal(size=CONTRACT.obs_dim)
    frames = []
    for level in (0, 128, 255):
        img = {"overhead": np.full(CONTRACT.images[0].shape, level, np.uint8)}
        got = policy.predict_chunk(obs, images=img)[0]
        np.testing.assert_allclose(got, camera_reference(CONTRACT, obs, img, gain=GAIN, drift=0.01), atol=1e-5)
        frames.append(got)
    np.testing.assert_allclose(frames[2] - frames[0], np.arange(1, 21)[:, None] * GAIN.sum(axis=0), atol=1e-5)
    noise = {"overhead": rng.integers(0, 256, CONTRACT.images[0].shape, dtype=np.uint8)}
    np.testing.assert_allclose(policy.predict_chunk(obs, images=noise)[0],
                               camera_reference(CONTRACT, obs, noise, gain=GAIN, drift=0.01), atol=1e-5)
    ctl = PolicyController(CONTRACT, policy, PolicyParams())
    r = ctl.step(obs, 0.0, images=noise)
    assert r.chunk is not None and r.command.shape == (3,)
    with pytest.raises(ValueError, match="needs camera frames"):
        policy.predict_chunk(obs)


@pytest.mark.parametrize("change, needle", [
    ({"height": 64, "width": 64, "crop": None}, "camera 'overhead': height model 64, robot 96; width model 64, "
                                                "robot 96; crop model None, robot [20, 0, 64, 96]"),
    ({"crop": [0, 0, 64, 96]}, "camera 'overhead': crop model [0, 0, 64, 96], robot [20, 0, 64, 96]"),
    ({"name": "front", "topic": "/camera/front/image_raw/compressed"},
     "observation[2] (camera: name model 'front', robot 'overhead'; topic model '/camera/front/"),
])
def test_a_model_with_other_cameras_is_refused_naming_what_differs(tmp_path, change, needle):
    path = camera_policy(tmp_path / "other.onnx", with_camera(**change), gain=GAIN)
    with pytest.raises(PolicyContractMismatch) as e:
        load_policy(str(path), CONTRACT, PolicyParams())
    assert needle in str(e.value), str(e.value)
    assert len(e.value.mismatches) == 1


def test_a_model_without_the_camera_is_refused(tmp_path):
    from onnx_policies import hold_policy

    d = CONTRACT.to_dict()
    d["observation"] = d["observation"][:2]
    path = hold_policy(tmp_path / "blind.onnx", Contract.from_dict(d))
    with pytest.raises(PolicyContractMismatch, match="the model has no camera 'overhead'"):
        load_policy(str(path), CONTRACT, PolicyParams())


def test_stalest_names_the_camera_that_stopped():
    import io
    from types import SimpleNamespace as M

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((96, 96, 3), np.uint8)).save(buf, format="JPEG")
    asm = ObservationAssembler(CONTRACT)
    cam_topic = "/camera/overhead/image_raw/compressed"
    cam = M(format="jpeg", data=buf.getvalue())
    asm.update(cam_topic, cam, 1.0)
    asm.update("/joint_states", M(name=["j1", "j2", "j3"], position=[0.0, 0.1, 0.2]), 2.0)
    asm.update("/task_state", M(ee_position=[0.1, 0.2]), 2.0)
    assert asm.stalest() == ("overhead", 1.0) and asm.oldest_stamp() == 1.0
    assert asm.is_image_topic(cam_topic) and not asm.is_image_topic("/joint_states")
    asm.update(cam_topic, cam, 3.0)
    assert asm.stalest() == ("joint_pos", 2.0)
