"""The DAgger node: between policy, expert and robot while the policy drives (rclpy, no torch).

Per control step (one observation stamp, lock-step) it takes the policy's proposed command for
that observation, asks the expert for its label at the same observation, lets a
`core.dagger.gates` gate decide who acts, sends the executed command to the robot through a
`core.control.safety.SafetyFilter` and publishes a `bc_msgs/FrameTag` describing the frame. The
decision logic is `DaggerCore` (no rclpy); `DaggerNode` is the ROS shell around it.

Pairing (lock-step): the policy node runs with ``lockstep:=true`` and its command topic
remapped to ``/dagger/policy_command`` (`graph.dagger_nodes`). It ticks exactly once per
observation stamp and the bridge advances only on *this* node's command, so the n-th policy
command answers the n-th observation stamp: commands are paired in order (FIFO). The final
observation of an episode (``/task_state.done``) consumes the policy's answer to it and
produces no command and no frame tag. After a policy timeout the policy may answer late; a
late answer is then paired with the next stamp (counted as ``policy_timeouts``; the label
stream is unaffected, only ``policy_action`` of that frame is off by one tick).
"""
from __future__ import annotations

import collections
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from typing import Deque, Dict, List, Optional, Sequence, Tuple

import numpy as np

import rclpy
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import Bool, Float64MultiArray, String

from bc_msgs.msg import ActionChunk, FrameTag, TaskState
from bc_msgs.srv import QueryExpert

from ..core.contract import Contract, ContractError, ObservationAssembler
from ..core.dagger.gates import (GATE_POLICY, BetaGate, EnsembleDisagreement, GateDecision, InterventionGate,
                           UncertaintyGate)
from ..core.control.safety import EVENT_STEP_LIMIT, SafetyFilter, SafetyLimits
from ..core.types import ACTOR_EXPERT, ACTOR_INTERVENTION, ACTOR_POLICY
from . import qos
from .conversions import command_msg, has_header, message_class, to_time
from .params import declare_and_load, doc
from ..core.control.controller import position_indices

VARIANTS = ("classic", "human_gated", "robot_gated")
UNCERTAINTY_SOURCES = ("auto", "ensemble", "chunk")
# Frame-tag reasons added to the gate's own reason (core.dagger.gates GATE_*) when a party failed.
REASON_EXPERT_TIMEOUT = "expert_timeout"
REASON_EXPERT_ERROR = "expert_error"
REASON_EXPERT_UNAVAILABLE = "expert_unavailable"
REASON_POLICY_MISSING = "policy_missing"
REASON_HOLD = "hold"
REASON_TELEOP = "teleop"
LOG_EVERY_S = 2.0
PENDING_STAMPS = 64
RESEND_AFTER_S = 0.5       # s; a lock-step round trip is ~2 ms: an older unanswered command was lost
RUNTIME_PARAMS = ("beta", "expert_timeout_periods", "policy_timeout_periods")
MAX_LATE_REQUESTS = 100      # timed-out expert requests still awaited (a late answer = alive again)


