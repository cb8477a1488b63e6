"""In-process simulated environment: ArmSim + Task at the control rate (numpy + mujoco only).

`SimEnv.reset()` / `step()` return the messages the ROS bridge would publish, as
`core.types` data keyed by the bridge's default topic names, so the same
`ObservationAssembler` turns them into observation vectors everywhere::

    env = SimEnv("planar3", "bimodal")
    msgs = env.reset(seed=3)
    while not env.done:
        msgs = env.step(expert.act_messages(msgs))
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..contract import Contract
from .disturbance import Pushes
from .experts import ScriptedExpert, make_expert
from .sim import ArmSim, SimDiverged, SimError
from .tasks import Task, make_task
from ..types import STATUS_DIVERGED, CompressedImageData, ImageData, JointStateData, TaskStateData

JOINT_STATES_TOPIC = "/joint_states"
TASK_STATE_TOPIC = "/task_state"
COMMAND_TOPIC = "/forward_position_controller/commands"


def _share_root() -> Path:
    """The source checkout when run from one, else the installed share/bc_policy_node."""
    src = Path(__file__).resolve().parents[3]
    if (src / "models" / "planar3.xml").is_file():
        return src
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory("bc_policy_node"))
    except Exception:  # not installed with ament either: report paths under the source root
        return src


PACKAGE_ROOT = _share_root()
MODELS_DIR = PACKAGE_ROOT / "models"
CONTRACTS_DIR = PACKAGE_ROOT / "config" / "contracts"
ROBOTS = {"planar3": MODELS_DIR / "planar3.xml", "arm7": MODELS_DIR / "arm7.xml"}


def robot_mjcf(robot: str) -> Path:
    """MJCF path of a shipped robot."""
    try:
        return ROBOTS[robot]
    except KeyError:
        raise SimError(f"unknown robot {robot!r} (shipped: {sorted(ROBOTS)}); pass mjcf=<path>") from None


def contract_path(robot: str, task: str) -> Path:
    return CONTRACTS_DIR / f"{robot}_{task}.yaml"


def load_contract(robot: str, task: str) -> Contract:
    """The shipped contract `config/contracts/<robot>_<task>.yaml`; for a Meta-World task
    (``metaworld/<name>``) the contract generated for it (`metaworld_task.metaworld_contract`)."""
    from .metaworld_task import ROBOT, is_metaworld, metaworld_contract

    if is_metaworld(task):
        if robot != ROBOT:
            raise ValueError(f"Meta-World tasks run on robot {ROBOT!r}, not {robot!r}")
        return metaworld_contract(task)
    return Contract.load(contract_path(robot, task))


def resolve_contract(value: str) -> Contract:
    """A node's `contract` parameter: a contract YAML path, or ``metaworld/<task>`` for the
    contract generated for a Meta-World task (it has no file)."""
    from .metaworld_task import is_metaworld, metaworld_contract

    if is_metaworld(value) and not Path(value).exists():
        return metaworld_contract(value)
    return Contract.load(value)


def make_env(robot: str, task: str, control_rate_hz: Optional[float] = None, disturbance=None,
             mjcf: Optional[str] = None, cameras: Sequence[Any] = ()):
    """The environment of robot/task: `SimEnv` for the package's own tasks, a
    `metaworld_task.MetaWorldSimEnv` (same interface) for ``metaworld/<name>``; `cameras` the
    contract's camera terms to render into every step's messages."""
    from .metaworld_task import MetaWorldSimEnv, is_metaworld

    if is_metaworld(task):
        if mjcf:
            raise ValueError("Meta-World tasks bring their own scene; mjcf is not used")
        if cameras:
            raise ValueError("cameras are rendered for the package's own scenes only (not yet Meta-World's)")
        return MetaWorldSimEnv(robot, task, control_rate_hz=control_rate_hz, disturbance=disturbance)
    env = SimEnv(robot, task, mjcf=mjcf, control_rate_hz=50.0 if control_rate_hz is None else control_rate_hz,
                 disturbance=disturbance)
    env.set_cameras(cameras)
    return env


class SimCameras:
    """The contract's camera terms rendered from an `ArmSim` as the bridge publishes them: a
    term on ``/camera/<name>/image_raw`` gets an rgb8 `ImageData`, one on ``.../compressed`` a
    JPEG `CompressedImageData` of the same quality (the same encoder as the bridge), stamped
    with the sim time. One render per camera per call, shared by its raw and JPEG terms."""

    def __init__(self, sim: ArmSim, terms: Sequence[Any], jpeg_quality: int = 90):
        from .camera import CameraRenderer, camera_of_topic

        self._terms = []
        self._renderers: Dict[str, Any] = {}
        self.quality = int(jpeg_quality)
        try:
            for t in terms:
                try:
                    name, compressed = camera_of_topic(t.topic)
                except ValueError as e:
                    raise SimError(f"camera term {t.name!r}: {e}; in simulation a camera term reads the "
                                   f"bridge's topic of an MJCF camera") from None
                if name not in self._renderers:
                    self._renderers[name] = CameraRenderer(sim.model, name, t.width, t.height, source=str(sim.path))
                r = self._renderers[name]
                if (r.width, r.height) != (t.width, t.height):
                    raise SimError(f"camera {name!r} is used at {r.width}x{r.height} and {t.width}x{t.height}")
                self._terms.append((t.topic, name, compressed))
        except Exception:
            self.close()
            raise

    def frames(self, sim: ArmSim) -> Dict[str, Any]:
        from .camera import encode_jpeg

        rgb = {n: r.capture(sim.data) for n, r in self._renderers.items()}
        out: Dict[str, Any] = {}
        for topic, name, compressed in self._terms:
            img = rgb[name]
            if compressed:
                out[topic] = CompressedImageData(sim.time, "jpeg", encode_jpeg(img, self.quality))
            else:
                h, w = img.shape[:2]
                out[topic] = ImageData(sim.time, h, w, "rgb8", 3 * w, img.tobytes())
        return out

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers = {}


def contract_max_step(robot: str, task: str, joint_names, default: float = 0.05):
    """Per-joint step bound (rad/tick, `joint_names` order) of the shipped contract of
    robot/task; `default` when there is none or its joints are not the robot's."""
    if contract_path(robot, task).is_file():
        c = load_contract(robot, task)
        if set(c.action.joints) == set(joint_names):
            step = dict(zip(c.action.joints, c.action.max_step))
            return np.array([step[j] for j in joint_names])
    return default


