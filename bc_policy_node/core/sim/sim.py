"""Robot-agnostic MuJoCo arm wrapper (numpy + mujoco only).

`ArmSim` loads an MJCF and discovers the robot from it: every hinge/slide joint driven by a
position actuator (affine-bias servo) is a robot joint, in model order; joint limits and
control ranges come from the model. It exposes what the bridge, the tasks and the scripted
experts need: reset, position commands, physics steps with divergence detection, end-effector
position/Jacobian, forward kinematics at an arbitrary configuration (on a private MjData, so
the live simulation is never touched), a small IK solver, and robot-vs-obstacle contacts.

Scene conventions (see models/common/task_objects.xml): a site named `ee`, mocap bodies
`goal` and `obstacle` (the latter with one cylinder geom). Optional: a keyframe `home`
(rest posture) and a custom numeric `workspace_r` (r_min r_max, m) / `workspace_z`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import mujoco
import numpy as np

PARKED_OBSTACLE = np.array([5.0, 5.0, -1.0])  # far away and below the floor


class SimError(RuntimeError):
    """The MJCF is missing/invalid, or the model does not fit the conventions above."""


class SimDiverged(SimError):
    """Physics became non-finite or absurd; `reason` says what. `ArmSim.reset()` recovers."""

    def __init__(self, reason: str):
        super().__init__(f"simulation diverged: {reason} (call reset() to recover)")
        self.reason = reason


class ArmSim:
    """One MuJoCo arm scene: physics state, kinematics and collision queries.

    Args:
        mjcf_path: MJCF file of the scene.
        ee_site: name of the end-effector site.
        max_abs_qvel: joint speed (rad/s or m/s) above which the physics is declared diverged.
    """

    def __init__(self, mjcf_path, ee_site: str = "ee", obstacle_body: str = "obstacle",
                 goal_body: str = "goal", max_abs_qvel: float = 100.0):
        self.path = Path(mjcf_path)
        if not self.path.is_file():
            raise SimError(f"MJCF file not found: {self.path}")
        try:
            self.model = mujoco.MjModel.from_xml_path(str(self.path))
        except Exception as e:  # mujoco raises ValueError with the parser message
            raise SimError(f"cannot load MJCF {self.path}: {e}") from None
        m = self.model
        # Divergence must be visible (NaN stays NaN) instead of MuJoCo silently resetting.
        m.opt.disableflags |= int(mujoco.mjtDisableBit.mjDSBL_AUTORESET)
        self.data = mujoco.MjData(m)
        self._kin = mujoco.MjData(m)          # private data for FK at arbitrary q
        self.max_abs_qvel = float(max_abs_qvel)
        self._discover_joints()
        self.ee_site_id = self._require(mujoco.mjtObj.mjOBJ_SITE, ee_site, "end-effector site")
        self.ee_body_id = int(m.site_bodyid[self.ee_site_id])
        self._goal_mocap = self._mocap_id(goal_body)
        self._obstacle_mocap = self._mocap_id(obstacle_body)
        self.obstacle_geoms = self._body_geoms(obstacle_body)
        robot_bodies = self._robot_bodies()
        self.robot_geoms = np.array([g for g in range(m.ngeom) if m.geom_bodyid[g] in robot_bodies])
        self._robot_geom_set = set(self.robot_geoms.tolist())
        self._obstacle_geom_set = set(self.obstacle_geoms.tolist())
        self.home_q = self._home()
        self.base_position = self._kin_base()
        self.planar = self._is_planar()
        self.task_dim = 2 if self.planar else 3
        self.workspace_r = self._custom("workspace_r", (0.3, 0.6))
        self.workspace_z = self._custom("workspace_z", (0.15, 0.45))
        self._jac = np.zeros((3, m.nv))
        self.diverged = False
        self.divergence_reason = ""
        self.last_contacts: List[Tuple[str, str]] = []
        self.reset()

    # ------------------------------------------------------------------ discovery
    def _require(self, objtype, name: str, what: str) -> int:
        i = mujoco.mj_name2id(self.model, objtype, name)
        if i < 0:
            raise SimError(f"{self.path}: no {what} named {name!r}")
        return int(i)

    def _discover_joints(self) -> None:
        m = self.model
        servo_of = {}
        for a in range(m.nu):
            if int(m.actuator_trntype[a]) != int(mujoco.mjtTrn.mjTRN_JOINT):
                continue
            is_servo = (int(m.actuator_biastype[a]) == int(mujoco.mjtBias.mjBIAS_AFFINE)
                        and m.actuator_biasprm[a, 1] < 0
                        and abs(m.actuator_gainprm[a, 0] + m.actuator_biasprm[a, 1]) < 1e-9)
            if is_servo:
                servo_of[int(m.actuator_trnid[a, 0])] = a
        kinds = (int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE))
        joints = [j for j in range(m.njnt) if int(m.jnt_type[j]) in kinds and j in servo_of]
        if not joints:
            raise SimError(f"{self.path}: no hinge/slide joint driven by a position actuator")
        self.joint_ids = np.array(joints)
        self.joint_names: Tuple[str, ...] = tuple(m.joint(j).name for j in joints)
        self.n = len(joints)
        self.qadr = np.array([m.jnt_qposadr[j] for j in joints])
        self.vadr = np.array([m.jnt_dofadr[j] for j in joints])
        self.act_ids = np.array([servo_of[j] for j in joints])
        lo, hi = [], []
        for j, a in zip(joints, self.act_ids):
            if m.jnt_limited[j]:
                bounds = m.jnt_range[j]
            elif m.actuator_ctrllimited[a]:
                bounds = m.actuator_ctrlrange[a]
            else:
                bounds = (-np.inf, np.inf)
            lo.append(bounds[0])
            hi.append(bounds[1])
        self.lower, self.upper = np.array(lo), np.array(hi)
        self.ctrl_lower = np.array([m.actuator_ctrlrange[a, 0] if m.actuator_ctrllimited[a] else -np.inf
                                    for a in self.act_ids])
        self.ctrl_upper = np.array([m.actuator_ctrlrange[a, 1] if m.actuator_ctrllimited[a] else np.inf
                                    for a in self.act_ids])

    def _mocap_id(self, body: str) -> Optional[int]:
        b = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, body)
        if b < 0:
            return None
        mid = int(self.model.body_mocapid[b])
        if mid < 0:
            raise SimError(f"{self.path}: body {body!r} must be a mocap body")
        return mid

    def _body_geoms(self, body: str) -> np.ndarray:
        b = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, body)
        if b < 0:
            return np.zeros(0, dtype=int)
        return np.array([g for g in range(self.model.ngeom) if self.model.geom_bodyid[g] == b])

    def _robot_bodies(self) -> set:
        m = self.model
        roots = {int(m.jnt_bodyid[j]) for j in self.joint_ids}
        out = set()
        for b in range(1, m.nbody):
            a = b
            while a > 0:
                if a in roots:
                    out.add(b)
                    break
                a = int(m.body_parentid[a])
        return out

    def _home(self) -> np.ndarray:
        k = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_KEY, "home")
        q = self.model.key_qpos[k] if k >= 0 else self.model.qpos0
        return np.clip(np.array(q)[self.qadr], self.lower, self.upper)

    def _custom(self, name: str, default: Sequence[float]) -> Tuple[float, ...]:
        i = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_NUMERIC, name)
        if i < 0:
            return tuple(default)
        adr, size = self.model.numeric_adr[i], self.model.numeric_size[i]
        return tuple(float(x) for x in self.model.numeric_data[adr:adr + size])

    def _kin_base(self) -> np.ndarray:
        self._fk_into(self._kin, self.home_q)
        return self._kin.xanchor[self.joint_ids[0]].copy()

    def _is_planar(self) -> bool:
        """All robot joints are hinges whose world axes are vertical at home."""
        m = self.model
        if any(int(m.jnt_type[j]) != int(mujoco.mjtJoint.mjJNT_HINGE) for j in self.joint_ids):
            return False
        axes = self._kin.xaxis[self.joint_ids]
        return bool(np.all(np.abs(axes[:, 2]) > 1 - 1e-9))

    # ---------------------------------------------------------------- state/control
    def reset(self, qpos: Optional[Sequence[float]] = None) -> None:
        """Reset physics (time 0, zero velocity) to `qpos` (robot joints; default home)."""
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        q = self.home_q if qpos is None else np.asarray(qpos, dtype=float)
        if q.shape != (self.n,) or not np.all(np.isfinite(q)):
            raise ValueError(f"reset qpos must be {self.n} finite values, got {q!r}")
        d.qpos[self.qadr] = q
        d.ctrl[self.act_ids] = np.clip(q, self.ctrl_lower, self.ctrl_upper)
        mujoco.mj_forward(m, d)
        self.diverged = False
        self.divergence_reason = ""
        self.last_contacts = []

    def set_state(self, qpos: Sequence[float], qvel: Optional[Sequence[float]] = None) -> None:
        """Teleport the robot joints (time, commands and task objects are kept)."""
        q = np.asarray(qpos, dtype=float)
        v = np.zeros(self.n) if qvel is None else np.asarray(qvel, dtype=float)
        if q.shape != (self.n,) or v.shape != (self.n,) or not np.all(np.isfinite(np.r_[q, v])):
            raise ValueError(f"state must be {self.n} finite positions/velocities")
        self.data.qpos[self.qadr] = q
        self.data.qvel[self.vadr] = v
        mujoco.mj_forward(self.model, self.data)

    def set_command(self, targets: Sequence[float]) -> np.ndarray:
        """Position targets for the robot joints (clipped to ctrlrange); returns what was applied."""
        t = np.asarray(targets, dtype=float)
        if t.shape != (self.n,):
            raise ValueError(f"command must have {self.n} values ({list(self.joint_names)}), "
                             f"got shape {t.shape}")
        if not np.all(np.isfinite(t)):
            raise ValueError(f"command contains NaN/inf: {t}")
        t = np.clip(t, self.ctrl_lower, self.ctrl_upper)
        self.data.ctrl[self.act_ids] = t
        return t

    def step(self, n: int = 1) -> None:
        """Advance `n` physics steps; records robot-obstacle contacts; raises SimDiverged."""
        if self.diverged:
            raise SimDiverged(self.divergence_reason)
        m, d = self.model, self.data
        contacts = []
        check = len(self._obstacle_geom_set) > 0
        warn = d.warning[int(mujoco.mjtWarning.mjWARN_BADQACC)]
        for _ in range(int(n)):
            mujoco.mj_step(m, d)
            if check and d.ncon:
                contacts.extend(self._obstacle_contacts())
            if warn.number:          # stop at the first unstable step (no NaN cascade)
                break
        self.last_contacts = contacts
        reason = self._divergence()
        if reason:
            self.diverged, self.divergence_reason = True, reason
            raise SimDiverged(reason)

    def _divergence(self) -> str:
        d = self.data
        for w, what in ((mujoco.mjtWarning.mjWARN_BADQPOS, "positions"),
                        (mujoco.mjtWarning.mjWARN_BADQVEL, "velocities"),
                        (mujoco.mjtWarning.mjWARN_BADQACC, "accelerations")):
            if d.warning[int(w)].number > 0:
                return f"MuJoCo reported unstable {what} at t={d.time:.3f}s"
        if not (np.all(np.isfinite(d.qpos)) and np.all(np.isfinite(d.qvel))):
            return f"non-finite joint state at t={d.time:.3f}s"
        v = float(np.max(np.abs(d.qvel))) if d.qvel.size else 0.0
        if v > self.max_abs_qvel:
            return f"joint speed {v:.3g} exceeds {self.max_abs_qvel:g} at t={d.time:.3f}s"
        return ""

    @property
    def qpos(self) -> np.ndarray:
        return self.data.qpos[self.qadr].copy()

    @property
    def qvel(self) -> np.ndarray:
        return self.data.qvel[self.vadr].copy()

    @property
    def effort(self) -> np.ndarray:
        return self.data.actuator_force[self.act_ids].copy()

    @property
    def time(self) -> float:
        return float(self.data.time)

    @property
    def timestep(self) -> float:
        return float(self.model.opt.timestep)

    # ------------------------------------------------------------------ kinematics
    def ee_position(self) -> np.ndarray:
        return self.data.site_xpos[self.ee_site_id].copy()

    def ee_jacobian(self) -> np.ndarray:
        """(3, n) translational Jacobian of the ee site w.r.t. the robot joints (live state)."""
        mujoco.mj_jacSite(self.model, self.data, self._jac, None, self.ee_site_id)
        return self._jac[:, self.vadr].copy()

    def _fk_into(self, d, q) -> None:
        d.qpos[self.qadr] = q
        mujoco.mj_kinematics(self.model, d)

    def fk(self, q: Sequence[float]) -> np.ndarray:
        """ee position (3,) at configuration q, without touching the live simulation."""
        self._fk_into(self._kin, q)
        return self._kin.site_xpos[self.ee_site_id].copy()

    def fk_jacobian(self, q: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
        """(ee position (3,), Jacobian (3, n)) at configuration q (private MjData)."""
        d = self._kin
        self._fk_into(d, q)
        mujoco.mj_comPos(self.model, d)
        mujoco.mj_jacSite(self.model, d, self._jac, None, self.ee_site_id)
        return d.site_xpos[self.ee_site_id].copy(), self._jac[:, self.vadr].copy()

    def solve_ik(self, target: Sequence[float], q0: Optional[Sequence[float]] = None,
                 iters: int = 200, tol: float = 1e-4, posture_gain: float = 0.05
                 ) -> Tuple[np.ndarray, float]:
        """Damped least squares IK for the ee position (task dims only for planar arms).

        Returns (q, residual distance). The redundant directions are pulled toward `home_q`.
        """
        dim = self.task_dim
        target = np.asarray(target, dtype=float)[:dim]
        q = (self.home_q if q0 is None else np.asarray(q0, dtype=float)).copy()
        lo, hi = self.lower + 1e-3, self.upper - 1e-3
        err = np.inf
        for _ in range(iters):
            p, J = self.fk_jacobian(q)
            e = target - p[:dim]
            err = float(np.linalg.norm(e))
            if err < tol:
                break
            J = J[:dim]
            e = e * min(1.0, 0.1 / max(err, 1e-12))        # at most 10 cm per iteration
            A = J @ J.T + 1e-4 * np.eye(dim)
            Jpinv = J.T @ np.linalg.inv(A)
            dq = Jpinv @ e + posture_gain * (np.eye(self.n) - Jpinv @ J) @ (self.home_q - q)
            q = np.clip(q + dq, lo, hi)
        return q, err

    # --------------------------------------------------------------- task objects
    def set_goal_marker(self, pos: Sequence[float]) -> None:
        if self._goal_mocap is not None:
            p = self._task_to_world(pos)
            self.data.mocap_pos[self._goal_mocap] = p

    def set_obstacle(self, pos: Optional[Sequence[float]], radius: float = 0.05) -> None:
        """Place the obstacle post (task-space centre, radius in m); pos=None parks it away."""
        if self._obstacle_mocap is None:
            if pos is not None:
                raise SimError(f"{self.path}: the scene has no mocap body 'obstacle'")
            return
        m = self.model
        if pos is None:
            self.data.mocap_pos[self._obstacle_mocap] = PARKED_OBSTACLE
        else:
            for g in self.obstacle_geoms:
                half_h = float(m.geom_size[g, 1])
                m.geom_size[g, 0] = radius
                m.geom_rbound[g] = math.hypot(radius, half_h)
                m.geom_aabb[g, 3:5] = radius
            p = np.array(pos, dtype=float)
            if p.shape[0] == 2:   # planar task: the post stands on the table (z = 0)
                h = float(m.geom_size[self.obstacle_geoms[0], 1]) if len(self.obstacle_geoms) else 0.0
                p = np.array([p[0], p[1], h])
            self.data.mocap_pos[self._obstacle_mocap] = p
        mujoco.mj_forward(m, self.data)

    def _task_to_world(self, pos) -> np.ndarray:
        p = np.asarray(pos, dtype=float)
        if p.shape[0] == 2:
            return np.array([p[0], p[1], self.ee_position()[2]])
        return p

    def _obstacle_contacts(self) -> List[Tuple[str, str]]:
        d, m = self.data, self.model
        out = []
        for i in range(d.ncon):
            c = d.contact[i]
            g1, g2 = int(c.geom1), int(c.geom2)
            if ((g1 in self._robot_geom_set and g2 in self._obstacle_geom_set)
                    or (g2 in self._robot_geom_set and g1 in self._obstacle_geom_set)):
                out.append((m.geom(g1).name, m.geom(g2).name))
        return out

    def obstacle_contacts(self) -> List[Tuple[str, str]]:
        """Robot-obstacle geom pairs in contact right now (names)."""
        return self._obstacle_contacts()

    def in_collision(self) -> bool:
        """True if the robot touched the obstacle during the last step() or touches it now."""
        return bool(self.last_contacts) or bool(self._obstacle_contacts())
