"""The policy node's control loop without ROS: parameters, model loading, one tick, timing stats.

`policy_node.PolicyNode` owns the ROS side (subscriptions, timer, publishers, lifecycle,
services); everything that decides *what* to command lives here and imports no rclpy, so it
can be exercised directly. One tick (`ControlLoop.step`)::

    new episode seen / arm moved away from the last command? -> new plan (see below)
    observation stale?  -> no query; the safety filter holds the last command
    executor.needs_query(t) -> policy.predict_chunk(obs) -> NaN/inf? reject, hold
                                                         -> executor.add(chunk, t)
    executor.action(t)  -> SafetyFilter.filter (limits, per-tick step) -> command

Ticks are counted, not derived from the clock: tick t is the t-th control period since
activation, and a chunk computed at tick t has its first action at tick t (synchronous
inference; the chunk executors' latency alignment stays exact). A stalled timer therefore
delays the plan instead of skipping actions; stalls are measured (`LoopStats.missed`).

New plan ("restart"): the executor forgets every chunk and the safety filter forgets its last
command, so the tick queries the policy on the current observation (its chunk is the plan's
first) and the step bound is measured from the measured joint positions — exactly what
`core.eval.rollout.PolicyRunner.reset()` does between in-process episodes. Triggers:
  * ``reset_on_change`` (default ``/task_state:episode_id``): the value of that field changed
    (`ControlLoop.watch`, fed by the node with every accepted message of that topic); in
    lock-step the tick of the new episode's first observation pair is the new plan's first;
  * ``reset_jump_rad``: a fresh measured position differs from the last command by more than
    that on some joint (something else moved the arm: an e-stop recovery, another controller,
    a person, a sim reset the node could not see).
Without them the plan of the previous episode would be ensembled into the new one and the
first commands clamped towards the old arm position.
"""
from __future__ import annotations

import collections
import math
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, Hashable, Iterable, List, Optional, Tuple

import numpy as np

from ..core.contract import Contract, ContractError, ObservationAssembler
from ..core.control.ensemble import EXECUTORS, ChunkExecutor, NoChunkError, make_executor
from ..core.control.runtime import MODE_SELECTIONS, OnnxPolicy
from ..core.control.safety import SafetyFilter, SafetyLimits
from .params import doc

COMMAND_INTERFACES = ("forward", "trajectory")
RESTART_EPISODE = "episode"    # the reset_on_change field changed
RESTART_JUMP = "jump"          # measured position far from the last command


