"""Camera observations in core: contract image terms, the one decoder, the assembler's frames and
per-camera staleness, datasets of uint8 frames (memory-mapped), in-process cameras.

Real MuJoCo rendering (MUJOCO_GL=egl) and real JPEG/PNG encoders; no ROS.
"""
import io

import numpy as np
import pytest
from PIL import Image

from bc_policy_node.core import image as im
from bc_policy_node.core.contract import Contract, ContractError, ImageTerm, ObservationAssembler
from bc_policy_node.core.data.episodes import Dataset, DatasetError, Episode
from bc_policy_node.core.eval.rollout import expert_rollouts
from bc_policy_node.core.sim.env import CONTRACTS_DIR, make_env
from bc_policy_node.core.types import CompressedImageData, ImageData, JointStateData

CAMERA_CONTRACT = CONTRACTS_DIR / "camera" / "planar3_curved_reach.yaml"


def contract_dict(**image):
    term = {"name": "cam", "kind": "image", "topic": "/cam/image_raw", "type": "sensor_msgs/msg/Image",
            "height": 4, "width": 6, **image}
    return {"contract_version": 1, "name": "c", "robot": "planar3", "task": "curved_reach",
            "control_rate_hz": 50.0, "chunk_length": 2, "stale_after_s": 0.1,
            "observation": [{"name": "q", "topic": "/joint_states", "type": "sensor_msgs/msg/JointState",
                             "field": "position", "joints": ["j1"]}, term],
            "action": {"kind": "joint_position", "topic": "/cmd", "type": "std_msgs/msg/Float64MultiArray",
                       "joints": ["j1"], "lower": [-1], "upper": [1], "max_step": [0.1]}}


def test_image_terms_parse_round_trip_and_stay_out_of_the_state_vector():
    c = Contract.from_dict(contract_dict(crop=[1, 2, 3, 4], max_age_s=0.3))
    assert c.obs_dim == 1 and [t.name for t in c.observation] == ["q"]
    (t,) = c.images
    assert t.shape == (3, 4, 3) and t.input_name == "image_cam" and not t.compressed
    assert Contract.from_json(c.to_json()) == c
    assert c.observation_topics() == {"/joint_states": "sensor_msgs/msg/JointState",
                                      "/cam/image_raw": "sensor_msgs/msg/Image"}
    # a camera of another size is a mismatch a model check lists
    other = Contract.from_dict(contract_dict(height=8))
    assert any("observation[1]" in m and "'height': 4" in m for m in c.mismatches(other))
    shipped = Contract.load(CAMERA_CONTRACT)
    assert "goal" not in [t.name for t in shipped.observation] and shipped.images[0].shape == (64, 96, 3)


@pytest.mark.parametrize("change, match", [
    ({"type": "sensor_msgs/msg/PointCloud2"}, "is not one of"),
    ({"encoding": "bgr8"}, "encoding 'bgr8' not supported"),
    ({"crop": [0, 0, 5, 6]}, "crop .* inside the 6x4 frame"),
    ({"crop": [0, 0, 2]}, "crop"),
    ({"max_age_s": 0}, "max_age_s must be > 0"),
    ({"topic": "cam"}, "topic must be absolute"),
    ({"height": 0}, "size 6x0"),
])
def test_bad_image_terms_are_refused_with_the_reason(change, match):
    with pytest.raises(ContractError, match=match):
        Contract.from_dict(contract_dict(**change))


def test_an_image_topic_used_twice_is_refused():
    d = contract_dict()
    d["observation"].append(dict(d["observation"][1], name="cam2"))
    with pytest.raises(ContractError, match="used by more than one term"):
        Contract.from_dict(d)


def rgb_frame(h=4, w=6):
    return np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3)


def test_decoder_reads_raw_encodings_row_padding_and_compressed_frames():
    term = ImageTerm("cam", "/cam", "sensor_msgs/msg/Image", 4, 6)
    rgb = rgb_frame()
    np.testing.assert_array_equal(im.decode(term, ImageData(0, 4, 6, "rgb8", 18, rgb.tobytes())), rgb)
    np.testing.assert_array_equal(im.decode(term, ImageData(0, 4, 6, "bgr8", 18, rgb[:, :, ::-1].tobytes())), rgb)
    padded = np.zeros((4, 20), np.uint8)
    padded[:, :18] = rgb.reshape(4, 18)
    np.testing.assert_array_equal(im.decode(term, ImageData(0, 4, 6, "rgb8", 20, padded.tobytes())), rgb)
    mono = rgb[:, :, 0]
    np.testing.assert_array_equal(im.decode(term, ImageData(0, 4, 6, "mono8", 6, mono.tobytes())),
                                  np.repeat(mono[:, :, None], 3, axis=2))
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    np.testing.assert_array_equal(im.decode(term, CompressedImageData(0, "png", buf.getvalue())), rgb)
    cropped = ImageTerm("cam", "/cam", "sensor_msgs/msg/Image", 4, 6, crop=(1, 2, 2, 3))
    np.testing.assert_array_equal(im.decode(cropped, ImageData(0, 4, 6, "rgb8", 18, rgb.tobytes())),
                                  rgb[1:3, 2:5])


