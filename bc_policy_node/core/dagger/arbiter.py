"""The DAgger arbiter: who acts at one frame, and the safe command to send (no rclpy, no torch).

One engine for both paths: the dagger node (`nodes/dagger_node.py`, over ROS) and the in-process
round loop (`pipeline/dagger/inprocess.DaggerController`, stepping `SimEnv`) build a
`DaggerArbiter` from the same `DaggerParams` and feed it one frame at a time:

    arbiter.begin_episode(episode_id, task_seed)
    decision = arbiter.gate(obs, step, intervention)       # the gate's turn (consumes its rng)
    out = arbiter.resolve(decision, q, label, label_failure, policy_action, teleop)
    # or both at once: arbiter.decide(obs, q, step, label, ...)

`gate` and `resolve` are separate so that a caller whose expert label is expensive (the
in-process gated variants) asks the expert only when the gate hands it the tick; the ROS path
has the label already and calls `decide`.

Every executed command, the policy's and the expert's, goes through one `SafetyFilter` whose
reference is the last *executed* command, so a hand-over between policy and expert never moves
a joint by more than ``max_step`` in one tick (on both paths).
"""
from __future__ import annotations

import collections
import dataclasses
import math
from dataclasses import dataclass
from typing import Deque, Optional, Sequence, Tuple

import numpy as np

from ..contract import Contract
from ..control.safety import EVENT_STEP_LIMIT, SafetyFilter, SafetyLimits
from ..types import ACTOR_EXPERT, ACTOR_INTERVENTION, ACTOR_POLICY
from .gates import GATE_POLICY, BetaGate, EnsembleDisagreement, GateDecision, InterventionGate, UncertaintyGate
from .params import DaggerParams

# Frame-tag reasons added to the gate's own reason (core.dagger.gates GATE_*) when a party failed.
REASON_EXPERT_TIMEOUT = "expert_timeout"
REASON_EXPERT_ERROR = "expert_error"
REASON_EXPERT_UNAVAILABLE = "expert_unavailable"
REASON_POLICY_MISSING = "policy_missing"
REASON_HOLD = "hold"
REASON_TELEOP = "teleop"

ACTED_COUNTER = {ACTOR_POLICY: "policy_acted", ACTOR_EXPERT: "expert_acted",
                 ACTOR_INTERVENTION: "intervention_acted"}


@dataclass
class Outcome:
    """What one frame did: the command to send (None = nothing) and the frame-tag fields."""

    command: Optional[np.ndarray]
    actor: int
    labelled: bool
    expert_action: Optional[np.ndarray]
    reason: str
    uncertainty: float
    beta: float
    events: Tuple[str, ...] = ()


@dataclass(frozen=True)
class GateTurn:
    """The gate's decision for one frame with the uncertainty it was given."""

    decision: GateDecision
    uncertainty: float

    @property
    def expert_acts(self) -> bool:
        return bool(self.decision.expert_acts)


def chunk_disagreement(chunks: Sequence[Tuple[int, np.ndarray]], step: int, horizon: int,
                       scale=None) -> float:
    """Spread of a policy's successive chunks about the same future ticks.

    `chunks` are (tick, chunk (K, A)) pairs; a chunk from tick ``step - j`` predicts ticks
    ``step .. step + h - 1`` with its rows ``j .. j + h - 1``. Score = mean over those h ticks
    and the joints of the across-chunk std, divided by `scale` — the temporal twin of
    `core.dagger.gates.EnsembleDisagreement` (a policy that keeps changing its plan for the same
    moment is unsure). 0 with fewer than two usable chunks.
    """
    preds = []
    for t, c in chunks:
        j = step - t
        if j >= 0 and j + horizon <= len(c):
            preds.append(np.asarray(c[j:j + horizon], dtype=float))
    if len(preds) < 2:
        return 0.0
    std = np.stack(preds).std(axis=0)
    if scale is not None:
        std = std / scale
    return float(std.mean())


def make_gate(p: DaggerParams):
    """The gate of ``p.variant``: BetaGate (classic), InterventionGate (human_gated) or
    UncertaintyGate (robot_gated)."""
    if p.variant == "classic":
        return BetaGate(p.beta, p.seed)
    if p.variant == "human_gated":
        return InterventionGate()
    return UncertaintyGate(p.uncertainty_threshold, p.query_budget, p.release, p.min_expert_ticks)


