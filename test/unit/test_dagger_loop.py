"""The one DAgger round loop (`pipeline.dagger.loop.run_rounds`) with a collector of the test's
own: what every collector is given (seeds, beta, the current policy), what the loop does with
what it returns (aggregate, retrain, deploy, record), resuming and refusing a foreign folder.
Real training (tiny budget), real ONNX export, real evaluation in SimEnv."""
import json

import pytest

pytest.importorskip("torch")

from bc_policy_node.core.sim.env import load_contract  # noqa: E402
from bc_policy_node.pipeline.dagger.config import DaggerConfig  # noqa: E402
from bc_policy_node.pipeline.dagger.inprocess import expert_demos  # noqa: E402
from bc_policy_node.pipeline.dagger.loop import run_rounds  # noqa: E402

TINY = dict(robot="planar3", task="curved_reach", initial_demos=2, episodes_per_round=2,
            model_cfg={"width": 16, "depth": 1}, train_cfg={"max_steps": 20}, eval_seeds=range(10_000, 10_002),
            progress=False)


class ExpertCollector:
    """Returns expert demonstrations at the plan's seeds (every frame labelled) and remembers
    every call."""
    name = "test"

    def __init__(self, contract):
        self.contract, self.plans, self.deployed, self.closed = contract, [], [], 0

    def identity(self):
        return {"collector": "test"}

    def collect(self, plan):
        self.plans.append(plan)
        eps = expert_demos("planar3", "curved_reach", plan.seeds, self.contract, round_index=plan.index)
        return eps, {"expert_share": 1.0, "timing": {"rollout": 0.5}}

    def deploy(self, round_index, policy, extra, timing):
        self.deployed.append((round_index, policy))
        extra["deployed"] = True

    def close(self):
        self.closed += 1


def test_the_loop_gives_every_collector_the_same_plan_and_records_what_it_returns(tmp_path):
    cfg = DaggerConfig(**TINY, variant="classic", rounds=2, out_dir=str(tmp_path / "run"))
    col = ExpertCollector(load_contract("planar3", "curved_reach"))
    recs = run_rounds(cfg, col)
    assert [r.round for r in recs] == [0, 1, 2] and col.closed == 1
    assert [p.seeds for p in col.plans] == [tuple(cfg.rollout_seeds(1)), tuple(cfg.rollout_seeds(2))]
    assert [p.beta for p in col.plans] == [0.5, 0.25]                     # the classic schedule, round 1 = 0.5
    # each round rolls out the policy the previous round exported, and deploys its own
    assert col.plans[0].policy == tmp_path / "run" / "round_00" / "policy.onnx"
    assert col.plans[1].policy == col.deployed[0][1] == tmp_path / "run" / "round_01" / "policy.onnx"
    assert [i for i, _ in col.deployed] == [1, 2] and all(r.extra.get("deployed") for r in recs[1:])
    assert col.plans[0].chunk_labels and col.plans[0].chunk_length > 1     # default chunked model: on
    # labels: cumulative over the aggregate; the collector's timing is kept
    assert recs[1].labels_total == recs[0].labels_total + recs[1].labels_new
    assert recs[2].labels_total == recs[1].labels_total + recs[2].labels_new
    assert recs[1].timing["rollout"] == 0.5 and recs[1].collect["expert_share"] == 1.0
    saved = json.loads((tmp_path / "run" / "round_02" / "record.json").read_text())
    assert saved["labels_total"] == recs[2].labels_total

    # resume: nothing is collected or trained again
    again = ExpertCollector(col.contract)
    assert [r.policy for r in run_rounds(cfg, again)] == [r.policy for r in recs]
    assert again.plans == [] and again.deployed == []

    # one more round on the same folder continues from round 2's policy
    more = ExpertCollector(col.contract)
    recs3 = run_rounds(cfg.replace(rounds=3), more)
    assert [p.index for p in more.plans] == [3] and more.plans[0].policy == tmp_path / "run" / "round_02" / "policy.onnx"
    assert recs3[3].labels_total > recs[2].labels_total


def test_a_folder_made_with_other_settings_is_refused_before_anything_runs(tmp_path):
    cfg = DaggerConfig(**TINY, variant="classic", rounds=0, out_dir=str(tmp_path / "run"))
    run_rounds(cfg, ExpertCollector(load_contract("planar3", "curved_reach")))
    col = ExpertCollector(None)
    for other in (cfg.replace(beta0=0.5), cfg.replace(episodes_per_round=3)):
        with pytest.raises(ValueError, match="other settings"):
            run_rounds(other.replace(rounds=1), col)
    assert col.plans == [] and col.closed == 0


def test_config_refuses_an_unknown_variant():
    with pytest.raises(ValueError, match="variant 'nope' not in"):
        DaggerConfig(variant="nope")