@dataclass(frozen=True)
class DaggerParams:
    """Parameters of the dagger node (declared in one block, validated at startup)."""

    contract: str = doc("The robot's contract YAML: observation topics, action joints, limits and "
                        "per-tick step bound", "")
    variant: str = doc("classic (beta gate) | human_gated (~/intervention) | robot_gated "
                       "(uncertainty gate)", "classic")
    beta: float = doc("classic: probability that the expert acts at a step (run-time settable)", 0.5)
    seed: int = doc("Seed of the beta gate; reseeded per episode from (seed, episode seed)", 0)
    controller: str = doc("ros2_control controller: executed commands go to /<controller>/commands",
                          "forward_position_controller")
    policy_command_topic: str = doc("Where the policy node's commands arrive (its command topic "
                                    "remapped here)", "/dagger/policy_command")
    policy_chunk_topic: str = doc("The policy node's stamped chunks (robot_gated, chunk "
                                  "disagreement)", "/policy/action_chunk")
    expert_service: str = doc("bc_msgs/QueryExpert service of the expert node", "/expert/query")
    task_state_topic: str = doc("bc_msgs/TaskState topic (episode id, step, done, latent mode)",
                                "/task_state")
    expert_timeout_periods: float = doc("Wall-clock wait for the expert label, in control periods; "
                                        "then the frame is unlabelled and the loop goes on", 10.0)
    policy_timeout_periods: float = doc("Wall-clock wait for the policy's command, in control "
                                        "periods; then the expert label acts (or the command holds)", 50.0)
    absent_after: int = doc("Consecutive timeouts after which a party is no longer waited for "
                            "(until it answers again)", 3)
    teleop_timeout_periods: float = doc("human_gated: a ~/teleop_command older than this (control "
                                        "periods, wall clock) is ignored and the expert label acts", 5.0)
    uncertainty_source: str = doc("robot_gated: ensemble (ensemble_models) | chunk (disagreement of "
                                  "the policy's successive chunks) | auto (ensemble if models given)",
                                  "auto")
    ensemble_models: Tuple[str, ...] = doc("robot_gated: ONNX policies of the ensemble (>= 2); [''] = none "
                                           "(a string array needs one element to be typed)", ("",))
    uncertainty_threshold: float = doc("robot_gated: the expert takes over above this score (spread / "
                                       "uncertainty_scale: action stds for an ensemble, rad for chunk "
                                       "disagreement unless a scale is given)", 0.5)
    uncertainty_scale: float = doc("rad; divides the spread (0 = the ensemble's training action std "
                                   "from its metadata; chunk source: no scaling)", 0.0)
    uncertainty_horizon: int = doc("robot_gated: chunk actions (ticks ahead) compared", 5)
    chunk_window: int = doc("robot_gated, chunk source: how many successive chunks are compared", 5)
    query_budget: int = doc("robot_gated: expert-acted ticks per episode at most", 100)
    release: float = doc("robot_gated: give control back below release * threshold", 0.7)
    min_expert_ticks: int = doc("robot_gated: ticks the expert keeps control at least", 5)
    status_rate_hz: float = doc("Hz; rate of ~/status (JSON counters)", 1.0)
    label_chunk_length: int = doc("0 or 1 = label with the expert's single action; K > 1 = ask the "
                                  "expert for its K-step planned chunk from the observation: the "
                                  "first action acts (= the single-action label), FrameTag."
                                  "expert_action carries the whole chunk (K x act_dim, row-major)", 0)

    def __post_init__(self):
        object.__setattr__(self, "ensemble_models", tuple(str(m) for m in self.ensemble_models if str(m)))
        if self.variant not in VARIANTS:
            raise ValueError(f"variant {self.variant!r} unknown; choose from {VARIANTS}")
        if self.uncertainty_source not in UNCERTAINTY_SOURCES:
            raise ValueError(f"uncertainty_source {self.uncertainty_source!r} unknown; choose from "
                             f"{UNCERTAINTY_SOURCES}")
        if not self.controller or "/" in self.controller.strip("/"):
            raise ValueError(f"controller must be a controller name, got {self.controller!r}")
        if self.uncertainty_source == "ensemble" and len(self.ensemble_models) < 2:
            raise ValueError("uncertainty_source ensemble needs >= 2 ensemble_models")
        checks = (("beta", 0.0 <= self.beta <= 1.0, "in [0, 1]"),
                  ("expert_timeout_periods", math.isfinite(self.expert_timeout_periods)
                   and self.expert_timeout_periods > 0, "> 0"),
                  ("policy_timeout_periods", math.isfinite(self.policy_timeout_periods)
                   and self.policy_timeout_periods > 0, "> 0"),
                  ("teleop_timeout_periods", self.teleop_timeout_periods > 0, "> 0"),
                  ("absent_after", self.absent_after >= 1, ">= 1"),
                  ("uncertainty_threshold", self.uncertainty_threshold > 0, "> 0"),
                  ("uncertainty_scale", math.isfinite(self.uncertainty_scale) and self.uncertainty_scale >= 0,
                   ">= 0 (0 = automatic)"),
                  ("uncertainty_horizon", self.uncertainty_horizon >= 1, ">= 1"),
                  ("chunk_window", self.chunk_window >= 2, ">= 2"),
                  ("query_budget", self.query_budget >= 0, ">= 0"),
                  ("release", 0 < self.release <= 1, "in (0, 1]"),
                  ("min_expert_ticks", self.min_expert_ticks >= 1, ">= 1"),
                  ("status_rate_hz", self.status_rate_hz > 0, "> 0"),
                  ("label_chunk_length", self.label_chunk_length >= 0, ">= 0 (0 = single action)"))
        for name, ok, what in checks:
            if not ok:
                raise ValueError(f"parameter {name} must be {what}, got {getattr(self, name)!r}")

    def label_chunk(self) -> int:
        """K of the expert's chunk labels (1 = single action)."""
        return max(1, int(self.label_chunk_length))

    def command_topic(self) -> str:
        return "/" + self.controller.strip("/") + "/commands"

    def resolved_uncertainty_source(self) -> str:
        if self.uncertainty_source != "auto":
            return self.uncertainty_source
        return "ensemble" if len(self.ensemble_models) >= 2 else "chunk"


