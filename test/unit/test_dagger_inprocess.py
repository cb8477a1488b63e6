"""In-process DAgger loop: tagging, labels, aggregation, beta = 1, growth fits (no training).

Policies here are tiny hand-built ONNX graphs ("hold the current joint position", optionally
with an offset) carrying the real contract, so the tests exercise the same OnnxPolicy /
PolicyController / rollout path as the experiments without torch.
"""
import numpy as np
import pytest
from onnx_policies import hold_policy

from bc_policy_node.core.sim.env import SimEnv, load_contract
from bc_policy_node.pipeline.dagger_eval import deviation_growth, expert_references
from bc_policy_node.pipeline.dagger.inprocess import collect_round, expert_demos
from bc_policy_node.pipeline.dagger.store import aggregate, labels_of

ROBOT, TASK = "planar3", "curved_reach"
SEEDS = [4242, 4243]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("dagger")
    contract = load_contract(ROBOT, TASK)
    return {"contract": contract, "hold": hold_policy(d / "hold.onnx", contract),
            "hold2": hold_policy(d / "hold2.onnx", contract, offset=0.02), "dir": d}


def _expert_labels(contract, episode):
    """The expert's act_obs at every observation of `episode` (curved_reach has no latent mode)."""
    expert = SimEnv(ROBOT, TASK).make_expert()
    return np.array([expert.act_obs(o, contract) for o in episode.obs])


def test_classic_round_labels_every_visited_state_and_aggregates(setup):
    c = setup["contract"]
    demos = expert_demos(ROBOT, TASK, [0], c)
    eps, stats = collect_round(ROBOT, TASK, "classic", setup["hold"], SEEDS, round_index=1, beta=0.3, contract=c)
    assert len(eps) == len(SEEDS) and stats["labels"] == stats["frames"] == sum(len(e) for e in eps)
    for e, s in zip(eps, SEEDS):
        assert e.meta["seed"] == s and e.meta["round"] == 1 and e.meta["variant"] == "classic"
        assert e.meta["source"] == "dagger_classic" and e.meta["beta"] == 0.3
        assert e.labelled.all()
        np.testing.assert_allclose(e.act, _expert_labels(c, e), atol=1e-12)
        # both actors appeared (beta = 0.3): the states are the mixture's, the labels the expert's
        assert 0 < e.meta["expert_ticks"] < len(e)
    ds = aggregate([demos, eps], c)
    assert len(ds) == 1 + len(SEEDS)
    assert ds.num_frames == len(demos[0]) + stats["frames"]
    assert labels_of(ds.episodes) == ds.num_frames                   # classic: every frame is a label
    assert [e.meta["round"] for e in ds.episodes] == [0, 1, 1]
    assert ds.episodes[0].meta["source"] == "expert"


def test_robot_gated_labels_only_expert_acted_frames(setup):
    c = setup["contract"]
    budget = 25
    # two members that disagree by 0.02 rad everywhere -> uncertainty 0.01 > threshold: the
    # robot asks from tick 0 until the per-episode budget is spent, then the policy acts
    eps, stats = collect_round(ROBOT, TASK, "robot_gated", setup["hold"], SEEDS[:1], round_index=2,
                               ensemble=[setup["hold"], setup["hold2"]], threshold=0.005, query_budget=budget,
                               min_expert_ticks=1, contract=c)
    e = eps[0]
    assert e.labelled.sum() == budget == stats["labels"] and e.meta["expert_ticks"] == budget
    assert e.labelled[:budget].all() and not e.labelled[budget:].any()
    assert e.meta["gate_reasons"]["uncertainty"] == budget and e.meta["gate_reasons"]["budget_exhausted"] > 0
    labels = _expert_labels(c, e)
    np.testing.assert_allclose(e.act[e.labelled], labels[e.labelled], atol=1e-12)
    # the policy's own frames carry the executed (held) command, not a free expert label
    assert not np.allclose(e.act[~e.labelled], labels[~e.labelled])


def test_human_gated_labels_only_interventions(setup):
    c = setup["contract"]
    refs = expert_references(ROBOT, TASK, SEEDS[:1], contract=c)
    eps, stats = collect_round(ROBOT, TASK, "human_gated", setup["hold"], SEEDS[:1], round_index=1,
                               references=refs, human={"threshold": 0.03, "stall_ticks": 10}, contract=c)
    e = eps[0]
    # a holding policy stalls at the start: the human takes over (stall), hands back when on the path ...
    assert 0 < e.labelled.sum() < len(e) and e.meta["gate_reasons"].get("stall", 0) > 0
    np.testing.assert_allclose(e.act[e.labelled], _expert_labels(c, e)[e.labelled], atol=1e-12)
    assert stats["labels"] == e.meta["expert_ticks"] == int(e.labelled.sum())


