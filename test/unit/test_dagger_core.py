"""DAgger decision logic (numpy core)."""
import numpy as np
import pytest

from bc_policy_node.core.dagger.gates import (GATE_BUDGET, GATE_INTERVENTION, GATE_UNCERTAINTY, BetaGate,
                                        EnsembleDisagreement, InterventionGate, UncertaintyGate,
                                        beta_schedule)


def test_beta_schedules():
    assert [beta_schedule(i, "exponential", 1.0, 0.5) for i in range(3)] == [1.0, 0.5, 0.25]
    assert [beta_schedule(i, "linear", 1.0, 0.4) for i in range(4)] == [1.0, 0.6, pytest.approx(0.2), 0.0]
    assert beta_schedule(7, "constant", 0.3) == 0.3
    with pytest.raises(ValueError):
        beta_schedule(0, "cosine")


def test_beta_gate_extremes_and_frequency():
    assert all(BetaGate(1.0).decide().expert_acts for _ in range(100))
    assert not any(BetaGate(0.0).decide().expert_acts for _ in range(100))
    g = BetaGate(0.3, seed=1)
    share = np.mean([g.decide().expert_acts for _ in range(5000)])
    assert 0.27 < share < 0.33
    assert all(d.labelled for d in (g.decide() for _ in range(10)))  # classic DAgger labels every state


def test_intervention_gate_labels_only_interventions():
    g = InterventionGate()
    assert not g.decide().expert_acts and not g.decide().labelled
    g.set(True)
    d = g.decide()
    assert d.expert_acts and d.labelled and d.reason == GATE_INTERVENTION
    g.set(True)
    g.set(False)
    assert g.interventions == 1 and not g.decide().expert_acts


def test_uncertainty_gate_hysteresis_and_budget():
    g = UncertaintyGate(threshold=1.0, budget=8, release=0.5, min_expert_ticks=3)
    assert not g.decide(0.5).expert_acts
    d = g.decide(2.0)
    assert d.expert_acts and d.reason == GATE_UNCERTAINTY
    # stays with the expert for min_expert_ticks even when uncertainty drops ...
    assert g.decide(0.1).expert_acts and g.decide(0.1).expert_acts
    # ... then hands back once below release * threshold
    assert not g.decide(0.1).expert_acts
    # the budget caps labelled ticks per episode
    decisions = [g.decide(5.0) for _ in range(20)]
    assert sum(d.expert_acts for d in decisions) == 8 - 3
    assert decisions[-1].reason == GATE_BUDGET
    g.reset()
    assert g.decide(5.0).expert_acts


class _Const:
    def __init__(self, c):
        self.c = np.asarray(c, float)

    def predict_chunk(self, obs):
        return np.broadcast_to(self.c, (np.atleast_2d(obs).shape[0],) + self.c.shape).copy()


def test_ensemble_disagreement_is_the_scaled_std():
    k, a = 4, 2
    members = [_Const(np.full((k, a), v)) for v in (0.0, 1.0, 2.0)]
    ens = EnsembleDisagreement(members, scale=[2.0, 2.0], horizon=3)
    assert ens(np.zeros(3)) == pytest.approx(np.std([0.0, 1.0, 2.0]) / 2.0)
    same = EnsembleDisagreement([_Const(np.ones((k, a)))] * 3)
    assert same(np.zeros(3)) == 0.0
    with pytest.raises(ValueError):
        EnsembleDisagreement(members[:1])
