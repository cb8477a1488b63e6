"""DAgger on a Meta-World task through the real graph (Cartesian velocity + gripper actions):
bridge with the Meta-World backend (lock-step), policy node sending its whole action vector to
the dagger node, which sends the executed command as TwistStamped + gripper, the expert node
labelling with Meta-World's scripted policy and planning K-step chunk labels on its replayed
copy of the simulation, the recorder, then the round's dataset, retraining and the hot swap.
Every label and chunk is checked against the in-process expert at the same state, rebuilt by
replaying the recorded executed commands from the episode's seed. No timed asserts.
"""
import json

import numpy as np
import pytest

pytest.importorskip("metaworld")
pytest.importorskip("rclpy")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx_policies import const_policy  # noqa: E402

from bc_policy_node.core.contract import ObservationAssembler  # noqa: E402
from bc_policy_node.core.control.runtime import OnnxPolicy  # noqa: E402
from bc_policy_node.core.data.bagread import read_messages  # noqa: E402
from bc_policy_node.core.data.episodes import Dataset  # noqa: E402
from bc_policy_node.core.sim.metaworld_task import ROBOT, MetaWorldSimEnv  # noqa: E402
from bc_policy_node.pipeline.dagger.ros import RosOptions, ros_config, run_dagger_ros  # noqa: E402

pytestmark = pytest.mark.ros
TASK = "metaworld/reach-v3"
GENEROUS = {"expert_timeout_periods": 800.0}   # 10 s at 80 Hz: labels never time out on a loaded machine


def test_a_round_on_a_cartesian_gripper_task_labels_with_replayed_chunk_plans(tmp_path):
    env = MetaWorldSimEnv(ROBOT, TASK)
    c = env.contract
    rest = const_policy(tmp_path / "rest.onnx", c, [0.0, 0.0, 0.0, -1.0])   # stopped, gripper open
    out = tmp_path / "dagger"
    cfg = ros_config(robot=ROBOT, task=TASK, initial_model=str(rest), rounds=1, episodes_per_round=2,
                     out_dir=str(out), eval_seeds=range(10_000, 10_002), initial_demos=2, progress=False,
                     model_cfg={"width": 32, "depth": 1}, train_cfg={"max_steps": 30})
    summary = run_dagger_ros(cfg, RosOptions(dagger_params=GENEROUS))
    r0, r1 = summary["rounds"]
    k = summary["label_chunk_length"]
    assert k > 1 and r1["beta"] == 0.5
    episodes = sorted(json.loads((out / "round_01" / "episodes.json").read_text()), key=lambda e: e["bag"])
    assert len(episodes) == 2
    for e in episodes:
        assert e["frames"] == e["steps"] > 0 and e["missing_steps"] == 0, e
        assert e["labelled"] == e["frames"], e
    assert {a for e in episodes for a in e["actors"]} == {"expert", "policy"}
    ds = Dataset.load(out / "round_01" / "data")
    assert [len(ep) for ep in ds.episodes] == [e["steps"] for e in episodes]
    expert, asm = env.make_expert(), ObservationAssembler(c)
    lower, upper = np.array(c.action.lower), np.array(c.action.upper)
    for e, ep in zip(episodes, ds.episodes):
        tags = {m.msg.step: m.msg for m in read_messages(e["bag"], ["/dagger/frame_tag"])}
        assert sorted(tags) == list(range(len(ep))), "one frame tag per control step"
        assert ep.labelled.all() and ep.chunk_labels is not None and ep.chunk_labels.shape == (len(ep), k, c.act_dim)
        msgs = env.reset(int(ep.meta["seed"]))
        for t in range(len(ep)):
            obs = asm.assemble(msgs)
            np.testing.assert_array_equal(ep.obs[t], obs)          # the recorded state = the replayed one
            np.testing.assert_allclose(ep.act[t], expert.act_obs(obs, c), rtol=0, atol=1e-12)
            np.testing.assert_allclose(ep.chunk_labels[t], expert.plan_obs(obs, c, k), rtol=0, atol=1e-12)
            executed = np.asarray(tags[t].executed_action, dtype=float)
            assert executed.shape == (c.act_dim,) and np.all(executed >= lower - 1e-12) \
                and np.all(executed <= upper + 1e-12), (t, executed)
            msgs = env.step(executed)
    assert r1["labels_new"] == sum(len(ep) for ep in ds.episodes)
    new_id = OnnxPolicy(out / "round_01" / "policy.onnx").model_id
    assert r0["model_id"] == OnnxPolicy(rest).model_id and r1["model_id"] == new_id != r0["model_id"]