def test_beta_one_reproduces_the_expert(setup):
    c = setup["contract"]
    eps, _ = collect_round(ROBOT, TASK, "classic", setup["hold"], SEEDS[:1], round_index=1, beta=1.0, contract=c)
    demo = expert_demos(ROBOT, TASK, SEEDS[:1], c)[0]
    e = eps[0]
    assert e.meta["expert_share"] == 1.0 and e.meta["status"] == demo.meta["status"] == "success"
    assert len(e) == len(demo)
    np.testing.assert_array_equal(e.obs, demo.obs)      # identical trajectory, tick by tick
    np.testing.assert_array_equal(e.act, demo.act)


def test_deviation_growth_recovers_exponents():
    t = np.arange(1, 401, dtype=float)
    rng = np.random.default_rng(0)
    lin = 0.001 * t[None, :] * rng.uniform(0.5, 1.5, size=(30, 1))        # d ~ t  -> C ~ T^2
    const = 0.01 * np.ones((30, 400)) * rng.uniform(0.5, 1.5, size=(30, 1))  # d ~ 1 -> C ~ T
    H = [10, 20, 40, 80, 160, 320]
    g2, g1 = deviation_growth(lin, H, n_boot=200), deviation_growth(const, H, n_boot=200)
    assert g2["exponent"] == pytest.approx(2.0, abs=0.05) and g2["ci_low"] <= g2["exponent"] <= g2["ci_high"]
    assert g1["exponent"] == pytest.approx(1.0, abs=1e-6)


def test_classic_chunk_labels_are_the_experts_plan_at_each_visited_state(setup, tmp_path):
    c = setup["contract"]
    k = 7
    eps, stats = collect_round(ROBOT, TASK, "classic", setup["hold"], SEEDS[:1], round_index=1, beta=0.3,
                               contract=c, chunk_labels=True, chunk_length=k)
    e = eps[0]
    expert = SimEnv(ROBOT, TASK).make_expert()
    plans = np.array([expert.plan_obs(o, c, k) for o in e.obs])
    assert e.chunk_labels.shape == (len(e), k, c.act_dim) and e.meta["chunk_labels"] == k
    np.testing.assert_allclose(e.chunk_labels, plans, atol=1e-12)
    np.testing.assert_allclose(e.act, _expert_labels(c, e), atol=1e-12)   # act[t] = first planned action
    np.testing.assert_allclose(e.act, plans[:, 0], atol=1e-12)
    assert e.labelled.all() and stats["labels"] == len(e) and 0 < e.meta["expert_ticks"] < len(e)
    # the same rollout as without chunk labels (labelling does not change what is executed)
    plain, _ = collect_round(ROBOT, TASK, "classic", setup["hold"], SEEDS[:1], round_index=1, beta=0.3, contract=c)
    np.testing.assert_array_equal(plain[0].obs, e.obs)
    assert plain[0].chunk_labels is None
    # saved with the round's data and loaded back
    from bc_policy_node.pipeline.dagger.store import load_round_data, save_round_data
    save_round_data(eps, c, tmp_path / "data")
    np.testing.assert_array_equal(load_round_data(tmp_path / "data")[0].chunk_labels, e.chunk_labels)


def test_gated_chunk_labels_only_on_expert_ticks(setup):
    c = setup["contract"]
    eps, _ = collect_round(ROBOT, TASK, "robot_gated", setup["hold"], SEEDS[:1], round_index=2,
                           ensemble=[setup["hold"], setup["hold2"]], threshold=0.005, query_budget=25,
                           min_expert_ticks=1, contract=c, chunk_labels=True)
    e = eps[0]
    expert = SimEnv(ROBOT, TASK).make_expert()
    lab = np.flatnonzero(e.labelled)
    np.testing.assert_allclose(e.chunk_labels[lab], np.array([expert.plan_obs(e.obs[t], c) for t in lab]), atol=1e-12)
    assert np.isfinite(e.chunk_labels).all()


def test_rounds_under_pushes_label_the_pushed_states(setup):
    """With a disturbance the rollouts are pushed at the seeded ticks (the demos stay calm) and
    the expert labels the displaced states like any other."""
    from bc_policy_node.core.sim.disturbance import Pushes

    c, pushes = setup["contract"], Pushes(magnitude=0.4, interval=30.0, count=2)
    eps, _ = collect_round(ROBOT, TASK, "classic", setup["hold"], SEEDS, round_index=1, beta=0.0, contract=c,
                           disturbance=pushes)
    for e, s in zip(eps, SEEDS):
        ticks = [t for t in pushes.schedule(s, SimEnv(ROBOT, TASK).horizon, 3) if t < len(e)]
        assert e.meta["pushes"] == ticks and ticks
        q = e.obs[:, c.slices()["joint_pos"]]
        for t in ticks:       # frame t is observed after the push of tick t
            assert np.linalg.norm(q[t] - q[t - 1]) == pytest.approx(pushes.magnitude, rel=0.15)
        np.testing.assert_allclose(e.act, _expert_labels(c, e), atol=1e-12)
    calm = expert_demos(ROBOT, TASK, SEEDS[:1], c)[0]
    assert calm.meta["pushes"] == []