class DaggerArbiter:
    """Who acts at one frame, and the safe command to send (plain Python; both paths feed it)."""

    def __init__(self, contract: Contract, params: DaggerParams, ensemble: Optional[EnsembleDisagreement] = None):
        self.contract, self.params = contract, params
        self.safety = SafetyFilter(SafetyLimits.from_contract(contract, math.inf))
        self.ensemble = ensemble
        self.source = params.resolved_uncertainty_source(ensemble is not None)
        if self.source == "ensemble" and ensemble is None:
            raise ValueError("robot_gated with uncertainty_source ensemble needs the ensemble")
        scale = params.uncertainty_scale or None
        if scale is None and ensemble is not None and ensemble.scale is not None:
            scale = ensemble.scale
        self.scale = scale
        if ensemble is not None and scale is not None:
            ensemble.scale = np.broadcast_to(np.asarray(scale, dtype=float), (contract.act_dim,)).copy()
        self._gate = make_gate(params)
        self.chunks: Deque[Tuple[int, np.ndarray]] = collections.deque(maxlen=params.chunk_window)
        self.episode_id: Optional[int] = None
        self.counts: collections.Counter = collections.Counter()

    def set_beta(self, beta: float) -> None:
        self.params = dataclasses.replace(self.params, beta=float(beta))
        if isinstance(self._gate, BetaGate):
            self._gate.beta = float(beta)

    def begin_episode(self, episode_id: int, task_seed: int) -> None:
        """New episode: forget the last command (the arm was reset), the chunks, the gate's state.
        The beta gate is re-seeded from (seed, task seed): seed 0 = the task seed itself."""
        self.episode_id = int(episode_id)
        self.safety.reset()
        self.chunks.clear()
        if isinstance(self._gate, InterventionGate):
            active = self._gate.active
            self._gate.reset()
            self._gate.set(active)     # a human still pressing keeps control across the reset
        else:
            self._gate.reset(seed=int(self.params.seed) * 1_000_003 + int(task_seed))
        self.counts["episodes"] += 1

    def add_chunk(self, step: int, chunk: np.ndarray) -> None:
        self.chunks.append((int(step), np.asarray(chunk, dtype=float)))

    def uncertainty(self, obs: np.ndarray, step: int) -> float:
        if self.source == "ensemble" and self.ensemble is not None:
            return float(self.ensemble(obs))
        if self.source == "chunk":
            return chunk_disagreement(self.chunks, step, self.params.uncertainty_horizon, self.scale)
        return 0.0

    def gate(self, obs: np.ndarray, step: int, intervention: bool = False) -> GateTurn:
        """The gate's decision for this frame (human_gated: `intervention` = a human holds the
        switch; robot_gated: from the uncertainty at `obs`)."""
        if isinstance(self._gate, InterventionGate):
            self._gate.set(intervention)
        u = self.uncertainty(obs, step) if self.source else 0.0
        return GateTurn(self._gate.decide(u), float(u))

    def resolve(self, turn: GateTurn, q: np.ndarray, label: Optional[np.ndarray], label_failure: str,
                policy_action: Optional[np.ndarray], teleop: Optional[np.ndarray] = None) -> Outcome:
        """The frame's outcome given the gate's turn.

        label: the expert's action at the frame's observation (None when the query failed:
        `label_failure` says why, or when it was not asked because the policy acts).
        policy_action: the policy's command for it (None if it did not answer). teleop:
        human_gated only, a fresh teleoperator command (acts instead of the label). q: the
        command that stays put (`controller.ActionReference`: measured joint positions, zero
        velocity), the hold when nobody answered and nothing was sent yet.
        """
        p, d = self.params, turn.decision
        reasons = [d.reason] if d.reason else []
        expert_action = label
        if d.expert_acts and p.variant == "human_gated" and teleop is not None:
            expert_action = np.asarray(teleop, dtype=float)   # the human is the expert here
            reasons.append(REASON_TELEOP)
        if label is None and label_failure:
            reasons.append(label_failure)
        if policy_action is None:
            reasons.append(REASON_POLICY_MISSING)
        actor = ACTOR_POLICY
        if d.expert_acts and expert_action is not None:
            proposed = expert_action
            actor = ACTOR_INTERVENTION if p.variant == "human_gated" else ACTOR_EXPERT
        elif policy_action is not None:
            proposed = policy_action          # the policy acts (by the gate, or the expert failed)
        elif label is not None:
            proposed, actor = label, ACTOR_EXPERT   # the policy is silent: the expert covers
        else:
            proposed = None                   # nobody answered: hold the last command
            reasons.append(REASON_HOLD)
        # labelled: the gate says so (classic: always; gated: the expert's turns), or the
        # expert's label was executed because the policy was silent (it is expert data too)
        labelled = bool(expert_action is not None and (d.labelled or proposed is label))
        if proposed is None:
            cmd = self.safety.hold()
            if cmd is None:
                cmd = np.clip(np.asarray(q, dtype=float), self.contract.action.lower, self.contract.action.upper)
            events: Tuple[str, ...] = ()
        else:
            cmd, events = self.safety.filter(proposed, now=0.0, obs_stamp=0.0, current_position=q)
        self.counts["frames"] += 1
        self.counts[ACTED_COUNTER[actor]] += 1
        self.counts["labelled"] += int(labelled)
        self.counts["step_clamps"] += int(EVENT_STEP_LIMIT in events)
        return Outcome(command=cmd, actor=actor, labelled=labelled,
                       expert_action=expert_action if labelled else None,
                       reason="|".join(reasons) if reasons else GATE_POLICY, uncertainty=turn.uncertainty,
                       beta=float(p.beta) if p.variant == "classic" else 0.0, events=events)

    def decide(self, obs: np.ndarray, q: np.ndarray, step: int, label: Optional[np.ndarray],
               label_failure: str, policy_action: Optional[np.ndarray],
               intervention: bool = False, teleop: Optional[np.ndarray] = None) -> Outcome:
        """`gate` then `resolve`: one frame whose label (or its failure) is already known."""
        return self.resolve(self.gate(obs, step, intervention), q, label, label_failure, policy_action, teleop)


def load_ensemble(paths: Sequence[str], contract: Contract, horizon: int) -> EnsembleDisagreement:
    """The ONNX ensemble for robot-gated DAgger, each member checked against the robot's contract.

    Scale: the first member's training action std (``meta.action_std``; older files:
    ``meta.norm.act_std``) when it has one.
    """
    from ..control.runtime import OnnxPolicy

    members = [OnnxPolicy(p) for p in paths]
    for m in members:
        m.check_contract(contract)
    meta = members[0].meta
    norm = meta.get("norm") or {}
    scale = meta.get("action_std") or (norm.get("act_std") if isinstance(norm, dict) else None)
    return EnsembleDisagreement(members, scale=scale, horizon=horizon)