# ============================================================================ core (no rclpy)
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


class DaggerCore:
    """Who acts at one frame, and the safe command to send (plain Python; the node feeds it).

    Per frame: `decide(obs, q, label, label_failure, policy_action, teleop, ...)`. The gate is
    a `core.dagger.gates` gate chosen by ``params.variant``; every executed command goes through one
    `SafetyFilter` whose reference is the last *executed* command, so a hand-over between
    policy and expert never moves a joint by more than ``max_step`` in one tick.
    """

    def __init__(self, contract: Contract, params: DaggerParams, ensemble: Optional[EnsembleDisagreement] = None):
        self.contract, self.params = contract, params
        a = contract.action
        self.safety = SafetyFilter(SafetyLimits(a.lower, a.upper, a.max_step, math.inf))
        self.ensemble = ensemble
        self.source = params.resolved_uncertainty_source() if params.variant == "robot_gated" else ""
        if self.source == "ensemble" and ensemble is None:
            raise ValueError("robot_gated with uncertainty_source ensemble needs the ensemble")
        scale = params.uncertainty_scale or None
        if scale is None and ensemble is not None and ensemble.scale is not None:
            scale = ensemble.scale
        self.scale = scale
        if ensemble is not None and scale is not None:
            ensemble.scale = np.broadcast_to(np.asarray(scale, dtype=float), (contract.act_dim,)).copy()
        self.gate = self._make_gate(params)
        self.chunks: Deque[Tuple[int, np.ndarray]] = collections.deque(maxlen=params.chunk_window)
        self.episode_id: Optional[int] = None
        self.counts = collections.Counter()

    def _make_gate(self, p: DaggerParams):
        if p.variant == "classic":
            return BetaGate(p.beta, p.seed)
        if p.variant == "human_gated":
            return InterventionGate()
        return UncertaintyGate(p.uncertainty_threshold, p.query_budget, p.release, p.min_expert_ticks)

    def set_beta(self, beta: float) -> None:
        self.params = dataclasses.replace(self.params, beta=float(beta))
        if isinstance(self.gate, BetaGate):
            self.gate.beta = float(beta)

    def begin_episode(self, episode_id: int, task_seed: int) -> None:
        """New episode: forget the last command (the arm was reset), the chunks, the gate's state."""
        self.episode_id = int(episode_id)
        self.safety.reset()
        self.chunks.clear()
        if isinstance(self.gate, InterventionGate):
            active = self.gate.active
            self.gate.reset()
            self.gate.set(active)     # a human still pressing keeps control across the reset
        else:
            self.gate.reset(seed=int(self.params.seed) * 1_000_003 + int(task_seed))
        self.counts["episodes"] += 1

    def add_chunk(self, step: int, chunk: np.ndarray) -> None:
        self.chunks.append((int(step), np.asarray(chunk, dtype=float)))

    def uncertainty(self, obs: np.ndarray, step: int) -> float:
        if self.source == "ensemble":
            return float(self.ensemble(obs))
        if self.source == "chunk":
            return chunk_disagreement(self.chunks, step, self.params.uncertainty_horizon, self.scale)
        return 0.0

    def decide(self, obs: np.ndarray, q: np.ndarray, step: int, label: Optional[np.ndarray],
               label_failure: str, policy_action: Optional[np.ndarray],
               intervention: bool = False, teleop: Optional[np.ndarray] = None) -> Outcome:
        """One frame.

        label: the expert's action at `obs` (None when the query failed: `label_failure` says
        why). policy_action: the policy's command for `obs` (None if it did not answer).
        teleop: human_gated only, a fresh teleoperator command (acts instead of the label).
        """
        p = self.params
        if isinstance(self.gate, InterventionGate):
            self.gate.set(intervention)
        u = self.uncertainty(obs, step) if self.source else 0.0
        d: GateDecision = self.gate.decide(u)
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
        self.counts[{ACTOR_POLICY: "policy_acted", ACTOR_EXPERT: "expert_acted",
                     ACTOR_INTERVENTION: "intervention_acted"}[actor]] += 1
        self.counts["labelled"] += int(labelled)
        self.counts["step_clamps"] += int(EVENT_STEP_LIMIT in events)
        return Outcome(command=cmd, actor=actor, labelled=labelled,
                       expert_action=expert_action if labelled else None,
                       reason="|".join(reasons) if reasons else GATE_POLICY, uncertainty=float(u),
                       beta=float(p.beta) if p.variant == "classic" else 0.0, events=events)


