"""Last line of defence between a policy and the robot's controllers (numpy only).

`SafetyFilter` turns a proposed action into a command that is guaranteed to be inside the
contract's bounds and within ``max_step`` per tick of the previous command — checked exactly in
floating point, not up to rounding. It holds the last safe command when the observation is
stale or the policy output is malformed (wrong length, NaN/inf), and counts every event.

Per action kind (`core.contract`): joint_position elements are bounded by the joint limits and
step from the measured position; gripper elements by their range, stepping from their rest
value; ee_velocity elements by the speed limits, their step is the acceleration bound, and a
hold *stops* them (zero velocity, not the last velocity: holding a velocity keeps the arm
moving). With a workspace box, a velocity that would carry the end effector out of the box
within one tick is cut so it ends on the boundary (outside the box only motion back toward it
is allowed). Stopping and the box take priority over the acceleration bound. `validate_command` / `CommandValidator` check commands arriving from outside
(the sim bridge's command subscriber): wrong length or NaN/inf is rejected with a reason,
out-of-limit values are clamped and counted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np

from ..contract import EE_VELOCITY, Contract

EVENT_STALE = "stale_observation"      # observation older than stale_after_s (or no stamp)
EVENT_NONFINITE = "nonfinite_action"   # NaN/inf in the proposed action -> rejected, hold
EVENT_SHAPE = "bad_shape"              # proposed action has the wrong length -> rejected, hold
EVENT_JOINT_LIMIT = "joint_limit"      # at least one joint clamped to [lower, upper]
EVENT_STEP_LIMIT = "step_limit"        # at least one joint clamped to +-max_step from last command
EVENT_NO_REFERENCE = "no_reference"    # no previous command and no valid current position
EVENT_WORKSPACE = "workspace"          # an end-effector velocity cut at the workspace box
EVENTS = (EVENT_STALE, EVENT_NONFINITE, EVENT_SHAPE, EVENT_JOINT_LIMIT, EVENT_STEP_LIMIT,
          EVENT_NO_REFERENCE, EVENT_WORKSPACE)


@dataclass(frozen=True)
class BoxLimit:
    """Workspace box (m) for the velocity elements `axes` (vx, vy, vz in the action vector);
    the end-effector position comes with each `SafetyFilter.filter` call."""
    axes: Tuple[int, int, int]
    lower: Tuple[float, float, float]
    upper: Tuple[float, float, float]
    dt: float


@dataclass(frozen=True)
class SafetyLimits:
    """Per-element bounds, per-tick step bound and observation staleness (s).

    `stop`: elements that rest at zero on a hold (velocities); `workspace`: optional box."""

    lower: Tuple[float, ...]
    upper: Tuple[float, ...]
    max_step: Tuple[float, ...]
    stale_after_s: float = float("inf")
    stop: Optional[Tuple[bool, ...]] = None
    workspace: Optional[BoxLimit] = None

    def __post_init__(self):
        lo, hi, st = (np.asarray(v, dtype=float) for v in (self.lower, self.upper, self.max_step))
        if not (lo.ndim == hi.ndim == st.ndim == 1 and lo.shape == hi.shape == st.shape and lo.size):
            raise ValueError("lower, upper and max_step must be equal-length non-empty vectors")
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)) and np.all(lo < hi)):
            raise ValueError("limits must be finite with lower < upper for every joint")
        if not np.all(st > 0) or np.any(np.isnan(st)):
            raise ValueError("max_step must be > 0 for every joint")
        if not self.stale_after_s > 0:
            raise ValueError(f"stale_after_s must be > 0, got {self.stale_after_s}")
        if self.stop is not None and len(self.stop) != lo.size:
            raise ValueError(f"stop mask has {len(self.stop)} elements for {lo.size} limits")

    @property
    def dim(self) -> int:
        return len(self.lower)

    @classmethod
    def from_contract(cls, contract: Contract, stale_after_s: Optional[float] = None) -> "SafetyLimits":
        a = contract.action
        stop = [False] * a.dim
        box = None
        for part, sl in a.part_slices():
            if part.kind == EE_VELOCITY:
                stop[sl] = [True] * part.dim
                if part.workspace is not None:
                    w = part.workspace
                    box = BoxLimit((sl.start, sl.start + 1, sl.start + 2), w.lower, w.upper, contract.dt)
        return cls(tuple(a.lower), tuple(a.upper), tuple(a.max_step),
                   float(stale_after_s or contract.stale_after_s), tuple(stop) if any(stop) else None, box)


def _toward_inside(cmd, ref, lower, upper, max_step):
    """Nudge `cmd` by ulps toward `ref` until the exact float checks hold (ref is inside)."""
    for _ in range(8):
        bad = (np.abs(cmd - ref) > max_step) | (cmd < lower) | (cmd > upper)
        if not bad.any():
            return cmd
        cmd[bad] = np.nextafter(cmd[bad], ref[bad])
    cmd[bad] = ref[bad]  # unreachable in practice; ref itself is always valid
    return cmd


class SafetyFilter:
    """Clamp and sanity-check joint-position commands; hold the last safe one on trouble.

    The reference for the step bound is the last command this filter returned; before the
    first command it is the measured ``current_position`` clipped into the joint limits. The
    returned command always satisfies ``lower <= cmd <= upper`` and
    ``|cmd - reference| <= max_step`` exactly. It is None only when there is no reference at
    all (first call without a finite current position): publish nothing then.

    Args:
        limits: a `Contract` (uses ``action.lower/upper/max_step`` and ``stale_after_s``) or
            `SafetyLimits`.
    """

    def __init__(self, limits: Union[Contract, SafetyLimits]):
        if isinstance(limits, Contract):
            limits = SafetyLimits.from_contract(limits)
        self.limits = limits
        self._lower = np.asarray(limits.lower, dtype=float)
        self._upper = np.asarray(limits.upper, dtype=float)
        self._max_step = np.asarray(limits.max_step, dtype=float)
        self._neg_step = -self._max_step
        self._stop = None if limits.stop is None else np.asarray(limits.stop, dtype=bool)
        self._box = limits.workspace
        self.counts: Dict[str, int] = {e: 0 for e in EVENTS}
        self.ticks = 0
        self.holds = 0
        self._last: Optional[np.ndarray] = None

    @property
    def dim(self) -> int:
        return self.limits.dim

    @property
    def last_command(self) -> Optional[np.ndarray]:
        return None if self._last is None else self._last.copy()

    def reset(self) -> None:
        """Forget the last command (new episode); counters are kept."""
        self._last = None

    def stats(self) -> Dict[str, int]:
        """Counters as a plain dict: every event kind plus ``ticks`` and ``holds``."""
        return {**self.counts, "ticks": self.ticks, "holds": self.holds}

    def _reference(self, current_position) -> Optional[np.ndarray]:
        if self._last is not None:
            return self._last
        if current_position is None:
            return None
        cur = np.asarray(current_position, dtype=float)
        if cur.shape != (self.dim,) or not np.all(np.isfinite(cur)):
            return None
        return np.clip(cur, self._lower, self._upper)

    def filter(self, proposed, now: float, obs_stamp: Optional[float],
               current_position: Optional[Sequence[float]] = None, ee_position: Optional[np.ndarray] = None
               ) -> Tuple[Optional[np.ndarray], Tuple[str, ...]]:
        """Make `proposed` safe.

        Args:
            proposed: (A,) joint-position target from the policy (raw units, rad).
            now: current time (s), same clock as `obs_stamp`.
            obs_stamp: stamp (s) of the oldest observation term the action was computed from;
                None or older than ``stale_after_s`` -> hold.
            current_position: the (A,) reference before the first command: measured joint
                positions, rest values of the other elements (`controller.ActionReference`).
            ee_position: the measured end-effector position, for the workspace box (if any; a
                box without a position is not applied and counted as nothing).
        Returns:
            ``(command, events)``: a fresh (A,) float64 array (or None, see class doc) and the
            event names of this tick (empty tuple when the proposal passed untouched).
        """
        self.ticks += 1
        events = []
        ref = self._reference(current_position)
        if ref is None:
            self._count(events, EVENT_NO_REFERENCE)
            return None, tuple(events)
        hold = False
        if obs_stamp is None or not (now - obs_stamp <= self.limits.stale_after_s):
            self._count(events, EVENT_STALE)
            hold = True
        try:
            p = np.asarray(proposed, dtype=float)
        except (TypeError, ValueError):
            p = None
        if p is None or p.shape != (self.dim,):
            self._count(events, EVENT_SHAPE)
            hold = True
        elif not np.isfinite(p).all():
            self._count(events, EVENT_NONFINITE)
            hold = True
        if hold:
            self.holds += 1
            cmd = ref.copy()
            if self._stop is not None:
                cmd[self._stop] = 0.0
        else:  # np.minimum/maximum: same result as np.clip, several times faster on 7 floats
            cmd = np.minimum(np.maximum(p, self._lower), self._upper)
            if (cmd != p).any():
                self._count(events, EVENT_JOINT_LIMIT)
            step = cmd - ref
            clipped = np.minimum(np.maximum(step, self._neg_step), self._max_step)
            if (clipped != step).any():
                # ref + clipped can land one ulp outside a bound: nudge back exactly.
                self._count(events, EVENT_STEP_LIMIT)
                cmd = _toward_inside(ref + clipped, ref, self._lower, self._upper, self._max_step)
            if self._box is not None and ee_position is not None:
                self._apply_box(cmd, ee_position, events)
        self._last = cmd
        return cmd.copy(), tuple(events)

    def _apply_box(self, cmd: np.ndarray, ee, events) -> None:
        b = self._box
        ax = list(b.axes)
        ee = np.asarray(ee, dtype=float)
        if ee.shape != (3,) or not np.all(np.isfinite(ee)):
            return
        v = cmd[ax]
        hi = np.maximum((np.asarray(b.upper) - ee) / b.dt, 0.0)   # outside: only back toward the box
        lo = np.minimum((np.asarray(b.lower) - ee) / b.dt, 0.0)
        cut = np.minimum(np.maximum(v, lo), hi)
        if (cut != v).any():
            self._count(events, EVENT_WORKSPACE)
            cmd[ax] = cut

    def hold(self) -> Optional[np.ndarray]:
        """The last safe command (None before the first one), velocities stopped; counted as a hold."""
        self.holds += 1
        cmd = self.last_command
        if cmd is not None and self._stop is not None:
            cmd[self._stop] = 0.0
            self._last = cmd.copy()
        return cmd

    def _count(self, events, kind: str) -> None:
        events.append(kind)
        self.counts[kind] += 1


def validate_command(vec, n: int, lower: Optional[Sequence[float]] = None,
                     upper: Optional[Sequence[float]] = None) -> Tuple[Optional[np.ndarray], str]:
    """Check a command vector from outside (e.g. Float64MultiArray.data).

    Returns ``(command, reason)``:
    ``(None, "wrong_length: ...")`` or ``(None, "nonfinite: ...")`` when rejected;
    ``(clamped, "clamped: joints [...]")`` when some values were outside ``[lower, upper]``;
    ``(command, "")`` when it is fine.
    """
    try:
        v = np.asarray(vec, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        return None, f"malformed: cannot read {type(vec).__name__} as numbers"
    if v.shape[0] != n:
        return None, f"wrong_length: got {v.shape[0]} values, expected {n}"
    if not np.all(np.isfinite(v)):
        bad = np.flatnonzero(~np.isfinite(v)).tolist()
        return None, f"nonfinite: NaN/inf at indices {bad}"
    if lower is None and upper is None:
        return v.copy(), ""
    lo = -np.inf if lower is None else np.asarray(lower, dtype=float)
    hi = np.inf if upper is None else np.asarray(upper, dtype=float)
    c = np.clip(v, lo, hi)
    changed = np.flatnonzero(c != v).tolist()
    if changed:
        return c, f"clamped: joints {changed} outside limits"
    return c, ""


class CommandValidator:
    """`validate_command` with fixed size/limits and counters (accepted, clamped, rejected)."""

    def __init__(self, n: int, lower: Optional[Sequence[float]] = None,
                 upper: Optional[Sequence[float]] = None):
        self.n, self.lower, self.upper = int(n), lower, upper
        self.counts = {"accepted": 0, "clamped": 0, "rejected": 0}
        self.last_reason = ""

    @classmethod
    def from_contract(cls, contract: Contract) -> "CommandValidator":
        a = contract.action
        return cls(a.dim, a.lower, a.upper)

    def __call__(self, vec) -> Tuple[Optional[np.ndarray], str]:
        cmd, reason = validate_command(vec, self.n, self.lower, self.upper)
        self.last_reason = reason
        if cmd is None:
            self.counts["rejected"] += 1
        else:
            self.counts["clamped" if reason else "accepted"] += 1
        return cmd, reason
