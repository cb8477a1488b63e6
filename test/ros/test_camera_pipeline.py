"""Camera observations end to end through the ROS graph: `bc-policy collect` with a camera
contract (the bridge renders the overhead camera every lock-step tick, the recorder writes the
JPEG frames into the episode bags) -> dataset (frames aligned per tick, uint8) -> a tiny vision
policy -> ONNX with an image input -> the policy node on the bridge, subscribed to the camera.

What can fail: the recorded frames must be the in-process render of the same seeds (same JPEG,
same tick), the recorded state and actions the in-process expert's, and the policy node's
episodes must end like the in-process evaluation of the same model (status and length per seed):
the node decodes the live frames exactly as the evaluator decodes its own. Waits are bounded
(collect / closed_loop raise with the nodes' logs)."""
import numpy as np
import pytest

pytest.importorskip("rclpy")
pytest.importorskip("torch")

from bc_policy_node.core.contract import Contract  # noqa: E402
from bc_policy_node.core.data.dataset_builder import build_dataset  # noqa: E402
from bc_policy_node.core.eval.rollout import evaluate, expert_act_fn, rollout  # noqa: E402
from bc_policy_node.core.sim.env import CONTRACTS_DIR, make_env  # noqa: E402
from bc_policy_node.pipeline.closed_loop import run_policy_episodes  # noqa: E402
from bc_policy_node.pipeline.collect import collect  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]
ROBOT, TASK = "planar3", "curved_reach"
CONTRACT = CONTRACTS_DIR / "camera" / "planar3_curved_reach.yaml"
SEEDS = (0, 1)


def test_camera_collect_build_train_export_serve(tmp_path):
    from bc_policy_node.learning import ModelConfig, TrainConfig, export, train

    c = Contract.load(CONTRACT)
    summary = collect(ROBOT, TASK, len(SEEDS), SEEDS[0], tmp_path / "bags", tmp_path / "logs", progress=False,
                      contract_file=CONTRACT)
    assert summary["successes"] == len(SEEDS), summary["rows"]
    ds, rep = build_dataset(summary["bags"], c)
    assert rep["included"] == len(SEEDS), rep["episodes"]
    env = make_env(ROBOT, TASK, cameras=c.images)
    fn = expert_act_fn(env, c)
    by_seed = {int(ep.meta["seed"]): ep for ep in ds.episodes}
    for s in SEEDS:
        want = rollout(env, c, fn, s, keep_images=True)
        got = by_seed[s]
        assert len(got) == want.steps, (s, len(got), want.steps)
        np.testing.assert_array_equal(got.obs, want.obs)
        np.testing.assert_array_equal(got.act, want.actions)
        np.testing.assert_array_equal(got.images["overhead"], want.images["overhead"])   # the frames of each tick
    m = ModelConfig(kind="chunk_mlp", chunk_length=5, width=32, depth=2, vision_channels=8, vision_keypoints=4)
    run = train(ds, m, TrainConfig(max_epochs=2, val_fraction=0.0, batch_size=64), tmp_path / "run", progress=False)
    onnx = export(run.run_dir, tmp_path / "policy.onnx")
    seeds = [10_000]
    ros = run_policy_episodes(onnx, ROBOT, TASK, seeds, tmp_path / "policy_logs", contract_file=CONTRACT,
                              timeout_per_episode=180.0)
    ref = evaluate(str(onnx), ROBOT, TASK, seeds, with_expert=False)
    assert [(o["status"], o["steps"]) for o in ros["episodes"]] == [(r.status, r.steps) for r in ref["results"]]
    assert ros["status"]["safety_stale"] == 0, ros["status"]