def load_ensemble(paths: Sequence[str], contract: Contract, horizon: int) -> EnsembleDisagreement:
    """The ONNX ensemble for robot-gated DAgger, each member checked against the robot's contract.

    Scale: the first member's training action std (``meta.action_std``; older files:
    ``meta.norm.act_std``) when it has one.
    """
    from ..core.control.runtime import OnnxPolicy

    members = [OnnxPolicy(p) for p in paths]
    for m in members:
        m.check_contract(contract)
    meta = members[0].meta
    norm = meta.get("norm") or {}
    scale = meta.get("action_std") or (norm.get("act_std") if isinstance(norm, dict) else None)
    return EnsembleDisagreement(members, scale=scale, horizon=horizon)


# ============================================================================ ROS shell
_PENDING = object()


class _Frame:
    __slots__ = ("key", "stamp", "episode_id", "step", "task_seed", "mode", "done", "obs", "q",
                 "label", "label_chunk", "label_failure", "future", "expert_deadline", "policy",
                 "policy_deadline", "started")

    def __init__(self, key, stamp, episode_id, step, task_seed, mode, done, obs, q):
        self.key, self.stamp, self.episode_id, self.step = key, stamp, episode_id, step
        self.task_seed, self.mode, self.done, self.obs, self.q = task_seed, mode, done, obs, q
        self.label = _PENDING
        self.label_chunk: Optional[np.ndarray] = None   # (K, A) expert plan (label_chunk_length > 1)
        self.label_failure = ""
        self.future = None
        self.expert_deadline = math.inf
        self.policy = None
        self.policy_deadline = math.inf
        self.started = time.monotonic()


