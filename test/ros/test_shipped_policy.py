"""The shipped curved-reach policy completes episodes through the real policy node + bridge
(lock-step), exactly as the in-process evaluator predicts for the same seeds."""
from pathlib import Path

import pytest

pytest.importorskip("rclpy")

from bc_policy_node.core.eval.rollout import evaluate  # noqa: E402
from bc_policy_node.pipeline.closed_loop import run_policy_episodes  # noqa: E402

pytestmark = pytest.mark.ros
MODEL = Path(__file__).resolve().parents[2] / "models" / "policies" / "planar3_curved_reach.onnx"


def test_shipped_policy_completes_curved_reach_episodes_through_the_node(tmp_path):
    assert MODEL.is_file(), "shipped policy missing (scripts/train_shipped_policies.py)"
    ref = evaluate(str(MODEL), "planar3", "curved_reach", range(10_000, 10_010), with_expert=False)
    wins = [r for r in ref["results"] if r.success][:3]
    assert len(wins) == 3, f"the shipped policy should succeed on most seeds in-process: {ref['statuses']}"
    got = run_policy_episodes(MODEL, "planar3", "curved_reach", [r.seed for r in wins], tmp_path / "logs")
    assert [(e["status"], e["steps"]) for e in got["episodes"]] == [("success", r.steps) for r in wins]
    assert got["status"]["safety_nan"] == 0 and got["status"]["safety_stale"] == 0
