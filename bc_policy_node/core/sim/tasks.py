"""Sim tasks with seeded reset distributions (numpy only; physics lives in core/sim/sim.py).

Each task reproduces a failure mode behavioral cloning is known for:

- `curved_reach`: reach a goal far around the base; the expert swings along a bulged arc, so
  a policy that drifts toward the straight chord shows it in a 2-D plot.
- `bimodal`: an obstacle post sits on the straight line between start and goal; the expert
  passes on one side or the other (latent `mode` 0/1 drawn per episode). The average of the
  two modes drives into the post; touching it ends the episode with status `collision`.
- `long_horizon`: visit a sequence of waypoints; the active one is `goal`, `phase` advances
  when it is reached. Long enough (hundreds of ticks) for compounding error to show.

Coordinates are in task space: (x, y) for planar arms, (x, y, z) otherwise, in metres in the
world frame. A task is reset with an integer seed (`np.random.default_rng(seed)`): same seed,
same start configuration, goal, obstacle, waypoints and mode.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple, Type

import numpy as np

from .sim import ArmSim
from ..types import STATUS_COLLISION, STATUS_RUNNING, STATUS_SUCCESS, STATUS_TIMEOUT

TOOL_CLEARANCE = 0.09   # m, lateral distance the bimodal expert keeps from the obstacle edge


class TaskError(ValueError):
    """Unknown task/variant, or a reset distribution that cannot be sampled on this robot."""


class Task:
    """Base class: state of one episode (goal, obstacle, waypoints, phase, mode, status).

    Subclasses implement `_sample(rng)` (start config + task objects) and may override
    `_progress(ee)` (success / phase logic). `update()` is called once per control tick.
    """

    name = "task"
    variants: Tuple[str, ...] = ("",)
    horizon = 200          # control ticks
    tolerance = 0.02       # m, success radius around the goal

    def __init__(self, sim: ArmSim, variant: str = ""):
        if variant not in self.variants:
            raise TaskError(f"task {self.name!r} has no variant {variant!r} "
                            f"(variants: {list(self.variants)})")
        self.sim = sim
        self.variant = variant
        self.dim = sim.task_dim
        self.r_lo, self.r_hi = sim.workspace_r[0], sim.workspace_r[1]
        self.z_lo, self.z_hi = sim.workspace_z[0], sim.workspace_z[1]
        self.base = sim.base_position[:2].copy()
        self.seed = 0
        self.goal = np.zeros(self.dim)
        self.obstacle = np.zeros(0)
        self.waypoints = np.zeros((0, self.dim))
        self.phase = 0
        self.mode = -1
        self.start_q = sim.home_q.copy()
        self.status, self.reason = STATUS_RUNNING, ""

    # ------------------------------------------------------------------ public
    @property
    def num_phases(self) -> int:
        return max(1, len(self.waypoints))

    @property
    def done(self) -> bool:
        return self.status != STATUS_RUNNING

    def reset(self, seed: int) -> np.ndarray:
        """Sample a new episode from `seed`; returns the start joint configuration."""
        self.seed = int(seed)
        rng = np.random.default_rng(self.seed)
        self.obstacle = np.zeros(0)
        self.waypoints = np.zeros((0, self.dim))
        self.phase, self.mode = 0, -1
        self.status, self.reason = STATUS_RUNNING, ""
        for _ in range(200):
            q = self._sample(rng)
            if q is not None:
                self.start_q = q
                return q
        raise TaskError(f"{self.name}: could not sample a feasible episode for seed {seed} "
                        f"on {self.sim.path.name}")

    def update(self, ee: np.ndarray, collided: bool, step: int) -> str:
        """Advance the episode status after a control tick; returns the status."""
        if self.done:
            return self.status
        if collided:
            contacts = ", ".join(f"{a}/{b}" for a, b in self.sim.last_contacts[:2]) or "robot/obstacle"
            self.status, self.reason = STATUS_COLLISION, f"contact {contacts} at tick {step}"
        elif self._progress(np.asarray(ee)[:self.dim]):
            self.status = STATUS_SUCCESS
            self.reason = f"reached {'all waypoints' if len(self.waypoints) else 'goal'} at tick {step}"
        elif step >= self.horizon:
            self.status = STATUS_TIMEOUT
            self.reason = (f"{self.horizon} ticks elapsed, phase {self.phase}/{self.num_phases}, "
                           f"distance to goal {np.linalg.norm(np.asarray(ee)[:self.dim] - self.goal):.3f} m")
        return self.status

    def obstacle_center(self) -> Optional[np.ndarray]:
        return None if self.obstacle.size == 0 else self.obstacle[:-1]

    # --------------------------------------------------------------- internals
    def _progress(self, ee: np.ndarray) -> bool:
        return bool(np.linalg.norm(ee - self.goal) < self.tolerance)

    def _sample(self, rng: np.random.Generator) -> Optional[np.ndarray]:
        raise NotImplementedError

    def _point(self, r: float, theta: float, z: Optional[float] = None) -> np.ndarray:
        p = [self.base[0] + r * math.cos(theta), self.base[1] + r * math.sin(theta)]
        if self.dim == 3:
            p.append(z if z is not None else 0.5 * (self.z_lo + self.z_hi))
        return np.array(p)

    def _z(self, rng) -> Optional[float]:
        return float(rng.uniform(self.z_lo, self.z_hi)) if self.dim == 3 else None

    def _ik(self, p: np.ndarray) -> Optional[np.ndarray]:
        """Start configuration with the ee at p (elbow posture of the home keyframe)."""
        sim = self.sim
        q0 = sim.home_q.copy()
        home_theta = math.atan2(*(sim.fk(q0)[:2] - self.base)[::-1])
        theta = math.atan2(p[1] - self.base[1], p[0] - self.base[0])
        q0[0] = np.clip(q0[0] + theta - home_theta, sim.lower[0], sim.upper[0])
        q, err = sim.solve_ik(p, q0)
        margin = 0.05
        if err > 1e-3 or np.any(q < sim.lower + margin) or np.any(q > sim.upper - margin):
            return None
        return q

    def _in_workspace(self, p: np.ndarray, slack: float = 0.0) -> bool:
        r = float(np.linalg.norm(p[:2] - self.base))
        return self.r_lo - slack <= r <= self.r_hi + slack


class CurvedReach(Task):
    """Reach a goal 60-110 degrees around the base (variant "short": 25-45 degrees)."""

    name = "curved_reach"
    variants = ("", "short")
    horizon = 200

    def _sample(self, rng):
        lo, hi = (0.45, 0.8) if self.variant == "short" else (1.05, 1.9)
        m = 0.04
        r_s, r_g = rng.uniform(self.r_lo + m, self.r_hi - m, size=2)
        dtheta = rng.uniform(lo, hi) * rng.choice([-1.0, 1.0])
        th_s = rng.uniform(-1.55, 1.55 - abs(dtheta))   # start and goal within +-1.55 rad
        if dtheta < 0:
            th_s += abs(dtheta)
        start = self._point(r_s, th_s, self._z(rng))
        self.goal = self._point(r_g, th_s + dtheta, self._z(rng))
        q = self._ik(start)
        if q is None or self._ik(self.goal) is None:
            return None
        return q


class Bimodal(Task):
    """Pass an obstacle post on either side; `mode` (0/1) is the side the expert takes.

    Variants: "" (mode drawn per episode), "mode0", "mode1" (fixed mode).
    """

    name = "bimodal"
    variants = ("", "mode0", "mode1")
    horizon = 220

    def __init__(self, sim: ArmSim, variant: str = ""):
        super().__init__(sim, variant)
        if self.dim != 2:
            raise TaskError(f"bimodal is defined for planar arms only ({sim.path.name} is not planar)")

    def _sample(self, rng):
        mode = int(rng.integers(2))
        if self.variant in ("mode0", "mode1"):
            mode = int(self.variant[-1])
        phi = rng.uniform(-0.5, 0.5)
        r_o = rng.uniform(0.44, 0.50)
        rho = rng.uniform(0.05, 0.07)
        half = rng.uniform(0.24, 0.30)
        sign = rng.choice([-1.0, 1.0])
        o = self._point(r_o, phi)
        radial = np.array([math.cos(phi), math.sin(phi)])
        tangent = sign * np.array([-math.sin(phi), math.cos(phi)])
        jit = rng.uniform(-0.012, 0.012, size=4)
        start, goal = o.copy(), o.copy()
        start[:2] = o[:2] - (half + jit[0]) * tangent + jit[1] * radial
        goal[:2] = o[:2] + (half + jit[2]) * tangent + jit[3] * radial
        w = rho + TOOL_CLEARANCE
        if not (self._in_workspace(o[:2] + w * radial) and self._in_workspace(o[:2] - w * radial)):
            return None
        q = self._ik(start)
        if q is None or self._ik(goal) is None:
            return None
        self.goal, self.mode = goal, mode
        self.obstacle = np.concatenate([o, [rho]])
        return q


class LongHorizon(Task):
    """Visit 6 waypoints in order (variant "short": 4); `goal` is the active one."""

    name = "long_horizon"
    variants = ("", "short")
    tolerance = 0.025

    def __init__(self, sim: ArmSim, variant: str = ""):
        super().__init__(sim, variant)
        self.n_waypoints = 4 if variant == "short" else 6
        self.horizon = 100 * self.n_waypoints + 50   # 650 / 450 ticks

    def _sample(self, rng):
        m = 0.03
        r = rng.uniform(self.r_lo + m, self.r_hi - m)
        th = rng.uniform(-1.4, 1.4)
        start = self._point(r, th, self._z(rng))
        pts, prev = [], start
        while len(pts) < self.n_waypoints:
            for _ in range(100):
                cand = self._point(rng.uniform(self.r_lo + m, self.r_hi - m),
                                   rng.uniform(-1.5, 1.5), self._z(rng))
                if 0.2 <= np.linalg.norm(cand - prev) <= 0.4:
                    break
            else:
                return None
            pts.append(cand)
            prev = cand
        q = self._ik(start)
        if q is None or any(self._ik(p) is None for p in pts):
            return None
        self.waypoints = np.array(pts)
        self.goal = self.waypoints[0].copy()
        return q

    def _progress(self, ee):
        if np.linalg.norm(ee - self.goal) < self.tolerance:
            self.phase += 1
            if self.phase >= len(self.waypoints):
                self.phase = len(self.waypoints) - 1
                return True
            self.goal = self.waypoints[self.phase].copy()
            self.sim.set_goal_marker(self.goal)
        return False


TASKS: Dict[str, Type[Task]] = {t.name: t for t in (CurvedReach, Bimodal, LongHorizon)}


def make_task(name: str, sim: ArmSim, variant: str = "") -> Task:
    """Task instance by name (`curved_reach`, `bimodal`, `long_horizon`)."""
    try:
        cls = TASKS[name]
    except KeyError:
        raise TaskError(f"unknown task {name!r} (tasks: {sorted(TASKS)})") from None
    return cls(sim, variant)
