"""A Meta-World task end to end through the ROS graph: `bc-policy collect` (bridge with the
Meta-World backend, expert node driving with Meta-World's scripted policy, recorder) -> bags ->
dataset (the twist and gripper streams paired per tick) -> training -> ONNX -> the policy node
in lock-step on the bridge. The recorded episodes equal the in-process expert's rollouts
exactly, and the policy node's episodes equal the in-process evaluation of the same model on
the same seeds (status and length of every episode). Waits are bounded (collect / closed_loop
raise with the nodes' logs)."""
import numpy as np
import pytest

pytest.importorskip("rclpy")
pytest.importorskip("metaworld")
pytest.importorskip("torch")

from bc_policy_node.core.data.dataset_builder import build_dataset  # noqa: E402
from bc_policy_node.core.eval.rollout import evaluate, expert_act_fn, rollout  # noqa: E402
from bc_policy_node.core.sim.env import load_contract, make_env  # noqa: E402
from bc_policy_node.pipeline.closed_loop import run_policy_episodes  # noqa: E402
from bc_policy_node.pipeline.collect import collect  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]
ROBOT, TASK = "sawyer", "metaworld/reach-v3"
SEEDS = (0, 1, 2)


def test_collect_build_train_export_serve(tmp_path):
    from bc_policy_node.learning import export, train
    from bc_policy_node.pipeline.dagger.training import round_configs

    c = load_contract(ROBOT, TASK)
    summary = collect(ROBOT, TASK, len(SEEDS), SEEDS[0], tmp_path / "bags", tmp_path / "logs", progress=False)
    assert summary["successes"] == len(SEEDS), summary["rows"]
    ds, rep = build_dataset(summary["bags"], c)
    assert rep["included"] == len(SEEDS), rep["episodes"]
    env = make_env(ROBOT, TASK)
    fn = expert_act_fn(env, c)
    by_seed = {int(ep.meta["seed"]): ep for ep in ds.episodes}
    for s in SEEDS:
        want = rollout(env, c, fn, s)
        got = by_seed[s]
        assert len(got) == want.steps, (s, len(got), want.steps)
        np.testing.assert_array_equal(got.obs, want.obs)        # the bridge is the in-process simulator
        np.testing.assert_array_equal(got.act, want.actions)    # the expert node is the in-process expert
    m, t = round_configs({"kind": "chunk_mlp", "chunk_length": 5, "action_frame": "absolute", "width": 64,
                          "depth": 2}, {"max_epochs": 20})
    run = train(ds, m, t, tmp_path / "run", progress=False)
    onnx = export(run.run_dir, tmp_path / "policy.onnx")
    seeds = [10_000, 10_001]
    ros = run_policy_episodes(onnx, ROBOT, TASK, seeds, tmp_path / "policy_logs")
    ref = evaluate(str(onnx), ROBOT, TASK, seeds, with_expert=False)
    assert [(o["status"], o["steps"]) for o in ros["episodes"]] == [(r.status, r.steps) for r in ref["results"]]