class DaggerNode(Node):
    """Expert-query node: decides, per observation stamp, whether policy or expert acts.

    Subscribes:
        the contract's observation topics (e.g. ``/joint_states`` sensor_msgs/JointState,
        ``/task_state`` bc_msgs/TaskState) and ``task_state_topic`` (episode id, step, done,
        latent mode), STATE QoS; ``policy_command_topic`` (``/dagger/policy_command``,
        std_msgs/Float64MultiArray: the policy node's command, remapped); ``policy_chunk_topic``
        (``/policy/action_chunk`` bc_msgs/ActionChunk, robot_gated with chunk disagreement only);
        ``~/intervention`` std_msgs/Bool (human_gated: true = the human/expert takes over);
        ``~/teleop_command`` std_msgs/Float64MultiArray (human_gated: a teleoperator's joint
        targets; while fresh they act instead of the expert label).
    Publishes:
        ``/<controller>/commands`` std_msgs/Float64MultiArray: the executed command, through
        the safety filter (joint limits, ``max_step`` per tick from the last executed command);
        ``~/frame_tag`` bc_msgs/FrameTag for every frame that was acted on (actor, labelled,
        expert label, policy proposal, executed command, beta, uncertainty, gate reason; with
        ``label_chunk_length`` K > 1 the expert label is the expert's planned K-step chunk,
        K x act_dim row-major, whose first row is the action that acted);
        ``~/status`` std_msgs/String (JSON counters, transient local) at ``status_rate_hz``.
    Services used:
        ``expert_service`` (``/expert/query`` bc_msgs/QueryExpert), asynchronously, one
        observation per call with the task's latent mode (chunk_length = label_chunk_length
        when > 1, else 1).
    Parameters (`DaggerParams`; defaults with units in config/dagger.yaml):
        contract, variant, beta, seed, controller, policy_command_topic, policy_chunk_topic,
        expert_service, task_state_topic, expert_timeout_periods, policy_timeout_periods,
        absent_after, teleop_timeout_periods, uncertainty_source, ensemble_models,
        uncertainty_threshold, uncertainty_scale, uncertainty_horizon, chunk_window,
        query_budget, release, min_expert_ticks, status_rate_hz, label_chunk_length. ``beta``
        (the DAgger loop sets it per round), ``expert_timeout_periods`` and
        ``policy_timeout_periods`` change at run time (from the next frame on); the others are
        read once.

    Failure behaviour: an expert that does not answer within ``expert_timeout_periods`` (or
    refuses, or whose service is gone) leaves the frame unlabelled and the policy acts; a
    policy that does not answer within ``policy_timeout_periods`` is covered by the expert
    label (or the last command is held). After ``absent_after`` consecutive timeouts a party
    is not waited for until it answers again, so a dead process never stalls the loop. A
    lock-step pair that comes again (the bridge re-publishes the pair it still waits on, ~/step 0)
    is answered with the command already sent for it if that was > 0.5 s ago (it was lost: e.g.
    sent before the bridge matched a restarted dagger node); no new frame (``resent_commands``).
    """

    def __init__(self, node_name: str = "dagger", **kwargs):
        super().__init__(node_name, **kwargs)
        self.params: DaggerParams = declare_and_load(self, DaggerParams)
        p = self.params
        if not p.contract:
            raise ValueError("parameter 'contract' is empty: give the robot's contract YAML")
        self.contract = Contract.load(p.contract)
        ensemble = None
        if p.variant == "robot_gated" and p.resolved_uncertainty_source() == "ensemble":
            ensemble = load_ensemble(p.ensemble_models, self.contract, p.uncertainty_horizon)
        self.core = DaggerCore(self.contract, p, ensemble)
        self.dt = self.contract.dt
        self._pos_idx = position_indices(self.contract)
        self._assembler = ObservationAssembler(self.contract)
        self._frames: Deque[_Frame] = collections.deque()
        self._policy_fifo: Deque[np.ndarray] = collections.deque()
        self._late: Deque = collections.deque()
        self._policy_absent = False
        self._expert_absent = False
        self._policy_misses = 0
        self._expert_misses = 0
        self._episode: Optional[int] = None
        self._last_sync = None
        # (stamp, command sent, monotonic time): the answer to re-send if that stamp comes again
        self._last_answer: Optional[Tuple[Tuple[int, int], Float64MultiArray, float]] = None
        self._step_of_key: Dict[Tuple[int, int], int] = {}
        self._pending_chunks: Dict[Tuple[int, int], np.ndarray] = {}
        self._intervention = False
        self._teleop: Optional[Tuple[float, np.ndarray]] = None
        self._counts = collections.Counter()
        self._log_next: Dict[str, float] = {}
        self._wall = Clock(clock_type=ClockType.STEADY_TIME)

        # --- observation intake: stamped topics are synced by stamp, the others held (ZOH)
        topics = dict(self.contract.observation_topics())
        topics.setdefault(p.task_state_topic, "bc_msgs/msg/TaskState")
        self._sync_topics: List[str] = []
        self._pending: Dict[str, "collections.OrderedDict"] = {}
        for topic, type_name in topics.items():
            cls = message_class(type_name)
            stamped = has_header(cls)
            if stamped:
                self._sync_topics.append(topic)
                self._pending[topic] = collections.OrderedDict()
            self.create_subscription(cls, topic, self._make_obs_callback(topic, stamped), qos.STATE)
        if p.task_state_topic not in self._sync_topics:
            raise ContractError(f"{p.task_state_topic} must carry a header (bc_msgs/TaskState)")

        self.create_subscription(Float64MultiArray, p.policy_command_topic, self._on_policy_command, qos.COMMAND)
        if self.core.source == "chunk":
            self.create_subscription(ActionChunk, p.policy_chunk_topic, self._on_chunk, qos.COMMAND)
        reliable10 = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.create_subscription(Bool, "~/intervention", self._on_intervention, reliable10)
        self.create_subscription(Float64MultiArray, "~/teleop_command", self._on_teleop, qos.COMMAND)
        self._cmd_pub = self.create_publisher(Float64MultiArray, p.command_topic(), qos.COMMAND)
        self._tag_pub = self.create_publisher(FrameTag, "~/frame_tag", qos.COMMAND)
        self._status_pub = self.create_publisher(String, "~/status", qos.STATUS)
        self._expert = self.create_client(QueryExpert, p.expert_service)
        wait = min(p.expert_timeout_periods, p.policy_timeout_periods) * self.dt
        self._deadline_timer = self.create_timer(min(max(wait / 4, 0.001), 0.02), self._on_deadline_timer,
                                                 clock=self._wall)
        self._deadline_timer.cancel()
        self.create_timer(1.0 / p.status_rate_hz, self._publish_status, clock=self._wall)
        self._expert_ready = False     # ~/status is also published when these change (10 Hz check)
        self._linked: Dict[str, bool] = {}
        self.create_timer(0.1, self._check_expert_ready, clock=self._wall)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.get_logger().info(
            f"dagger: variant {p.variant}"
            + (f" beta={p.beta:g}" if p.variant == "classic" else "")
            + (f" uncertainty={self.core.source}" if self.core.source else "")
            + f", contract {self.contract.name!r}, policy on {p.policy_command_topic}, "
            f"expert {p.expert_service}, commands on {p.command_topic()}")
        self._publish_status()

    # ------------------------------------------------------------------ parameters
    def _on_set_parameters(self, params) -> SetParametersResult:
        changes = {}
        for prm in params:
            if prm.name == "use_sim_time":
                continue
            if prm.name not in RUNTIME_PARAMS:
                return SetParametersResult(successful=False, reason=(
                    f"{prm.name} is read once at startup; only {', '.join(RUNTIME_PARAMS)} change at run time"))
            try:
                changes[prm.name] = float(prm.value)
            except (TypeError, ValueError):
                return SetParametersResult(successful=False, reason=f"{prm.name} must be a number")
        if not changes:
            return SetParametersResult(successful=True)
        try:
            new = dataclasses.replace(self.params, **changes)   # validated in __post_init__
        except ValueError as e:
            return SetParametersResult(successful=False, reason=str(e))
        self.params = new
        if "beta" in changes:
            self.core.set_beta(new.beta)
        self.get_logger().info("set " + ", ".join(f"{k}={v:g}" for k, v in changes.items()))
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ observations
    def _make_obs_callback(self, topic: str, stamped: bool):
        def callback(msg):
            if not stamped:
                self._observe(topic, msg, time.monotonic())
                return
            st = msg.header.stamp
            self._arrival(topic, (st.sec, st.nanosec), msg)
        return callback

    def _observe(self, topic: str, msg, stamp: float) -> bool:
        try:
            self._assembler.update(topic, msg, stamp)
            return True
        except ContractError as e:
            self._counts["bad_observations"] += 1
            self._throttled_warn("bad_obs", f"observation refused: {e}")
            return False

    def _arrival(self, topic: str, key, msg) -> None:
        """Sync: a stamp is complete when every stamped topic has delivered it."""
        pending = self._pending[topic]
        pending[key] = msg
        while len(pending) > PENDING_STAMPS:
            pending.popitem(last=False)
        if any(key not in self._pending[t] for t in self._sync_topics):
            return
        msgs = {t: self._pending[t].pop(key) for t in self._sync_topics}
        ts: TaskState = msgs[self.params.task_state_topic]
        episode = int(ts.episode_id)
        if episode != self._episode:
            self._new_episode(episode, key, int(ts.seed))
        elif self._last_sync is not None and key <= self._last_sync:
            self._counts["stale_stamps"] += 1      # a repeat of an older stamp: no new frame
            answer = self._last_answer
            if answer is not None and answer[0] == key and time.monotonic() - answer[2] > RESEND_AFTER_S:
                # the lock-step bridge re-published the pair it is still waiting on (~/step 0):
                # our command for it was lost long ago (sent before the bridge matched this
                # publisher, or dropped by its rate limit), so send the same command again; no
                # new frame, no new tag. A command still in flight is never doubled.
                self._counts["resent_commands"] += 1
                self._cmd_pub.publish(answer[1])
            return
        for t in self._sync_topics:                # older unmatched stamps will never complete
            for k in [k for k in self._pending[t] if k < key]:
                del self._pending[t][k]
        self._last_sync = key
        ok = all(self._observe(t, m, key[0] + key[1] * 1e-9) for t, m in msgs.items())
        if not ok or not self._assembler.ready:
            self._throttled_warn("obs_incomplete", "observation incomplete: no data yet for "
                                 f"{self._assembler.missing_terms()}; frame skipped")
            return
        obs = self._assembler.vector()
        frame = _Frame(key, key[0] + key[1] * 1e-9, episode, int(ts.step), int(ts.seed), int(ts.mode),
                       bool(ts.done), obs, obs[self._pos_idx])
        self._start_frame(frame)

    def _new_episode(self, episode: int, key, task_seed: int) -> None:
        self._episode = episode
        self.core.begin_episode(episode, task_seed)
        self._last_sync = None
        self._step_of_key.clear()
        for t in self._sync_topics:               # anything pending belongs to the old episode
            for k in [k for k in self._pending[t] if k != key]:
                del self._pending[t][k]
        self._counts["episodes"] += 1

    def _start_frame(self, f: _Frame) -> None:
        now = time.monotonic()
        p = self.params
        self._step_of_key[f.key] = f.step
        if len(self._step_of_key) > PENDING_STAMPS:
            self._step_of_key.pop(next(iter(self._step_of_key)))
        chunk = self._pending_chunks.pop(f.key, None)
        if chunk is not None:
            self.core.add_chunk(f.step, chunk)
        f.policy_deadline = now if self._policy_absent else now + p.policy_timeout_periods * self.dt
        if f.done:
            f.label = None                        # the final observation needs no label
        elif not self._expert.service_is_ready():
            f.label, f.label_failure = None, REASON_EXPERT_UNAVAILABLE
        else:
            req = QueryExpert.Request(count=1, observations=f.obs.tolist(), modes=[f.mode],
                                      chunk_length=p.label_chunk())
            f.future = self._expert.call_async(req)
            f.future.add_done_callback(lambda fut, frame=f: self._on_expert(frame, fut))
            # an absent expert gets one control period (so that it can come back), at most
            wait = min(p.expert_timeout_periods, 1.0) if self._expert_absent else p.expert_timeout_periods
            f.expert_deadline = now + wait * self.dt
        self._frames.append(f)
        self._advance()

    # ------------------------------------------------------------------ answers
    def _on_expert(self, f: _Frame, fut) -> None:
        try:
            resp = fut.result()
        except Exception as e:                     # noqa: BLE001 - any client failure = unlabelled
            resp, err = None, str(e)
        else:
            err = "" if resp is None else resp.message
        if f.label is not _PENDING:                # too late for its frame, but the expert is alive
            self._counts["late_labels"] += 1
            if resp is not None and resp.success and self._expert_absent:
                self._expert_misses, self._expert_absent = 0, False
                self.get_logger().info("expert answers again")
            return
        a, k = self.contract.act_dim, self.params.label_chunk()
        if resp is not None and resp.success and len(resp.actions) >= k * a \
                and (k == 1 or int(resp.chunk_length) == k):
            plan = np.asarray(resp.actions[:k * a], dtype=float).reshape(k, a)
            if np.all(np.isfinite(plan)):
                f.label = plan[0].copy()          # the chunk's first action acts (= act_obs)
                f.label_chunk = plan if k > 1 else None
                self._expert_misses, self._expert_absent = 0, False
                self._advance()
                return
            err = "non-finite label"
        f.label, f.label_failure = None, REASON_EXPERT_ERROR
        self._counts["expert_errors"] += 1
        self._throttled_warn("expert_error", f"expert query failed at step {f.step}: {err}")
        self._advance()

    def _on_policy_command(self, msg: Float64MultiArray) -> None:
        cmd = np.asarray(msg.data, dtype=float)
        if self._policy_absent:
            # The policy is back. This answer is for a stamp already acted on: drop it and pair
            # from the next stamp on.
            self._policy_absent, self._policy_misses = False, 0
            self._counts["policy_late"] += 1
            self.get_logger().info("policy answers again")
            return
        self._policy_fifo.append(cmd)
        self._advance()

    def _on_chunk(self, msg: ActionChunk) -> None:
        n = len(msg.joint_names) or self.contract.act_dim
        if msg.chunk_length < 1 or len(msg.actions) != msg.chunk_length * n or n != self.contract.act_dim:
            return
        chunk = np.asarray(msg.actions, dtype=float).reshape(msg.chunk_length, n)
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        step = self._step_of_key.get(key)
        if step is None:
            self._pending_chunks[key] = chunk     # the chunk beat the observation
            while len(self._pending_chunks) > PENDING_STAMPS:
                self._pending_chunks.pop(next(iter(self._pending_chunks)))
        else:
            self.core.add_chunk(step, chunk)

    def _on_intervention(self, msg: Bool) -> None:
        if bool(msg.data) != self._intervention:
            self.get_logger().info(f"intervention {'on' if msg.data else 'off'}")
        self._intervention = bool(msg.data)

    def _on_teleop(self, msg: Float64MultiArray) -> None:
        cmd = np.asarray(msg.data, dtype=float)
        if cmd.shape == (self.contract.act_dim,) and np.all(np.isfinite(cmd)):
            self._teleop = (time.monotonic(), cmd)
        else:
            self._counts["bad_teleop"] += 1

    # ------------------------------------------------------------------ acting
    def _on_deadline_timer(self) -> None:
        self._advance()

    def _advance(self) -> None:
        """Act on the oldest frame once its label and policy answer are in (or timed out)."""
        while self._frames:
            f = self._frames[0]
            now = time.monotonic()
            if f.policy is None and self._policy_fifo:
                f.policy = self._policy_fifo.popleft()
            policy_waiting = f.policy is None and now < f.policy_deadline
            if f.label is _PENDING and now >= f.expert_deadline:
                self._expert_timed_out(f)
            if f.label is _PENDING or policy_waiting:
                if self._deadline_timer.is_canceled():
                    self._deadline_timer.reset()
                return
            self._frames.popleft()
            if f.policy is None and not self._policy_absent:
                self._policy_misses += 1
                self._counts["policy_timeouts"] += 1
                if self._policy_misses >= self.params.absent_after:
                    self._policy_absent = True
                    self._policy_fifo.clear()
                    self.get_logger().warn(f"policy silent for {self._policy_misses} frames: not "
                                           f"waiting for it until it answers again")
            elif f.policy is not None:
                self._policy_misses = 0
            self._act(f)
        self._deadline_timer.cancel()

    def _expert_timed_out(self, f: _Frame) -> None:
        f.label, f.label_failure = None, REASON_EXPERT_TIMEOUT
        if f.future is not None:
            # Keep waiting for the answer (it tells that the expert is back), but not forever.
            self._late.append(f.future)
            while len(self._late) > MAX_LATE_REQUESTS:
                old = self._late.popleft()
                if not old.done():
                    try:
                        self._expert.remove_pending_request(old)
                    except Exception:  # noqa: BLE001 - answered / removed meanwhile
                        pass
        self._counts["expert_timeouts"] += 1
        if not self._expert_absent:
            self._expert_misses += 1
            if self._expert_misses >= self.params.absent_after:
                self._expert_absent = True
                self.get_logger().warn(f"expert silent for {self._expert_misses} frames: waiting at most "
                                       f"one control period for it until it answers again")

    def _act(self, f: _Frame) -> None:
        if f.done:                                # final observation: nothing to command
            return
        if self.core.episode_id != f.episode_id:
            self.core.begin_episode(f.episode_id, f.task_seed)
        teleop = None
        if self._teleop is not None and \
                time.monotonic() - self._teleop[0] <= self.params.teleop_timeout_periods * self.dt:
            teleop = self._teleop[1]
        policy = f.policy if f.policy is not None and f.policy.shape == (self.contract.act_dim,) else None
        out = self.core.decide(f.obs, f.q, f.step, f.label, f.label_failure, policy,
                               intervention=self._intervention, teleop=teleop)
        # The tag first: it is published before the command that advances the robot, so in
        # publish order it sits between observation k and observation k + 1 (the dataset
        # builder cross-checks its observation against the raw topics at its time).
        self._tag_pub.publish(self._frame_tag(f, policy, out))
        if out.command is not None:
            cmd = command_msg(out.command, self.contract.action.joints)
            self._cmd_pub.publish(cmd)
            self._last_answer = (f.key, cmd, time.monotonic())

    def _frame_tag(self, f: _Frame, policy, out: Outcome) -> FrameTag:
        m = FrameTag()
        m.header.stamp = to_time(f.stamp)
        m.episode_id = int(f.episode_id)
        m.step = int(f.step)
        m.actor = int(out.actor)
        m.labelled = bool(out.labelled)
        m.beta = float(out.beta)
        m.uncertainty = float(out.uncertainty) if math.isfinite(out.uncertainty) else -1.0
        m.gate_reason = out.reason
        m.observation = f.obs.tolist()
        if out.expert_action is None:
            m.expert_action = []
        elif f.label_chunk is not None and out.expert_action is f.label:
            m.expert_action = f.label_chunk.ravel().tolist()    # K x A, row-major; row 0 = the label
        else:                                                   # single action (or a teleop command)
            m.expert_action = np.asarray(out.expert_action, float).tolist()
        m.policy_action = [] if policy is None else policy.tolist()
        m.executed_action = [] if out.command is None else np.asarray(out.command, float).tolist()
        return m

    # ------------------------------------------------------------------ status / logs
    def _check_expert_ready(self) -> None:
        """10 Hz: ~/status at once when the expert service or an input appears / disappears."""
        ready = self._expert.service_is_ready()
        links = {t: n > 0 for t, n in self.links().items()}
        if ready != self._expert_ready or links != self._linked:
            if ready != self._expert_ready:
                self.get_logger().info(f"expert service {self.params.expert_service} "
                                       f"{'available' if ready else 'gone'}")
            self._expert_ready, self._linked = ready, links
            self._publish_status()

    def links(self) -> Dict[str, int]:
        """Publishers this node has discovered on its inputs (0 = not connected yet)."""
        topics = list(self._sync_topics) + [self.params.policy_command_topic]
        return {t: self.count_publishers(t) for t in topics}

    def status(self) -> Dict[str, object]:
        c = {**self.core.counts, **self._counts}
        return {"variant": self.params.variant, "beta": self.params.beta, "episode_id": self._episode,
                "expert_ready": self._expert_ready, "links": self.links(),
                "policy_absent": self._policy_absent, "expert_absent": self._expert_absent,
                "pending_frames": len(self._frames), "intervention": self._intervention,
                **{k: int(v) for k, v in c.items()}}

    def _publish_status(self) -> None:
        self._status_pub.publish(String(data=json.dumps(self.status(), sort_keys=True)))

    def _throttled_warn(self, key: str, text: str) -> None:
        now = time.monotonic()
        if now >= self._log_next.get(key, 0.0):
            self._log_next[key] = now + LOG_EVERY_S
            self.get_logger().warn(text)


def main(args=None) -> None:
    rclpy.init(args=args)
    node = None
    try:
        node = DaggerNode()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (ValueError, ContractError) as e:
        print(f"dagger: {e}", file=sys.stderr)
        raise SystemExit(2)
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