class SimEnv:
    """Simulated robot + task stepped at the control rate.

    Args:
        robot: name of a shipped robot (`planar3`, `arm7`), used for the default MJCF and the
            contract name.
        task: `curved_reach`, `bimodal` or `long_horizon`.
        mjcf: MJCF path overriding the shipped model.
        control_rate_hz: control rate; physics substeps = round(1 / (rate * timestep)). Task
            horizons keep their duration in seconds (ticks are given at 50 Hz).
        disturbance: `core.sim.disturbance.Pushes` (or its dict) knocking the arm off its path at
            seeded ticks; None = calm.

    `step()` after the episode is done is a no-op returning the final messages (the bridge
    keeps receiving commands between episodes); `step()` before `reset()` raises.
    """

    def __init__(self, robot: str = "planar3", task: str = "curved_reach",
                 mjcf: Optional[str] = None, control_rate_hz: float = 50.0,
                 disturbance: Optional[Pushes] = None):
        self.robot = robot
        self.disturbance = Pushes.from_spec(disturbance)
        self._pushes: Dict[int, np.ndarray] = {}
        self.pushes_applied: List[int] = []   # ticks pushed in the current episode
        self.sim = ArmSim(mjcf if mjcf is not None else robot_mjcf(robot))
        self.task_name = task
        self.control_rate_hz = float(control_rate_hz)
        if not self.control_rate_hz > 0:
            raise ValueError(f"control_rate_hz must be > 0, got {control_rate_hz}")
        self.substeps = max(1, int(round(1.0 / (self.control_rate_hz * self.sim.timestep))))
        self.task: Task = make_task(task, self.sim)
        self._default_horizon = self._scaled_horizon()
        self._episode_id = 0
        self._step = 0
        self._started = False
        self._diverged_reason = ""
        self._last_command = self.sim.home_q.copy()
        self._phase = 0                   # advance(): physics substeps since the last boundary
        self._period_contacts: list = []  # advance(): obstacle contacts of the current period
        self._cameras: Optional[SimCameras] = None

    # ------------------------------------------------------------------ properties
    @property
    def joint_names(self) -> Tuple[str, ...]:
        return self.sim.joint_names

    @property
    def done(self) -> bool:
        return self._started and self.task.done

    @property
    def episode_id(self) -> int:
        return self._episode_id

    @property
    def step_count(self) -> int:
        return self._step

    @property
    def horizon(self) -> int:
        """Control ticks of the current episode (the default one before the first reset)."""
        return self.task.horizon if self._started else self._default_horizon

    @property
    def last_command(self) -> np.ndarray:
        return self._last_command.copy()

    @property
    def task_state(self) -> TaskStateData:
        t = self.task
        return TaskStateData(
            stamp=self.sim.time, task=t.name, episode_id=self._episode_id, seed=t.seed,
            variant=t.variant, goal=t.goal.copy(), obstacle=t.obstacle.copy(),
            waypoints=t.waypoints.reshape(-1).copy(), phase=int(t.phase),
            num_phases=int(t.num_phases), mode=int(t.mode), step=self._step, status=t.status,
            success=t.status == "success", done=t.done, reason=t.reason,
            ee_position=self.sim.ee_position()[:t.dim])

    @property
    def joint_state(self) -> JointStateData:
        s = self.sim
        return JointStateData(stamp=s.time, name=list(s.joint_names), position=s.qpos,
                              velocity=s.qvel, effort=s.effort)

    def messages(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {JOINT_STATES_TOPIC: self.joint_state, TASK_STATE_TOPIC: self.task_state}
        if self._cameras:
            out.update(self._cameras.frames(self.sim))
        return out

    def set_cameras(self, terms: Sequence[Any], jpeg_quality: int = 90) -> None:
        """Render the contract's camera terms (`core.contract.ImageTerm`) into every `messages()`,
        as the bridge publishes them at every tick (`SimCameras`); () stops rendering."""
        if self._cameras is not None:
            self._cameras.close()
        self._cameras = SimCameras(self.sim, terms, jpeg_quality) if terms else None

    def robot_contract_limits(self) -> Tuple[np.ndarray, np.ndarray]:
        """(lower, upper) joint limits from the MJCF, in `joint_names` order."""
        return self.sim.lower.copy(), self.sim.upper.copy()

    def make_expert(self, max_step=None, speed: Optional[float] = None,
                    own_kinematics: bool = True) -> ScriptedExpert:
        """The task's scripted expert; by default on its own ArmSim (thread-safe w.r.t. env).

        max_step defaults to the shipped contract's (0.05 rad/tick if there is none).
        """
        kin = ArmSim(self.sim.path) if own_kinematics else self.sim
        if max_step is None:
            max_step = contract_max_step(self.robot, self.task_name, kin.joint_names)
        return make_expert(self.task_name, kin, max_step=max_step, speed=speed,
                           control_rate_hz=self.control_rate_hz)

    # ---------------------------------------------------------------- episode
    def _scaled_horizon(self) -> int:
        """Task horizons are written in ticks at 50 Hz; keep the same duration at other rates."""
        return int(round(self.task.horizon * self.control_rate_hz / 50.0))

    def set_task(self, task: str, variant: str = "") -> None:
        """Switch to another task (takes effect at the next reset(); the robot is kept).

        Raises TaskError (unknown task/variant, or a task the robot cannot do) and leaves
        the environment unchanged then.
        """
        new = make_task(task, self.sim, variant)
        self.task, self.task_name = new, task
        self._default_horizon = self._scaled_horizon()
        self._started = False

    def reset(self, seed: int, variant: str = "", horizon: Optional[int] = None) -> Dict[str, Any]:
        """Start episode `seed` (deterministic) and return its first messages.

        horizon: override the task's horizon (control ticks) for this episode.
        """
        if variant != self.task.variant:
            self.task = make_task(self.task_name, self.sim, variant)
            self._default_horizon = self._scaled_horizon()
        self.task.horizon = self._default_horizon if horizon is None else int(horizon)
        q0 = self.task.reset(seed)
        self.sim.reset(q0)
        oc = self.task.obstacle_center()
        self.sim.set_obstacle(oc, float(self.task.obstacle[-1]) if oc is not None else 0.0)
        self.sim.set_goal_marker(self.task.goal)
        self._episode_id += 1
        self._step = 0
        self._started = True
        self._diverged_reason = ""
        self._last_command = q0.copy()
        self._phase = 0
        self._period_contacts = []
        self.pushes_applied = []
        self._pushes = ({} if self.disturbance is None else
                        self.disturbance.schedule(seed, self.task.horizon, self.sim.n))
        return self.messages()

    def set_joint_state(self, qpos, qvel=None) -> Dict[str, Any]:
        """Teleport the robot mid-episode (perturbation tests, DAgger-style probing)."""
        if not self._started:
            raise RuntimeError("SimEnv.set_joint_state() called before reset()")
        self.sim.set_state(qpos, qvel)
        return self.messages()

    def step(self, action) -> Dict[str, Any]:
        """Apply joint position targets (joint_names order), run one control tick."""
        if not self._started:
            raise RuntimeError("SimEnv.step() called before reset()")
        if self.task.done:
            return self.messages()
        self._last_command = self.sim.set_command(action)
        self._step += 1
        try:
            self.sim.step(self.substeps)
        except SimDiverged as e:
            self.task.status, self.task.reason = STATUS_DIVERGED, e.reason
            return self.messages()
        self.task.update(self.sim.ee_position(), bool(self.sim.last_contacts), self._step)
        self._push()
        return self.messages()

    def _push(self) -> None:
        """Apply the disturbance scheduled for the tick just completed: displace the joints and
        hold the displaced pose (the previous command is dropped)."""
        dq = self._pushes.get(self._step)
        if dq is None or self.task.done:
            return
        m = self.disturbance.margin
        q = np.clip(self.sim.qpos + dq, self.sim.lower + m, self.sim.upper - m)
        self.sim.set_state(q)
        self._last_command = self.sim.set_command(q)
        self.pushes_applied.append(self._step)

    # ------------------------------------------------------- free-running physics
    # step() is the lock-step primitive (command -> one control period). A free-running
    # simulator (the ROS bridge in `free` mode) instead holds the latest command and steps
    # physics at sub-control granularity so it can publish joint states between control
    # ticks: set_command() + advance(). The task is evaluated at control-period boundaries
    # only, so set_command(a) at a boundary followed by advance(substeps) is bit-identical
    # to step(a).
    @property
    def substep_phase(self) -> int:
        """Physics substeps run by advance() since the last control-period boundary."""
        return self._phase

    def set_command(self, action) -> np.ndarray:
        """Hold joint position targets (joint_names order) from the next physics substep on.

        Clipped to the actuators' ctrlrange; ValueError on wrong length or NaN/inf (nothing
        changes then). Returns the applied targets. Ignored (returns the held targets) once
        the episode is done, like step().
        """
        if not self._started:
            raise RuntimeError("SimEnv.set_command() called before reset()")
        if self.task.done:
            return self._last_command.copy()
        self._last_command = self.sim.set_command(action)
        return self._last_command.copy()

    def advance(self, n_substeps: int) -> int:
        """Run `n_substeps` physics substeps holding the current command (ZOH).

        At every control-period boundary crossed the tick counter advances and the task is
        evaluated (success / collision over the whole period / timeout), exactly as in
        step(). Returns the number of boundaries crossed. Once the episode is done the
        physics keeps running (the arm holds its last target; the task state is frozen),
        except after a divergence: then nothing runs until reset(). A divergence ends the
        episode with status `diverged` and returns at once.
        """
        if not self._started:
            raise RuntimeError("SimEnv.advance() called before reset()")
        n = int(n_substeps)
        if n < 0:
            raise ValueError(f"n_substeps must be >= 0, got {n_substeps}")
        ticks = 0
        while n > 0:
            if self.sim.diverged:
                return ticks
            k = min(n, self.substeps - self._phase)
            try:
                self.sim.step(k)
            except SimDiverged as e:
                if not self.task.done:
                    self._step += 1
                    self.task.status, self.task.reason = STATUS_DIVERGED, e.reason
                    ticks += 1
                self._phase, self._period_contacts = 0, []
                return ticks
            n -= k
            self._phase += k
            if self.sim.last_contacts:
                self._period_contacts.extend(self.sim.last_contacts)
            if self._phase < self.substeps:
                continue
            self._phase = 0
            contacts, self._period_contacts = self._period_contacts, []
            if self.task.done:
                continue
            self._step += 1
            ticks += 1
            self.sim.last_contacts = contacts
            self.task.update(self.sim.ee_position(), bool(contacts), self._step)
            self._push()
        return ticks

    def run_expert(self, seed: int, expert: Optional[ScriptedExpert] = None, variant: str = "",
                   record: bool = False):
        """Roll the expert for one episode; returns (final TaskStateData, trajectory dict or None)."""
        expert = expert or self.make_expert()
        msgs = self.reset(seed, variant)
        traj = {"q": [], "ee": [], "act": []} if record else None
        while not self.done:
            ts = msgs[TASK_STATE_TOPIC]
            a = expert.act_task(self.sim.qpos, self.sim.qvel, ts)
            if traj is not None:
                traj["q"].append(self.sim.qpos)
                traj["ee"].append(ts.ee_position)
                traj["act"].append(a)
            msgs = self.step(a)
        if traj is None:
            return msgs[TASK_STATE_TOPIC], None
        arrays = {k: np.array(v) for k, v in traj.items()}
        arrays["ee"] = np.vstack([arrays["ee"], msgs[TASK_STATE_TOPIC].ee_position[None]])
        return msgs[TASK_STATE_TOPIC], arrays
