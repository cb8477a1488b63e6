"""The control engine: policy + chunk executor + safety filter, one tick at a time (no rclpy).

`PolicyController.step(obs, stamp)` is the only place that decides what a learned policy
commands. The policy node calls it from its timer (or once per lock-step stamp), the in-process
evaluator (`core.eval.rollout`) and the DAgger loops call it once per simulated tick; the
results are returned as a `TickResult`, never left on attributes. One tick::

    new episode seen / arm moved away from the last command? -> new plan (see below)
    observation stale?  -> no query; the safety filter holds the last command
    executor.needs_query(t) -> policy.predict_chunk(obs) -> NaN/inf? reject, hold
                                                         -> executor.add(chunk, t)
    executor.action(t)  -> SafetyFilter.filter (limits, per-tick step) -> command
    no chunk to execute (stale before the first one) -> propose to stay (`ActionReference`):
                           the measured position before any command, else the last command,
                           velocities zero (no event)

Ticks are counted, not derived from the clock: tick t is the t-th call since construction, and
a chunk computed at tick t has its first action at tick t (synchronous inference; the chunk
executors' latency alignment stays exact). A stalled timer therefore delays the plan instead of
skipping actions.

New plan ("restart"): the executor forgets every chunk and the safety filter its last command,
so the tick queries the policy on the current observation and the step bound is measured from
the measured joint positions. Triggers:
  * `watch(value)` saw a new value of the node's ``reset_on_change`` field (a new episode);
    `reset()` does the same between in-process episodes and at every activation;
  * ``reset_jump_rad``: a *fresh* measured position differs from the last command by more than
    that on some joint (something else moved the arm: an e-stop recovery, another controller,
    a person, a sim reset the node could not see). A stale measurement is no evidence of a move.

Randomness (``mode_select: sample`` of mixture policies) comes from the controller's own
generator, seeded by ``PolicyParams.seed`` and re-seeded by `reset(seed)`: a node run and an
in-process run with the same seed sample the same modes.
"""
from __future__ import annotations

import time
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from ..contract import EE_VELOCITY, JOINT_POSITION, Contract, ContractError
from .ensemble import ChunkExecutor, NoChunkError, make_executor
from .params import PolicyParams
from .runtime import OnnxPolicy
from .safety import SafetyFilter, SafetyLimits

RESTART_EPISODE = "episode"    # watch() saw a new value (or reset() was called)
RESTART_JUMP = "jump"          # measured position far from the last command


class TickResult:
    """What one `PolicyController.step` did.

    ``command`` (A,) fresh array, or None when there is no reference yet (no command before the
    first measured position); ``chunk`` the chunk added at this tick (None: no query, rejected
    or not taken); ``events`` safety events; ``inference_s`` NaN when no query ran; ``stamp``
    the observation stamp used; ``tick`` this tick's index; ``restart`` RESTART_* when this tick
    started a new plan, else ""; ``jump`` |measured - last command| max (rad) of a jump restart.
    """

    __slots__ = ("command", "chunk", "events", "inference_s", "stamp", "tick", "restart", "jump")

    def __init__(self, command, chunk, events, inference_s, stamp, tick, restart, jump):
        self.command: Optional[np.ndarray] = command
        self.chunk: Optional[np.ndarray] = chunk
        self.events: Tuple[str, ...] = events
        self.inference_s: float = inference_s
        self.stamp: float = stamp
        self.tick: int = tick
        self.restart: str = restart
        self.jump: float = jump


def position_indices(contract: Contract) -> np.ndarray:
    """Indices in the observation vector of the measured positions of the commanded joints
    (joint_position parts; empty when the action commands no joints).

    The safety filter needs them as its first step reference (before any command).
    """
    slices = contract.slices()
    need = contract.action.joint_names
    if not need:
        return np.zeros(0, dtype=np.intp)
    for t in contract.observation:
        if t.field == "position" and t.joints and set(need) <= set(t.joints):
            start = slices[t.name].start
            return np.array([start + t.joints.index(j) for j in need], dtype=np.intp)
    raise ContractError(f"contract {contract.name!r} observes no 'position' field covering the commanded "
                        f"joints {list(need)}; the safety filter needs the measured position as its "
                        f"first step reference")


