"""State-feedback scripted experts (numpy + mujoco kinematics only).

An expert maps ANY state (joint positions + task state) to the next absolute joint position
target, so DAgger can query it on states it never visited. Each expert is a task-space
vector field (desired end-effector displacement per control tick) pushed through damped
least squares on the robot's Jacobian (computed by MuJoCo on a private MjData at the queried
configuration), with a null-space pull toward the home posture, the per-tick step bounded by
`max_step` (direction preserved) and the result clipped inside the joint limits.

The servos of the shipped robots reach a target within one control tick, so `plan()` rolls
the expert forward assuming q_next = target.

Fields:
- curved reach / long horizon: move in cylindrical coordinates around the base axis, with
  the radius bulging outward while the angular error is large: a visibly curved arc.
- bimodal: a flow tube around a reference path that swerves laterally by
  `obstacle radius + TOOL_CLEARANCE` to the side `s` and back. s = the side the tool is
  clearly on (|lateral offset| > hysteresis band), otherwise the latent mode (0 -> +1,
  1 -> -1), otherwise the current side. Forward progress waits while the tool is far from
  the reference next to the obstacle, and motion into the obstacle is removed near it.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ..contract import Contract
from .sim import ArmSim
from .tasks import TOOL_CLEARANCE


class ScriptedExpert:
    """Base expert: kinematics, DLS mapping, step bounding, planning and decoders.

    Args:
        kin: an ArmSim of the robot (only its kinematics are used; pass a dedicated one if the
            live simulation runs in another thread).
        max_step: per-joint bound on |target - q| per control tick (rad), scalar or (n,).
        speed: cruise speed of the end effector (m/s).
        control_rate_hz: control rate (Hz).
    """

    task = ""
    default_speed = 0.4     # m/s
    gain = 0.1              # 1/tick, approach gain near the goal

    def __init__(self, kin: ArmSim, max_step=0.05, speed: Optional[float] = None,
                 control_rate_hz: float = 50.0):
        self.kin = kin
        self.n, self.dim = kin.n, kin.task_dim
        self.dt = 1.0 / float(control_rate_hz)
        self.vmax = (speed if speed is not None else self.default_speed) * self.dt  # m/tick
        self.max_step = np.broadcast_to(np.asarray(max_step, dtype=float), (self.n,)).copy()
        if np.any(self.max_step <= 0):
            raise ValueError("max_step must be > 0")
        self.lo, self.hi = kin.lower + 0.02, kin.upper - 0.02
        self.q_rest = kin.home_q.copy()
        self.posture = np.full(self.n, 0.05)   # 1/tick, null-space pull (not on the base yaw)
        self.posture[0] = 0.0
        self.lam2 = 1e-4
        self.base = (float(kin.base_position[0]), float(kin.base_position[1]))
        self.r_cap = kin.workspace_r[1] + 0.02
        self._decoders: dict = {}

    # --------------------------------------------------------------- the field
    def velocity(self, p: np.ndarray, goal: np.ndarray, obstacle: np.ndarray, mode: int) -> np.ndarray:
        """Desired ee displacement for this tick (task dims, m)."""
        raise NotImplementedError

    # ------------------------------------------------------------------- acting
    def _step(self, q: np.ndarray, goal, obstacle, mode):
        p, J = self.kin.fk_jacobian(q)
        p, J = p[:self.dim], J[:self.dim]
        v = self.velocity(p, goal, obstacle, mode)
        post = self.posture * (self.q_rest - q)
        dq = self._dls(J, v, post)
        # joints pushing into a limit are frozen and the others take over (one re-solve)
        blocked = ((q + dq > self.hi) & (dq > 0)) | ((q + dq < self.lo) & (dq < 0))
        if blocked.any() and not blocked.all():
            free = ~blocked
            dq = np.zeros(self.n)
            dq[free] = self._dls(J[:, free], v, post[free])
        scale = float(np.max(np.abs(dq) / self.max_step))
        if scale > 1.0:
            dq /= scale
        return np.minimum(np.maximum(q + dq, self.lo), self.hi), p

    def _dls(self, J: np.ndarray, v: np.ndarray, post: np.ndarray) -> np.ndarray:
        """Damped least squares for v plus `post` projected onto the null space of J."""
        A = J @ J.T
        A.flat[::self.dim + 1] += self.lam2
        Jp = J.T @ np.linalg.inv(A)
        return Jp @ (v - J @ post) + post

    def act(self, q: Sequence[float], qvel: Optional[Sequence[float]] = None, goal=(),
            obstacle=(), mode: int = -1) -> np.ndarray:
        """Next absolute joint target (robot joint order) at state (q, qvel, task).

        qvel is accepted for interface symmetry and unused: the servos settle within a tick,
        so the fields depend on q and the task state only.
        """
        q = np.asarray(q, dtype=float)
        return self._step(q, np.asarray(goal, dtype=float), np.asarray(obstacle, dtype=float), int(mode))[0]

    def act_task(self, q, qvel, task_state: Any) -> np.ndarray:
        """Same, reading goal/obstacle/mode from a TaskStateData or bc_msgs/TaskState."""
        return self.act(q, qvel, task_state.goal, task_state.obstacle, int(task_state.mode))

    def act_messages(self, messages: Mapping[str, Any], joint_topic: str = "/joint_states",
                     task_topic: str = "/task_state") -> np.ndarray:
        """Same, from the simulator's message dict (joint states reordered by name)."""
        js = messages[joint_topic]
        names = list(js.name)
        idx = [names.index(j) for j in self.kin.joint_names]
        q = np.asarray(js.position, dtype=float)[idx]
        return self.act_task(q, None, messages[task_topic])

    def plan(self, q, qvel=None, goal=(), obstacle=(), mode: int = -1, K: int = 20,
             waypoints: Optional[np.ndarray] = None, phase: int = 0,
             tolerance: float = 0.025) -> np.ndarray:
        """(K, n) chunk: the expert rolled forward kinematically (q_next = target).

        With `waypoints` (n_wp x dim) the active goal advances like the long-horizon task.
        """
        q = np.asarray(q, dtype=float).copy()
        goal = np.asarray(goal, dtype=float).copy()
        obstacle = np.asarray(obstacle, dtype=float)
        wps = None if waypoints is None else np.asarray(waypoints, dtype=float).reshape(-1, self.dim)
        out = np.empty((int(K), self.n))
        for k in range(int(K)):
            q, p = self._step(q, goal, obstacle, int(mode))
            out[k] = q
            if wps is not None and len(wps) and phase < len(wps) - 1 \
                    and np.linalg.norm(p - goal) < tolerance:
                phase += 1
                goal = wps[phase].copy()
        return out

    # ----------------------------------------------------------- obs decoding
    def _decoder(self, contract: Contract):
        entry = self._decoders.get(id(contract))
        if entry is not None and entry[0] is contract:
            return entry
        names = {t.name: t for t in contract.observation}
        sl = contract.slices()
        jt = names.get("joint_pos")
        if jt is None or "goal" not in names:
            raise ValueError(f"contract {contract.name!r} needs observation terms 'joint_pos' and 'goal'")
        order = list(jt.joints) if jt.joints else list(self.kin.joint_names)
        missing = [j for j in self.kin.joint_names if j not in order]
        if missing:
            raise ValueError(f"contract {contract.name!r} joint_pos lacks robot joints {missing}")
        q_idx = np.array([sl["joint_pos"].start + order.index(j) for j in self.kin.joint_names])
        out_idx = np.array([list(self.kin.joint_names).index(j) for j in contract.action.joints])
        obst = sl.get("obstacle")
        entry = (contract, q_idx, out_idx, sl["goal"], obst)
        self._decoders[id(contract)] = entry
        return entry

    def reads(self, contract: Contract) -> bool:
        """Whether observations of `contract` hold what the expert needs (joint positions, goal)."""
        try:
            self._decoder(contract)
        except ValueError:
            return False
        return True

    def act_obs(self, obs: Sequence[float], contract: Contract, mode: int = -1) -> np.ndarray:
        """Expert label for an observation vector (contract order in, action order out)."""
        _, q_idx, out_idx, g_sl, o_sl = self._decoder(contract)
        obs = np.asarray(obs, dtype=float)
        obstacle = obs[o_sl] if o_sl is not None else ()
        return self.act(obs[q_idx], None, obs[g_sl], obstacle, mode)[out_idx]

    def plan_obs(self, obs: Sequence[float], contract: Contract, K: Optional[int] = None,
                 mode: int = -1) -> np.ndarray:
        """(K, act_dim) chunk label for an observation vector (K defaults to chunk_length)."""
        _, q_idx, out_idx, g_sl, o_sl = self._decoder(contract)
        obs = np.asarray(obs, dtype=float)
        obstacle = obs[o_sl] if o_sl is not None else ()
        K = contract.chunk_length if K is None else K
        return self.plan(obs[q_idx], None, obs[g_sl], obstacle, mode, K)[:, out_idx]