@dataclass(frozen=True)
class PolicyParams:
    """Parameters of the policy node (declared in one block, validated at startup)."""

    model_path: str = doc("Exported ONNX policy (bc_policy metadata inside). Setting it at run time "
                          "hot-swaps the model (refused models are reverted)", "")
    contract: str = doc("The robot's contract YAML (config/contracts/<robot>_<task>.yaml); the "
                        "model's embedded contract must match it", "")
    execution_mode: str = doc("Chunk execution: temporal_ensembling | receding_horizon | "
                              "latency_aware | mode_consistent", "temporal_ensembling")
    autostart: bool = doc("Configure and activate at startup", False)
    controller: str = doc("ros2_control controller name: commands go to /<controller>/commands "
                          "(forward) or /<controller>/joint_trajectory (trajectory)",
                          "forward_position_controller")
    command_interface: str = doc("forward: std_msgs/Float64MultiArray | trajectory: "
                                 "trajectory_msgs/JointTrajectory (one point, dt ahead)", "forward")
    m: float = doc("Temporal ensembling weight exp(-m*i), i = 0 the oldest chunk (1/chunk)", 0.01)
    query_every: int = doc("temporal_ensembling / mode_consistent: ticks between policy queries", 1)
    n_execute: int = doc("receding_horizon / latency_aware: actions executed per chunk (0 = K/2)", 0)
    mode_threshold: float = doc("mode_consistent: RMS distance (rad) above which a chunk is not "
                                "averaged with the plan (0.15 = the in-process evaluator's default, "
                                "core.eval.rollout.EXEC_DEFAULTS)", 0.15)
    mode_select: str = doc("gmm policies: argmax | sample (mixture component per query)", "argmax")
    threads: int = doc("onnxruntime intra-op threads (1 is best for batch-1 control)", 1)
    status_rate_hz: float = doc("Rate of ~/status and /diagnostics (Hz)", 1.0)
    stale_after_s: float = doc("Observation age (s) that makes the policy hold; 0 = the contract's "
                               "stale_after_s", 0.0)
    lockstep: bool = doc("Tick once per new observation stamp (sim bridge in lock-step) instead of "
                         "on a timer at the contract rate", False)
    missed_tick_factor: float = doc("A tick is missed when its period exceeds this times the "
                                    "nominal period", 1.5)
    stats_window: int = doc("Ticks in the rolling window of the timing percentiles", 10000)
    reset_on_change: str = doc("'<topic>:<field>' of an observation topic of the contract: when the "
                               "field's value changes (a new episode) the loop starts a new plan at "
                               "the measured position; '' = off. A topic the contract does not observe "
                               "is ignored with a warning at configure", "/task_state:episode_id")
    reset_jump_rad: float = doc("Start a new plan at the measured position when it differs from the "
                                "last command by more than this (rad) on some joint; 0 = off", 0.5)

    def __post_init__(self):
        if self.execution_mode not in EXECUTORS:
            raise ValueError(f"execution_mode {self.execution_mode!r} unknown; choose from {sorted(EXECUTORS)}")
        if self.command_interface not in COMMAND_INTERFACES:
            raise ValueError(f"command_interface {self.command_interface!r} unknown; choose from {COMMAND_INTERFACES}")
        if self.mode_select not in MODE_SELECTIONS:
            raise ValueError(f"mode_select {self.mode_select!r} unknown; choose from {MODE_SELECTIONS}")
        if not self.controller or "/" in self.controller.strip("/"):
            raise ValueError(f"controller must be a controller name, got {self.controller!r}")
        for name in ("autostart", "lockstep"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        checks = (("m", math.isfinite(self.m), "finite"),
                  ("query_every", self.query_every >= 1, ">= 1"),
                  ("n_execute", self.n_execute >= 0, ">= 0 (0 = half the chunk)"),
                  ("mode_threshold", math.isfinite(self.mode_threshold) and self.mode_threshold >= 0, ">= 0"),
                  ("threads", self.threads >= 1, ">= 1"),
                  ("status_rate_hz", math.isfinite(self.status_rate_hz) and self.status_rate_hz > 0, "> 0"),
                  ("stale_after_s", math.isfinite(self.stale_after_s) and self.stale_after_s >= 0,
                   ">= 0 (0 = from the contract)"),
                  ("missed_tick_factor", math.isfinite(self.missed_tick_factor) and self.missed_tick_factor > 1,
                   "> 1"),
                  ("stats_window", self.stats_window >= 100, ">= 100"),
                  ("reset_jump_rad", math.isfinite(self.reset_jump_rad) and self.reset_jump_rad >= 0,
                   ">= 0 (0 = off)"))
        for name, ok, what in checks:
            if not ok:
                raise ValueError(f"parameter {name} must be {what}, got {getattr(self, name)!r}")
        self.reset_marker()

    def reset_marker(self) -> Optional[Tuple[str, Tuple[str, ...]]]:
        """``reset_on_change`` parsed: ``(topic, field path)`` or None when off."""
        spec = self.reset_on_change
        if not isinstance(spec, str):
            raise ValueError(f"parameter reset_on_change must be a string, got {spec!r}")
        if not spec:
            return None
        topic, sep, field = spec.rpartition(":")
        parts = tuple(field.split("."))
        if not sep or not topic.startswith("/") or not all(p.isidentifier() for p in parts):
            raise ValueError(f"parameter reset_on_change must be '' or '/<topic>:<field>' (e.g. "
                             f"'/task_state:episode_id'), got {spec!r}")
        return topic, parts

    def executor_kwargs(self) -> Dict[str, object]:
        mode = self.execution_mode
        if mode == "temporal_ensembling":
            return {"m": self.m, "query_every": self.query_every}
        if mode == "mode_consistent":
            return {"m": self.m, "threshold": self.mode_threshold, "query_every": self.query_every}
        return {"n_execute": self.n_execute or None}

    def command_topic(self) -> str:
        base = "/" + self.controller.strip("/")
        return base + ("/commands" if self.command_interface == "forward" else "/joint_trajectory")


def position_indices(contract: Contract) -> np.ndarray:
    """Indices in the observation vector of the measured positions of the commanded joints.

    The safety filter needs them as its first step reference (before any command).
    """
    slices = contract.slices()
    need = contract.action.joints
    for t in contract.observation:
        if t.field == "position" and t.joints and set(need) <= set(t.joints):
            start = slices[t.name].start
            return np.array([start + t.joints.index(j) for j in need], dtype=np.intp)
    raise ContractError(f"contract {contract.name!r} observes no 'position' field covering the commanded "
                        f"joints {list(need)}; the safety filter needs the measured position as its "
                        f"first step reference")


def load_policy(path: str, robot: Contract, params: PolicyParams) -> OnnxPolicy:
    """Load, validate against the robot's contract and warm up a policy (any thread).

    Raises `PolicyLoadError`, `PolicyContractMismatch` (its message lists every mismatch) or
    ValueError (the model does not fit the execution parameters).
    """
    if not path:
        raise ValueError("no model path given (parameter 'model_path' is empty)")
    policy = OnnxPolicy(path, threads=params.threads)
    policy.check_contract(robot)
    if params.execution_mode in ("receding_horizon", "latency_aware") and params.n_execute > policy.chunk_length:
        raise ValueError(f"n_execute={params.n_execute} exceeds the model's chunk length "
                         f"K={policy.chunk_length}")
    if params.execution_mode == "mode_consistent" and params.query_every >= policy.chunk_length:
        raise ValueError(f"query_every={params.query_every} leaves no overlap between chunks of "
                         f"length K={policy.chunk_length}")
    warm = np.zeros(policy.obs_dim)
    for _ in range(3):  # first runs allocate inside onnxruntime: keep that off the control path
        policy.predict_chunk(warm, mode_select=params.mode_select)
    return policy


def build_executor(params: PolicyParams) -> ChunkExecutor:
    return make_executor(params.execution_mode, **params.executor_kwargs())


class ControlLoop:
    """Policy + chunk executor + safety filter; `step` computes one command.

    Attributes after each `step`: ``chunk`` (the chunk added at this tick or None),
    ``events`` (safety events of the tick), ``inference_s`` (NaN when no query ran),
    ``obs_stamp`` (oldest observation stamp used), ``tick`` (index of the next tick), ``swaps``,
    ``restart`` (RESTART_EPISODE / RESTART_JUMP when this tick started a new plan, else ""),
    ``restarts`` (counts per trigger), ``jump`` (largest |measured - last command| of the last
    jump restart, rad).
    """

    def __init__(self, contract: Contract, policy: OnnxPolicy, params: PolicyParams):
        self.contract = contract
        self.params = params
        a = contract.action
        stale = params.stale_after_s or contract.stale_after_s
        self.safety = SafetyFilter(SafetyLimits(a.lower, a.upper, a.max_step, float(stale)))
        self.stale_after_s = float(stale)
        self._pos_idx = position_indices(contract)
        self.policy = policy
        self.executor = build_executor(params)
        self._mode_select = params.mode_select
        self._nan = np.full(contract.act_dim, np.nan)
        self._pos = np.zeros(contract.act_dim)      # measured position of the commanded joints
        self._diff = np.zeros(contract.act_dim)
        self._jump_limit = float(params.reset_jump_rad)
        self._last_cmd: Optional[np.ndarray] = None
        self._marker = _UNSEEN
        self._pending = ""
        self.tick = 0
        self.swaps = 0
        self.chunk: Optional[np.ndarray] = None
        self.events: Tuple[str, ...] = ()
        self.inference_s = float("nan")
        self.obs_stamp = -math.inf
        self.restart = ""
        self.restarts = {RESTART_EPISODE: 0, RESTART_JUMP: 0}
        self.jump = float("nan")
        self._need_ref = True

    def reset(self) -> None:
        """New activation: forget chunks and the last command (the arm may have moved)."""
        self._new_plan()
        self._pending = ""
        self.chunk = None
        self.events = ()
        self.restart = ""

    def _new_plan(self) -> None:
        self.executor.reset()
        self.safety.reset()
        self._last_cmd = None
        self._need_ref = True

    def watch(self, value) -> bool:
        """The current value of the ``reset_on_change`` field (any message of that topic).

        A value different from the previous one (not the first one seen) makes the next tick
        start a new plan. Returns True on a change."""
        last, self._marker = self._marker, value
        if last is _UNSEEN or value == last:
            return False
        self._pending = RESTART_EPISODE
        return True

    @property
    def marker(self):
        """The last value given to `watch` (None before any)."""
        return None if self._marker is _UNSEEN else self._marker

    def swap(self, policy: OnnxPolicy) -> bool:
        """Use `policy` from the next tick on. Same chunk length: the executor keeps its chunks
        (old and new predictions are ensembled across the swap); otherwise it starts a new plan.
        The safety filter keeps its last command, so the step bound holds across the swap.
        Returns True if the plan was kept."""
        keep = policy.chunk_length == self.policy.chunk_length
        if not keep:
            self.executor = build_executor(self.params)
        self.policy = policy
        self.swaps += 1
        return keep

    def step(self, obs: ObservationAssembler, now: float) -> Optional[np.ndarray]:
        """One tick. `obs` must be ready; `now` on the same clock as the observation stamps.

        Returns the command (A,) — fresh array — or None when there is no reference yet.
        """
        t = self.tick
        self.tick = t + 1
        self.chunk = None
        self.inference_s = float("nan")
        stamp = self.obs_stamp = obs.oldest_stamp()
        fresh = now - stamp <= self.stale_after_s
        x = obs.vector()
        pos = np.take(x, self._pos_idx, out=self._pos)
        restart = self._pending
        if not restart and fresh and self._jump_limit > 0 and self._last_cmd is not None:
            d = np.abs(np.subtract(pos, self._last_cmd, out=self._diff), out=self._diff).max()
            if d > self._jump_limit:
                restart, self.jump = RESTART_JUMP, float(d)
        self.restart = restart
        if restart:
            self._pending = ""
            self.restarts[restart] += 1
            self._new_plan()
        ex = self.executor
        proposed = None
        if fresh and ex.needs_query(t):
            t0 = time.perf_counter()
            chunk = self.policy.predict_chunk(x, mode_select=self._mode_select)[0]
            self.inference_s = time.perf_counter() - t0
            if np.isfinite(chunk).all():
                if ex.add(chunk, t):
                    self.chunk = chunk
            else:
                proposed = self._nan           # rejected: the safety filter holds and counts it
        if proposed is None:
            try:
                proposed = ex.action(t)
            except NoChunkError:               # e.g. stale before the first chunk
                pass
        current = pos if self._need_ref else None
        if proposed is None:                   # nothing planned: propose to stay where we are
            proposed = current if current is not None else self.safety.last_command
        cmd, self.events = self.safety.filter(proposed, now, stamp, current)
        if cmd is not None:
            self._need_ref = False
            self._last_cmd = cmd
        return cmd

    def contributors(self) -> int:
        return int(self.executor.last_contributors)


class _Unseen:
    def __repr__(self) -> str:
        return "<unseen>"


_UNSEEN = _Unseen()


class LoopStats:
    """Rolling timing statistics of the control loop (preallocated ring buffers).

    Per tick: period (s, between tick starts on the node clock), compute time (s), obs->command
    latency (s) and observation age (s); per query: inference time (s). `summary()` gives
    percentiles in microseconds over the last `window` ticks and the achieved rate since the
    previous summary.
    """

    def __init__(self, nominal_period: float, missed_factor: float, window: int = 10000,
                 count_missed: bool = True):
        self.nominal = float(nominal_period)
        self.missed_threshold = float(missed_factor) * self.nominal
        self.count_missed = bool(count_missed)
        self._n = int(window)
        self._buf = np.zeros((4, self._n))     # period, compute, latency, age
        self._inf = np.zeros(self._n)
        self.reset()

    def reset(self) -> None:
        self.ticks = 0
        self.missed = 0
        self.queries = 0
        self._i = 0
        self._inf_i = 0
        self._last_start: Optional[float] = None
        self._rate_mark: Tuple[int, Optional[float]] = (0, None)
        self.last_age = float("nan")
        self.last_latency = float("nan")

    def pause(self) -> None:
        """The loop stops (deactivate): the gap until it restarts is not a period."""
        self._last_start = None

    def record(self, start: float, compute: float, latency: float, age: float, inference: float) -> None:
        last, self._last_start = self._last_start, start
        i = self._i % self._n
        b = self._buf
        if last is not None:
            period = start - last
            b[0, i] = period
            if self.count_missed and period > self.missed_threshold:
                self.missed += 1
        else:
            b[0, i] = self.nominal
        b[1, i] = compute
        b[2, i] = latency
        b[3, i] = age
        self.last_age = age
        self.last_latency = latency
        self._i += 1
        self.ticks += 1
        if inference == inference:  # not NaN
            self._inf[self._inf_i % self._n] = inference
            self._inf_i += 1
            self.queries += 1

    def summary(self, now: float) -> Dict[str, float]:
        n = min(self._i, self._n)
        out = {"ticks": self.ticks, "missed_ticks": self.missed, "queries": self.queries}
        ticks0, t0 = self._rate_mark
        out["achieved_rate_hz"] = ((self.ticks - ticks0) / (now - t0)
                                   if t0 is not None and now > t0 else 0.0)
        self._rate_mark = (self.ticks, now)
        nan = float("nan")
        if n:
            b = self._buf[:, :n]
            per, comp, lat = np.percentile(b[:3], (50, 99), axis=1).T * 1e6
            jitter = np.percentile(np.abs(b[0] - self.nominal), 99) * 1e6
            out.update(period_p50_us=per[0], period_p99_us=per[1], tick_time_p50_us=comp[0],
                       tick_time_p99_us=comp[1], obs_to_cmd_latency_p50_us=lat[0],
                       obs_to_cmd_latency_p99_us=lat[1], period_jitter_p99_us=float(jitter))
        m = min(self._inf_i, self._n)
        if m:
            p = np.percentile(self._inf[:m], (50, 99)) * 1e6
            out.update(inference_time_p50_us=p[0], inference_time_p99_us=p[1])
        for key in ("period_p50_us", "period_p99_us", "tick_time_p50_us", "tick_time_p99_us",
                    "obs_to_cmd_latency_p50_us", "obs_to_cmd_latency_p99_us", "period_jitter_p99_us",
                    "inference_time_p50_us", "inference_time_p99_us"):
            out[key] = float(out.get(key, nan))
        out["observation_age_s"] = float(self.last_age)
        return out


class StampSync:
    """Lock-step intake: a stamp is released once every topic has delivered a message with it.

    ``add(topic, key, item)`` returns ``[(topic, item), ...]`` for every topic (in the order
    given) when `key` completes, else None. Older pending stamps are dropped on release;
    stamps at or before the last released one are ignored; at most `max_pending` unmatched
    stamps are kept per topic.
    """

    def __init__(self, topics: Iterable[str], max_pending: int = 64):
        self.topics = list(topics)
        self.max_pending = int(max_pending)
        self.reset()

    def reset(self) -> None:
        self._pending = {t: collections.OrderedDict() for t in self.topics}
        self.last: Optional[Hashable] = None

    def add(self, topic: str, key, item) -> Optional[List[Tuple[str, object]]]:
        pending = self._pending[topic]
        pending[key] = item
        if len(pending) > self.max_pending:
            pending.popitem(last=False)
        if (self.last is not None and key <= self.last) or any(key not in self._pending[t] for t in self.topics):
            return None
        out = []
        for t in self.topics:
            p = self._pending[t]
            out.append((t, p.pop(key)))
            for k in [k for k in p if k < key]:
                del p[k]
        self.last = key
        return out


class PolicyLoader:
    """Loads and validates policies on a worker thread, one request at a time.

    `submit(request)` queues an object with ``path``, ``contract`` and ``params``; the worker
    sets ``request.policy`` (or ``request.error``), appends it to `done` and calls `notify`
    (thread-safe, e.g. a guard condition's ``trigger``). `before_load()` runs on the worker
    right before each load (the node uses it to start just after a control tick).
    """

    def __init__(self, notify: Callable[[], None], before_load: Callable[[], None] = lambda: None):
        self.done: "collections.deque" = collections.deque()
        self._notify, self._before = notify, before_load
        self._queue: "queue.Queue" = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="policy_loader", daemon=True)
        self._thread.start()

    def submit(self, request) -> None:
        self._queue.put(request)

    def close(self, timeout: float = 5.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout=timeout)

    def _work(self) -> None:
        while True:
            req = self._queue.get()
            if req is None:
                return
            self._before()
            try:
                req.policy = load_policy(req.path, req.contract, req.params)
            except Exception as e:  # the reason goes back to the caller verbatim
                req.error = str(e) or type(e).__name__
            self.done.append(req)
            self._notify()