class ActionReference:
    """The command that keeps the robot where it is, read from an observation vector: the
    measured joint positions for joint_position elements, the rest value of the others (zero
    velocity, the gripper's rest). The safety filter's first step reference, and what is
    proposed when there is no plan. `ee(obs)`: the end-effector position of the workspace box."""

    def __init__(self, contract: Contract):
        a = contract.action
        self.rest = np.concatenate([p.rest_value() for p in a.parts])
        self.joint_idx = a.indices(JOINT_POSITION)
        self.obs_idx = position_indices(contract)
        self.all_joints = len(self.joint_idx) == a.dim
        self.stop = np.array([p.kind == EE_VELOCITY for p, sl in a.part_slices()
                              for _ in range(sl.start, sl.stop)], dtype=bool)
        box = next((p.workspace for p in a.parts if p.workspace is not None), None)
        self._ee = contract.obs_slice(box.ee_term) if box is not None else None

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        if self.all_joints:
            return obs[self.obs_idx]
        out = self.rest.copy()
        out[self.joint_idx] = obs[self.obs_idx]
        return out

    def joints(self, obs: np.ndarray) -> np.ndarray:
        """The measured positions of the commanded joints (action order)."""
        return obs[self.obs_idx]

    def stay(self, last: Optional[np.ndarray]) -> Optional[np.ndarray]:
        """`last` command with its velocity elements stopped."""
        if last is None or not self.stop.any():
            return last
        out = last.copy()
        out[self.stop] = 0.0
        return out

    def ee(self, obs: np.ndarray) -> Optional[np.ndarray]:
        return None if self._ee is None else obs[self._ee]


def check_fits(policy: OnnxPolicy, params: PolicyParams) -> None:
    """ValueError when the model's chunk length does not fit the execution parameters."""
    if params.execution_mode in ("receding_horizon", "latency_aware") and params.n_execute > policy.chunk_length:
        raise ValueError(f"n_execute={params.n_execute} exceeds the model's chunk length "
                         f"K={policy.chunk_length}")
    if params.execution_mode == "mode_consistent" and params.query_every >= policy.chunk_length:
        raise ValueError(f"query_every={params.query_every} leaves no overlap between chunks of "
                         f"length K={policy.chunk_length}")


def load_policy(path: str, robot: Contract, params: PolicyParams) -> OnnxPolicy:
    """Load, validate against the robot's contract and warm up a policy (any thread).

    Raises `PolicyLoadError`, `PolicyContractMismatch` (its message lists every mismatch) or
    ValueError (the model does not fit the execution parameters).
    """
    if not path:
        raise ValueError("no model path given (parameter 'model_path' is empty)")
    policy = OnnxPolicy(path, threads=params.threads)
    policy.check_contract(robot)
    check_fits(policy, params)
    warm, frames = np.zeros(policy.obs_dim), policy.blank_images()
    for _ in range(3):  # first runs allocate inside onnxruntime: keep that off the control path
        policy.predict_chunk(warm, mode_select=params.mode_select, images=frames or None)
    return policy


def build_executor(params: PolicyParams) -> ChunkExecutor:
    return make_executor(params.execution_mode, **params.executor_kwargs())