class CurvedReachExpert(ScriptedExpert):
    """Swings around the base axis along an outward-bulged arc to the goal."""

    task = "curved_reach"
    bulge = 0.35            # extra radius per metre of remaining arc length

    def velocity(self, p, goal, obstacle, mode):
        bx, by = self.base
        rx, ry = p[0] - bx, p[1] - by
        gx, gy = goal[0] - bx, goal[1] - by
        r, rg = math.hypot(rx, ry), math.hypot(gx, gy)
        th = math.atan2(ry, rx)
        # no wrap-around: the arm swings through the front, never behind its base
        et = 0.5 * (r + rg) * (math.atan2(gy, gx) - th)
        er = min(rg - r + self.bulge * abs(et), self.r_cap - r)
        ez = goal[2] - p[2] if self.dim == 3 else 0.0
        e = math.sqrt(er * er + et * et + ez * ez)
        if e < 1e-9:
            return np.zeros(self.dim)
        s = min(self.vmax, self.gain * e) / e
        c, sn = math.cos(th), math.sin(th)
        v = [s * (er * c - et * sn), s * (er * sn + et * c)]
        if self.dim == 3:
            v.append(s * ez)
        return np.array(v)


class LongHorizonExpert(CurvedReachExpert):
    """Curved-reach field toward the active waypoint (`goal`)."""

    task = "long_horizon"
    default_speed = 0.25    # m/s
    bulge = 0.25