@pytest.mark.parametrize("msg, match", [
    (ImageData(0, 4, 6, "yuv422", 12, bytes(48)), "encoding 'yuv422' not supported"),
    (ImageData(0, 8, 6, "rgb8", 18, bytes(144)), "frame is 6x8, the contract expects 6x4"),
    (ImageData(0, 4, 6, "rgb8", 18, bytes(10)), "cannot hold a 6x4 rgb8 frame"),
    (CompressedImageData(0, "jpeg", b"not a jpeg"), "cannot decode the 'jpeg' frame"),
    (JointStateData(0, [], np.zeros(0), np.zeros(0)), "neither a sensor_msgs/Image nor a CompressedImage"),
])
def test_bad_frames_get_a_precise_error(msg, match):
    term = ImageTerm("cam", "/cam", "sensor_msgs/msg/Image", 4, 6)
    with pytest.raises(im.ImageError, match=match):
        im.decode(term, msg)


def test_assembler_keeps_the_last_good_frame_and_a_slow_camera_its_own_max_age():
    c = Contract.from_dict(contract_dict(max_age_s=0.3))
    a = ObservationAssembler(c)
    js = JointStateData(0, ["j1"], np.zeros(1), np.zeros(1))
    a.update("/joint_states", js, 1.0)
    assert not a.ready and a.missing_terms() == ["cam"]
    with pytest.raises(ContractError, match="no frame yet"):
        a.images()
    good = rgb_frame()
    a.update("/cam/image_raw", ImageData(0, 4, 6, "rgb8", 18, good.tobytes()), 1.0)
    assert a.ready
    with pytest.raises(im.ImageError):
        a.update("/cam/image_raw", ImageData(0, 8, 6, "rgb8", 18, bytes(144)), 1.02)
    np.testing.assert_array_equal(a.images()["cam"], good)        # the bad frame replaced nothing
    # the state is fresh at 1.2; the camera frame from 1.0 may be 0.3 s old: the stamp that
    # decides staleness (against stale_after_s 0.1) is 1.0 + 0.3 - 0.1 = 1.2 -> fresh until 1.3
    a.update("/joint_states", js, 1.2)
    assert a.oldest_stamp() == pytest.approx(1.2)
    a.update("/joint_states", js, 1.5)
    assert a.oldest_stamp() == pytest.approx(1.2)    # the camera stopped: now the oldest term


def episode_with_frames(n, value, c):
    frames = np.full((n,) + c.images[0].shape, value, dtype=np.uint8)
    frames[:, 0, 0, 0] = np.arange(n)
    return Episode(np.zeros((n, c.obs_dim)), np.zeros((n, c.act_dim)), np.arange(n) * 0.02,
                   {"seed": value}, images={"cam": frames})


def test_dataset_saves_uint8_frames_and_memory_maps_them(tmp_path):
    c = Contract.from_dict(contract_dict())
    ds = Dataset(c, [episode_with_frames(5, 1, c), episode_with_frames(3, 2, c)])
    ds.save(tmp_path / "ds")
    back = Dataset.load(tmp_path / "ds")
    assert back.content_hash() == ds.content_hash()
    frames = back.episodes[1].images["cam"]
    assert isinstance(frames, np.memmap) and frames.dtype == np.uint8 and frames.shape == (3, 4, 6, 3)
    np.testing.assert_array_equal(frames[:, 0, 0, 0], [0, 1, 2])
    assert int(frames[0, 1, 1, 1]) == 2
    changed = episode_with_frames(3, 3, c)
    assert Dataset(c, [ds.episodes[0], changed]).content_hash() != ds.content_hash()
    (tmp_path / "ds" / "images" / "cam.npy").unlink()
    with pytest.raises(DatasetError, match="camera 'cam' .* no frames"):
        Dataset.load(tmp_path / "ds")


def test_dataset_refuses_episodes_without_the_contract_cameras():
    c = Contract.from_dict(contract_dict())
    ep = episode_with_frames(2, 1, c)
    with pytest.raises(DatasetError, match="no frames for camera 'cam'"):
        Dataset(c, [Episode(ep.obs, ep.act, ep.t)])
    small = Episode(ep.obs, ep.act, ep.t, images={"cam": np.zeros((2, 2, 2, 3), np.uint8)})
    with pytest.raises(DatasetError, match="frames are .*expects"):
        Dataset(c, [small])
    with pytest.raises(DatasetError, match="must be uint8"):
        Episode(ep.obs, ep.act, ep.t, images={"cam": np.zeros((2, 4, 6, 3))})


def test_in_process_camera_demonstrations_show_the_goal_the_state_hides():
    """Expert demonstrations on the shipped camera contract: the (privileged) expert reaches the
    goal; the frames are the decoded JPEG of the scene and the green goal marker is where the
    task put the goal (it moves with the seed)."""
    c = Contract.load(CAMERA_CONTRACT)
    rs = expert_rollouts("planar3", "curved_reach", [0, 1], contract=c)
    assert [r.status for r in rs] == ["success", "success"]
    centres = []
    for r in rs:
        frames = r.images["overhead"]
        assert frames.dtype == np.uint8 and frames.shape == (r.steps,) + c.images[0].shape
        assert r.obs.shape == (r.steps, c.obs_dim)
        f = frames[0].astype(int)
        green = (f[:, :, 1] > 150) & (f[:, :, 0] < 100) & (f[:, :, 2] < 100)
        assert green.sum() >= 4, "the goal marker is visible"
        centres.append(np.argwhere(green).mean(axis=0))
    assert np.abs(centres[0] - centres[1]).max() > 2, "the marker moves with the goal"
    # in-process frames are the bridge's: rgb8 render -> JPEG -> the contract's decoder + crop
    env = make_env("planar3", "curved_reach", cameras=c.images)
    msgs = env.reset(0)
    np.testing.assert_array_equal(im.decode(c.images[0], msgs[c.images[0].topic]), rs[0].images["overhead"][0])
