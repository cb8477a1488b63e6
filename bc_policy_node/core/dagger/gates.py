"""DAgger's decision logic, numpy only: who acts at each control step, and why.

Shared by the in-process DAgger loop (experiments, fast) and the ROS `dagger_node`:
- `beta_schedule`: classic DAgger's mixing probability per round;
- `BetaGate`: the expert acts with probability beta (classic DAgger; every state is labelled);
- `InterventionGate`: a human (intervention topic) takes over (HG-DAgger; only intervention
  segments are labelled);
- `UncertaintyGate`: the robot asks for help when uncertain, within a per-episode query budget
  (EnsembleDAgger / ThriftyDAgger style), scored by `EnsembleDisagreement`.
Every decision carries a reason string that ends up in the frame tag.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

GATE_BETA = "beta"
GATE_INTERVENTION = "intervention"
GATE_UNCERTAINTY = "uncertainty"
GATE_BUDGET = "budget_exhausted"
GATE_POLICY = ""


def beta_schedule(round_index: int, kind: str = "exponential", beta0: float = 1.0, decay: float = 0.5) -> float:
    """Probability that the expert acts in DAgger round `round_index` (0 = first DAgger round).

    exponential: beta0 * decay**i (Ross et al. use beta_i = p**i); linear: beta0 - decay * i;
    constant: beta0. Always clipped to [0, 1].
    """
    if round_index < 0:
        raise ValueError(f"round_index must be >= 0, got {round_index}")
    if kind == "exponential":
        b = beta0 * decay ** round_index
    elif kind == "linear":
        b = beta0 - decay * round_index
    elif kind == "constant":
        b = beta0
    else:
        raise ValueError(f"beta schedule {kind!r} not in (exponential, linear, constant)")
    return float(min(1.0, max(0.0, b)))


@dataclass(frozen=True)
class GateDecision:
    expert_acts: bool
    reason: str           # GATE_* constant ("" = the policy acts)
    uncertainty: float = 0.0
    labelled: bool = True  # whether this frame's expert label goes into the aggregate


class BetaGate:
    """Classic DAgger: per step, the expert acts with probability beta; all frames labelled."""

    def __init__(self, beta: float, seed: int = 0):
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        self.beta = float(beta)
        self._rng = np.random.default_rng(seed)

    def reset(self, seed: Optional[int] = None) -> None:
        if seed is not None:
            self._rng = np.random.default_rng(seed)

    def decide(self, uncertainty: float = 0.0) -> GateDecision:
        if self.beta >= 1.0 or (self.beta > 0.0 and self._rng.random() < self.beta):
            return GateDecision(True, GATE_BETA, uncertainty)
        return GateDecision(False, GATE_POLICY, uncertainty)


class InterventionGate:
    """HG-DAgger: the expert/teleoperator acts while an intervention is active; only those
    frames are labelled (the policy's own frames carry no label)."""

    def __init__(self):
        self.active = False
        self.interventions = 0

    def reset(self, seed: Optional[int] = None) -> None:
        self.active = False

    def set(self, active: bool) -> None:
        if active and not self.active:
            self.interventions += 1
        self.active = bool(active)

    def decide(self, uncertainty: float = 0.0) -> GateDecision:
        if self.active:
            return GateDecision(True, GATE_INTERVENTION, uncertainty, labelled=True)
        return GateDecision(False, GATE_POLICY, uncertainty, labelled=False)


class UncertaintyGate:
    """Robot-gated DAgger: hand control to the expert when uncertainty > threshold, keep it for
    at least `min_expert_ticks`, and give it back once uncertainty < release * threshold.
    At most `budget` expert-labelled ticks per episode; beyond that the policy acts (reason
    budget_exhausted). Only expert-acted frames are labelled (labels are what costs)."""

    def __init__(self, threshold: float, budget: int = 100, release: float = 0.7, min_expert_ticks: int = 5):
        if not threshold > 0:
            raise ValueError(f"threshold must be > 0, got {threshold}")
        if budget < 0 or min_expert_ticks < 1 or not 0 < release <= 1:
            raise ValueError("need budget >= 0, min_expert_ticks >= 1, 0 < release <= 1")
        self.threshold, self.budget = float(threshold), int(budget)
        self.release, self.min_expert_ticks = float(release), int(min_expert_ticks)
        self.reset()

    def reset(self, seed: Optional[int] = None) -> None:
        self.used = 0
        self._expert_ticks = 0
        self._in_control = False
        self.handovers = 0

    def decide(self, uncertainty: float) -> GateDecision:
        u = float(uncertainty) if math.isfinite(uncertainty) else math.inf
        if self._in_control:
            self._expert_ticks += 1
            if self._expert_ticks >= self.min_expert_ticks and u < self.release * self.threshold:
                self._in_control = False
        elif u > self.threshold:
            self._in_control, self._expert_ticks = True, 0
            self.handovers += 1
        if not self._in_control:
            return GateDecision(False, GATE_POLICY, u, labelled=False)
        if self.used >= self.budget:
            self._in_control = False
            return GateDecision(False, GATE_BUDGET, u, labelled=False)
        self.used += 1
        return GateDecision(True, GATE_UNCERTAINTY, u, labelled=True)


class EnsembleDisagreement:
    """Uncertainty of an observation = spread of an ensemble's predicted chunks.

    Score = mean over the first `horizon` actions and joints of the across-member standard
    deviation, divided by `scale` (e.g. the action std of the data) so a threshold is unitless.
    `policies` are anything with `predict_chunk(obs) -> (B, K, A)` (core.control.runtime.OnnxPolicy).
    """

    def __init__(self, policies: Sequence, scale=None, horizon: int = 5):
        if len(policies) < 2:
            raise ValueError("an ensemble needs at least 2 policies")
        self.policies = list(policies)
        self.horizon = int(horizon)
        self.scale = None if scale is None else np.asarray(scale, dtype=float)

    def chunks(self, obs) -> np.ndarray:
        """(members, B, K, A) predicted chunks."""
        return np.stack([p.predict_chunk(obs) for p in self.policies])

    def score_chunks(self, chunks: np.ndarray) -> np.ndarray:
        c = chunks[:, :, :self.horizon]
        std = c.std(axis=0)                      # (B, h, A)
        if self.scale is not None:
            std = std / self.scale
        return std.mean(axis=(1, 2))

    def __call__(self, obs) -> float:
        return float(self.score_chunks(self.chunks(obs))[0])


class SimulatedHuman:
    """A simulated supervisor for HG-DAgger: it watches the end effector against the expert's
    path for the same episode and takes over (drives an `InterventionGate`) when it sees

    - a deviation: the ee is more than `threshold` (m) from every point of the expert's path;
    - a stall: the ee has moved less than `stall_distance` (m) over the last `stall_ticks`
      ticks while still farther than `goal_radius` from the path's end (BC's typical failure:
      it stops a few cm short of a goal, on the path; the expert itself never moves that
      slowly before it is inside the task's tolerance, where the episode ends).

    It hands control back once the ee is within `release * threshold` of the path and it has
    held control for at least `min_ticks` (a person does not flick the switch every tick).
    `reference` is the expert's (N, d) ee path; `observe(ee)` returns whether the human is in
    control for this tick and `reason` says why the current intervention started.
    """

    def __init__(self, reference, threshold: float = 0.03, stall_ticks: int = 25,
                 stall_distance: float = 0.01, goal_radius: float = 0.0, release: float = 0.5,
                 min_ticks: int = 15, gate: Optional[InterventionGate] = None):
        ref = np.asarray(reference, dtype=float)
        if ref.ndim != 2 or len(ref) < 1:
            raise ValueError(f"reference must be an (N, d) path, got shape {ref.shape}")
        if not threshold > 0 or stall_ticks < 2 or min_ticks < 1 or not 0 < release <= 1:
            raise ValueError("need threshold > 0, stall_ticks >= 2, min_ticks >= 1, 0 < release <= 1")
        self.reference = ref
        self.threshold, self.stall_ticks = float(threshold), int(stall_ticks)
        self.stall_distance, self.goal_radius = float(stall_distance), float(goal_radius)
        self.release, self.min_ticks = float(release), int(min_ticks)
        self.gate = gate if gate is not None else InterventionGate()
        self.reset()

    def reset(self, seed: Optional[int] = None) -> None:
        self.gate.reset()
        self._history: list = []
        self._held = 0
        self.reason = ""
        self.takeovers = {"deviation": 0, "stall": 0}

    def path_distance(self, ee) -> float:
        """Distance from `ee` to the nearest point of the expert's path (m)."""
        p = np.asarray(ee, dtype=float)[:self.reference.shape[1]]
        return float(np.min(np.linalg.norm(self.reference - p, axis=1)))

    def observe(self, ee) -> bool:
        p = np.asarray(ee, dtype=float)[:self.reference.shape[1]]
        self._history.append(p)
        dist = self.path_distance(p)
        if self.gate.active:
            self._held += 1
            if self._held >= self.min_ticks and dist < self.release * self.threshold:
                self.gate.set(False)
                self._history = [p]     # the stall window restarts at the hand-back
        else:
            why = ""
            if dist > self.threshold:
                why = "deviation"
            elif (len(self._history) > self.stall_ticks
                  and np.linalg.norm(p - self._history[-1 - self.stall_ticks]) < self.stall_distance
                  and np.linalg.norm(p - self.reference[-1]) > self.goal_radius):
                why = "stall"
            if why:
                self.gate.set(True)
                self._held, self.reason = 0, why
                self.takeovers[why] += 1
        return self.gate.active

    def decide(self, ee) -> GateDecision:
        """`observe(ee)` and the gate's decision for this tick."""
        self.observe(ee)
        return self.gate.decide()