class BimodalExpert(ScriptedExpert):
    """Goes around the obstacle on side s (see module docstring for how s is chosen)."""

    task = "bimodal"
    default_speed = 0.3     # m/s
    lateral_gain = 0.15     # 1/tick
    hysteresis = 0.04       # m, |lateral offset| beyond which the current side is kept

    def side(self, b: float, mode: int) -> float:
        if abs(b) >= self.hysteresis:
            return 1.0 if b > 0 else -1.0
        if mode in (0, 1):
            return 1.0 if mode == 0 else -1.0
        return -1.0 if b < 0 else 1.0

    def velocity(self, p, goal, obstacle, mode):
        if len(obstacle) < 3:
            raise ValueError("bimodal expert needs the obstacle [x, y, radius]")
        ox, oy, rho = float(obstacle[0]), float(obstacle[1]), float(obstacle[-1])
        dx, dy = goal[0] - ox, goal[1] - oy
        ag = math.hypot(dx, dy)
        if ag < 1e-6:
            return np.zeros(self.dim)
        ux, uy = dx / ag, dy / ag
        nx, ny = -uy, ux
        px, py = p[0] - ox, p[1] - oy
        a, b = px * ux + py * uy, px * nx + py * ny
        s = self.side(b, mode) if a < ag else 0.0
        w = rho + TOOL_CLEARANCE
        a1 = min(rho + 0.015, 0.5 * ag)
        span = ag - a1
        phi, dphi = 0.0, 0.0
        if abs(a) <= a1:
            phi = 1.0
        elif a1 < abs(a) < ag:
            x = math.pi * (abs(a) - a1) / span
            phi = 0.5 * (1.0 + math.cos(x))
            dphi = -0.5 * math.sin(x) * math.pi / span * (1.0 if a > 0 else -1.0)
        b_ref = s * w * phi
        va = max(-self.vmax, min(self.vmax, self.gain * (ag - a)))
        err = b_ref - b
        if va > 0 and -ag < a < a1:      # hold forward progress until back on the reference
            va *= max(0.0, 1.0 - abs(err) / (0.5 * w))
        vb = self.lateral_gain * err + s * w * dphi * va
        vx, vy = va * ux + vb * nx, va * uy + vb * ny
        vn = math.hypot(vx, vy)
        cap = 1.6 * self.vmax
        if vn > cap:
            vx, vy = vx * cap / vn, vy * cap / vn
        dist = math.hypot(px, py)        # remove motion into the obstacle when close to it
        clearance = dist - rho
        if clearance < 0.045 and dist > 1e-9:
            rx, ry = px / dist, py / dist
            inward = vx * rx + vy * ry
            if inward < 0:
                f = min(1.0, (0.045 - clearance) / 0.03)
                vx, vy = vx - f * inward * rx, vy - f * inward * ry
        v = [vx, vy]
        if self.dim == 3:
            v.append(max(-self.vmax, min(self.vmax, self.gain * (goal[2] - p[2]))))
        return np.array(v)


EXPERTS = {e.task: e for e in (CurvedReachExpert, BimodalExpert, LongHorizonExpert)}


def make_expert(task: str, kin: ArmSim, max_step=0.05, speed: Optional[float] = None,
                control_rate_hz: float = 50.0) -> ScriptedExpert:
    """The scripted expert of `task` for the robot whose kinematics `kin` holds."""
    try:
        cls = EXPERTS[task]
    except KeyError:
        raise ValueError(f"no scripted expert for task {task!r} (have: {sorted(EXPERTS)})") from None
    return cls(kin, max_step=max_step, speed=speed, control_rate_hz=control_rate_hz)