class PolicyController:
    """An ONNX policy + chunk executor + safety filter: observation in, safe command out.

    Counters: ``tick`` (index of the next tick), ``swaps``, ``restarts`` (per trigger).
    """

    def __init__(self, contract: Contract, policy: OnnxPolicy, params: Optional[PolicyParams] = None):
        params = params or PolicyParams()
        check_fits(policy, params)
        self.contract = contract
        self.params = params
        stale = float(params.stale_after_s or contract.stale_after_s)
        self.safety = SafetyFilter(SafetyLimits.from_contract(contract, stale))
        self.stale_after_s = stale
        self.reference = ActionReference(contract)
        self.policy = policy
        self.executor = build_executor(params)
        self._mode_select = params.mode_select
        self.rng = np.random.default_rng(params.seed)
        self._nan = np.full(contract.act_dim, np.nan)
        self._diff = np.zeros(len(self.reference.joint_idx))
        self._jump_limit = float(params.reset_jump_rad) if len(self._diff) else 0.0   # no joints: no jumps
        self._last_cmd: Optional[np.ndarray] = None
        self._marker: object = _UNSEEN
        self._pending = ""
        self._need_ref = True
        self.tick = 0
        self.swaps = 0
        self.restarts: Dict[str, int] = {RESTART_EPISODE: 0, RESTART_JUMP: 0}

    def reset(self, seed: Optional[int] = None) -> None:
        """New activation or episode: forget chunks and the last command (the arm may have moved);
        re-seed the sampling generator (`seed`, default ``params.seed``)."""
        self._new_plan()
        self._pending = ""
        self.rng = np.random.default_rng(self.params.seed if seed is None else seed)

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

    def hold(self, stamp: float = float("nan")) -> TickResult:
        """The result of a tick whose `step` raised: the last safe command, nothing else (the
        node's answer to an exception; the failed tick keeps its index)."""
        return TickResult(self.safety.hold(), None, (), float("nan"), stamp, self.tick - 1, "", float("nan"))

    def step(self, obs: np.ndarray, stamp: float, now: Optional[float] = None,
             images: Optional[Mapping[str, np.ndarray]] = None) -> TickResult:
        """One tick on observation vector `obs` (raw units) whose oldest term has `stamp`;
        `now` (default: `stamp`, i.e. fresh) on the same clock decides staleness; `images`
        the newest frame of each camera of a policy with cameras
        (`ObservationAssembler.images()`; their age is part of `stamp`)."""
        t = self.tick
        self.tick = t + 1
        now = stamp if now is None else now
        fresh = now - stamp <= self.stale_after_s
        ref = self.reference
        restart, jump = self._pending, float("nan")
        if not restart and fresh and self._jump_limit > 0 and self._last_cmd is not None:
            last = self._last_cmd if ref.all_joints else self._last_cmd[ref.joint_idx]
            d = np.abs(np.subtract(ref.joints(obs), last, out=self._diff), out=self._diff).max()
            if d > self._jump_limit:
                restart, jump = RESTART_JUMP, float(d)
        if restart:
            self._pending = ""
            self.restarts[restart] += 1
            self._new_plan()
        ex = self.executor
        proposed = added = None
        inference = float("nan")
        if fresh and ex.needs_query(t):
            t0 = time.perf_counter()
            chunk = self.policy.predict_chunk(obs, mode_select=self._mode_select, rng=self.rng, images=images)[0]
            inference = time.perf_counter() - t0
            if np.isfinite(chunk).all():
                if ex.add(chunk, t):
                    added = chunk
            else:
                proposed = self._nan           # rejected: the safety filter holds and counts it
        if proposed is None:
            try:
                proposed = ex.action(t)
            except NoChunkError:               # e.g. stale before the first chunk
                pass
        current = ref(obs) if self._need_ref else None
        if proposed is None:                   # nothing planned: propose to stay where we are
            proposed = current if current is not None else ref.stay(self.safety.last_command)
        cmd, events = self.safety.filter(proposed, now, stamp, current, ref.ee(obs))
        if cmd is not None:
            self._need_ref = False
            self._last_cmd = cmd
            cmd = cmd.copy()
        return TickResult(cmd, added, events, inference, stamp, t, restart, jump)

    def contributors(self) -> int:
        return int(self.executor.last_contributors)


class _Unseen:
    def __repr__(self) -> str:
        return "<unseen>"


_UNSEEN = _Unseen()
