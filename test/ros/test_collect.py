"""`collect()` through the real graph: bridge (lock-step) + expert + recorder processes.

Two planar3 curved_reach episodes -> bags -> dataset. The dataset must be the in-process
rollout (SimEnv + the core expert, same seeds) bit for bit: the same observations through the
same ObservationAssembler and the same expert commands, one frame per control tick.
"""
import numpy as np
import pytest

pytest.importorskip("rclpy")

from bc_policy_node.core.contract import ObservationAssembler  # noqa: E402
from bc_policy_node.core.data.dataset_builder import build_dataset  # noqa: E402
from bc_policy_node.core.sim.env import SimEnv, load_contract  # noqa: E402
from bc_policy_node.pipeline.collect import collect, format_summary, next_episode_id  # noqa: E402

pytestmark = pytest.mark.ros
ROBOT, TASK, SEED = "planar3", "curved_reach", 11


def in_process(seed):
    contract = load_contract(ROBOT, TASK)
    env = SimEnv(ROBOT, TASK)
    expert = env.make_expert()
    msgs = env.reset(seed)
    obs, act = [], []
    while not env.done:
        obs.append(ObservationAssembler(contract).assemble(msgs))
        act.append(expert.act_messages(msgs))
        msgs = env.step(act[-1])
    return np.array(obs), np.array(act), msgs["/task_state"]


def test_collect_two_episodes_build_into_the_in_process_rollouts(tmp_path):
    out = tmp_path / "bags"
    s = collect(ROBOT, TASK, episodes=2, seed=SEED, out=out, log_dir=tmp_path / "logs", progress=False)
    assert s["episodes"] == 2 and s["successes"] == 2, format_summary(s)
    assert [r["seed"] for r in s["rows"]] == [SEED, SEED + 1] and next_episode_id(out) == 2

    ds, rep = build_dataset([out], load_contract(ROBOT, TASK))
    assert rep["included"] == 2, rep["episodes"]
    assert ds.num_frames == s["frames"]
    for ep, row in zip(ds.episodes, s["rows"]):
        assert ep.meta["success"] is True and ep.meta["complete"] is True and ep.meta["seed"] == row["seed"]
        assert ep.meta["alignment"] == "command" and ep.meta["frame_clock"] == "header"
        obs, act, final = in_process(row["seed"])
        assert final.success and len(ep) == len(obs) == row["frames"] and not row["recorder_short"]
        np.testing.assert_array_equal(ep.obs, obs)
        np.testing.assert_array_equal(ep.act, act)
        np.testing.assert_allclose(ep.t, np.arange(len(ep)) * 0.02, atol=1e-9)
