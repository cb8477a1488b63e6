"""`mujoco_bridge`: the embedded MuJoCo simulation as a ros2_control-style robot on the graph."""
from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Dict, List, Optional

import numpy as np
from builtin_interfaces.msg import Time
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, JointState
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory

from bc_msgs.msg import TaskState
from bc_msgs.srv import ResetEpisode, StepSim

from ..core.sim.bridge_params import (ACCEPTED, CLAMPED, COUNTERS, IGNORED, NODE_NAME, RATE_BURST_S,
                                       RATE_LIMITED, REJ_JOINT_SET, REJ_LENGTH, REJ_MALFORMED, REJ_NO_POINTS,
                                       REJ_NONFINITE, REJ_UNKNOWN_JOINT, SWITCH_INTERVAL_S, BridgeParams,
                                       PeriodStats, RateLimiter)
from ..core.sim.camera import CameraRenderer, CameraSpec, FrameSchedule, encode_jpeg, gl_submit, goal_world
from ..core.sim.env import JOINT_STATES_TOPIC, TASK_STATE_TOPIC, SimEnv, robot_mjcf
from ..core.control.safety import validate_command
from ..core.sim.metaworld_env import MetaWorldUnavailable
from ..core.sim.sim import SimError
from ..core.sim.tasks import TaskError
from ..core.types import STATUS_DIVERGED
from . import qos
from .conversions import (camera_info_msg, compressed_image_msg, image_msg, joint_state_msg, task_state_msg,
                          trajectory_first_point)
from .fastlane import FastLane
from .metaworld_backend import MetaWorldBackend, check_robot_task
from .common import ERROR, OK, WARN, Diagnostics, LateJoinerResend, ThrottledLog, run_node
from .params import declare_and_load



def _stamp(ns: int) -> Time:
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


class _Camera:
    """One published camera: renderer, sim-time schedule, the three publishers."""

    def __init__(self, node: Node, spec: CameraSpec, renderer: CameraRenderer, quality: int):
        self.spec, self.renderer, self.quality = spec, renderer, quality
        base = f"/camera/{spec.name}"
        self.frame_id = f"{spec.name}_camera"
        # reliable writers: best-effort readers (qos.CAMERA_QOS: the policy node in free-run,
        # viewers) and reliable ones (lock-step control, the recorder) both match
        q = qos.CAMERA_RELIABLE_QOS
        self.raw = node.create_publisher(Image, f"{base}/image_raw", q)
        self.jpeg = node.create_publisher(CompressedImage, f"{base}/image_raw/compressed", q)
        self.info = node.create_publisher(CameraInfo, f"{base}/camera_info", q)
        r = renderer
        self.info_msg = camera_info_msg(r.width, r.height, r.fx, r.fy, r.cx, r.cy, self.frame_id)
        self.schedule = FrameSchedule(spec.period_ns)
        self.pending: Optional[Future] = None      # free mode: the frame being rendered

    def render_and_publish(self, stamp: Time) -> float:
        """Render the scene taken by renderer.update(), publish raw, JPEG and camera_info with
        `stamp`; returns the render time (s)."""
        t0 = time.perf_counter()
        rgb = self.renderer.render()
        dt = time.perf_counter() - t0
        self.raw.publish(image_msg(rgb, stamp, self.frame_id))
        self.jpeg.publish(compressed_image_msg(encode_jpeg(rgb, self.quality), stamp, self.frame_id))
        self.info_msg.header.stamp = stamp
        self.info.publish(self.info_msg)
        return dt


class MujocoBridge(Node):
    """MuJoCo arm + task as a robot behind a ros2_control forward position controller.

    Robot-agnostic: the joints are the MJCF's position-servo-driven joints (model order, =
    controller order) and their limits come from the model (core/sim/sim.py).

    Publishes:
        ``/joint_states`` sensor_msgs/JointState (qos.STATE): position, velocity, effort.
        ``/task_state`` bc_msgs/TaskState (qos.STATE) at every control-period boundary.
        ``/clock`` rosgraph_msgs/Clock (qos.CLOCK), if publish_clock: lockstep with every pair,
        free at clock_rate_hz (sim time) and every control boundary; always the stamp of a
        /joint_states, published right after it.
        ``/camera/<name>/image_raw`` sensor_msgs/Image (rgb8), ``/camera/<name>/image_raw/compressed``
        sensor_msgs/CompressedImage (JPEG) and ``/camera/<name>/camera_info`` sensor_msgs/CameraInfo
        (pinhole K from the camera's fovy and the image size) for every entry of the `cameras`
        parameter (core/sim/camera.py), stamped with the /joint_states stamp of the state they
        show. Lock-step: the frame of a tick is rendered synchronously and published after that
        tick's /joint_states and before its /task_state (and /clock). Free mode: at the camera
        rate in sim time (rate 0: every control boundary), scene taken under the sim lock,
        rendered and published on the GL thread; a frame due while the previous one of that
        camera is still rendering is dropped (camera_frames_dropped on /diagnostics).
        ``/diagnostics`` diagnostic_msgs/DiagnosticArray at diagnostics_rate_hz: command
        counters (below), divergences, ticks, achieved real-time factor, /joint_states rate and
        p99 publish-period error (free mode), lock-step ticks/s.
    Subscribes (qos.COMMAND):
        ``/<controller>/commands`` std_msgs/Float64MultiArray: joint position targets (rad),
        one per joint in the order of /joint_states.name.
        ``/<controller>/joint_trajectory`` trajectory_msgs/JointTrajectory: the FIRST point's
        positions are the target (reordered by joint_names; other points are ignored).
    Services:
        ``~/reset`` bc_msgs/ResetEpisode: seed, task ('' = keep), variant ('' = default) ->
        episode_id + the episode's first TaskState (also published with /joint_states).
        ``~/step`` bc_msgs/StepSim (lockstep only): advance `ticks` control periods holding
        the last target, then publish one pair; ticks = 0 re-publishes the current pair (for
        a controller that joined late).
    Parameters: see `BridgeParams` (robot, mjcf, task, variant, seed, mode, real_time_factor,
        control_rate_hz, joint_state_rate_hz, controller, publish_clock, clock_rate_hz, auto_reset,
        max_command_rate_hz, diagnostics_rate_hz, push_magnitude, push_interval_ticks, push_count,
        cameras, camera_jpeg_quality);
        defaults in config/mujoco_bridge.yaml.

    Stamps: header stamps are the bridge's sim clock (= /clock), in ns: the sim time of the
    episode plus an offset that makes every episode start one control period after the
    previous one ended. Stamps therefore never repeat, never go backwards and are never zero
    (a zero stamp means "unstamped" to many consumers).

    Modes:
        lockstep: the protocol of docs/design.md. After ~/reset the first /task_state +
            /joint_states pair (same stamp) is published; every received command - valid,
            clamped or rejected (then the last valid target is held) - advances exactly one
            control period and publishes the next pair; once /task_state.done, commands are
            ignored until the next reset. With auto_reset, the first pair of the start-up
            episode is published once both state topics have a subscriber.
        free: physics runs at real time x real_time_factor on a dedicated thread; the latest
            valid target is applied at the next physics step and held (ZOH); /joint_states
            every round(1 / (joint_state_rate_hz * timestep)) physics steps and at every
            control boundary, /task_state at every boundary (same stamp as a joint state).
            After the episode ends the physics keeps running (arm holding), the task state is
            frozen and commands are ignored until the next reset.

    Bad input (never crashes the bridge, never reaches the physics; counted on /diagnostics,
    logged throttled):

    ================================  ========================================  ======================
    input                             rule                                      counter
    ================================  ========================================  ======================
    rate > max_command_rate_hz        dropped before any check (token bucket,   rate_limited
                                      burst 0.1 s); lockstep: no tick
    no episode / episode done         ignored (lockstep: no tick)               ignored_not_running
    wrong number of values            rejected, last valid target held          rejected_wrong_length
    NaN / inf value                   rejected, last valid target held          rejected_nonfinite
    unreadable data                   rejected, last valid target held          rejected_malformed
    value outside joint limits        clamped per joint to [lower, upper]       clamped
    trajectory: unknown joint name    rejected, last valid target held          rejected_unknown_joint
    trajectory: names != joint set    rejected, last valid target held          rejected_joint_set
    trajectory: no points             rejected, last valid target held          rejected_no_points
    diverging physics (NaN, unstable) episode ends: status diverged + reason;   divergences
                                      /joint_states repeat the last good state;
                                      ~/reset recovers
    ================================  ========================================  ======================

    In lockstep a rejected (or clamped) command still advances one period, as the protocol
    says; rate-limited and ignored ones do not.

    Meta-World: with ``task:=metaworld/<name>`` (robot ``sawyer``) everything above is done by
    `metaworld_backend.MetaWorldBackend` (the task's contract topics instead of /joint_states
    and the controller's; same services, counters, stamps and diagnostics).
    """

    def __init__(self):
        super().__init__(NODE_NAME)
        self.params = p = declare_and_load(self, BridgeParams)
        self.backend: Optional[MetaWorldBackend] = None
        self._cams: List[_Camera] = []
        if check_robot_task(p.robot, p.task):
            if p.cameras:
                raise ValueError("parameter cameras: not available for metaworld/<name> tasks yet "
                                 "(cameras of the package's own arms only)")
            self.backend = MetaWorldBackend(self, p)
            return
        mjcf = p.mjcf or str(robot_mjcf(p.robot))
        self.env = SimEnv(p.robot, p.task, mjcf=mjcf, control_rate_hz=p.control_rate_hz, disturbance=p.pushes())
        env = self.env
        self.lockstep = p.mode == "lockstep"
        self.joint_names = list(env.joint_names)
        self.n = len(self.joint_names)
        self.lower, self.upper = env.robot_contract_limits()
        self.period_ns = int(round(env.substeps * env.sim.timestep * 1e9))
        self.k_pub = max(1, int(round(1.0 / (p.joint_state_rate_hz * env.sim.timestep))))
        if self.k_pub > env.substeps:
            self.k_pub = env.substeps
        # /clock every k_clock physics steps: a multiple of the joint-state period
        self.k_clock = self.k_pub * max(1, int(round(1.0 / (p.clock_rate_hz * env.sim.timestep * self.k_pub))))

        self._lock = threading.RLock()          # env + publishing
        self._episode = False                   # an episode was reset and not torn down
        self._offset_ns = 0                      # bridge clock = offset + episode sim time
        self._last_stamp_ns = 0
        self._last_finite_js: Optional[JointState] = None
        self._pending_cmd: Optional[np.ndarray] = None   # free mode: next target to apply
        self._since_pub = self._since_clock = 0
        self._late: Optional[LateJoinerResend] = None
        self._diverged_logged = False
        self.counts: Dict[str, int] = {c: 0 for c in COUNTERS}
        self.counts.update(received=0, divergences=0, episodes=0, ticks=0)
        self._limiter = RateLimiter(p.max_command_rate_hz, p.max_command_rate_hz * RATE_BURST_S)
        self._js_stats = PeriodStats()
        self._rtf_window = deque(maxlen=64)      # (wall, sim substeps) samples
        self._substeps_total = 0
        self._tick_window = deque(maxlen=64)     # (wall, ticks) samples (lockstep rate)

        self._js_pub = self.create_publisher(JointState, "/joint_states", qos.STATE)
        self._ts_pub = self.create_publisher(TaskState, "/task_state", qos.STATE)
        self._clock_pub = self.create_publisher(Clock, "/clock", qos.CLOCK) if p.publish_clock else None
        self._diag = Diagnostics(self, "simulation", hardware_id=p.robot)
        self._bad_input_log = ThrottledLog(self.get_logger(), 2.0)   # per command: rclpy's throttle costs ~0.4 ms
        self._lane = FastLane(self, "bridge_commands", on_error=self._on_lane_error)
        ctrl = p.controller.strip("/")
        self.command_topic = f"/{ctrl}/commands"
        self.trajectory_topic = f"/{ctrl}/joint_trajectory"
        self._lane.create_subscription(Float64MultiArray, self.command_topic, self._on_command, qos.COMMAND)
        self._lane.create_subscription(JointTrajectory, self.trajectory_topic, self._on_trajectory,
                                       qos.COMMAND)
        self.create_service(ResetEpisode, "~/reset", self._srv_reset)
        self.create_service(StepSim, "~/step", self._srv_step)
        self.create_timer(1.0 / p.diagnostics_rate_hz, self._publish_diagnostics)
        self._setup_cameras()

        if self.lockstep:   # the start-up pair once heard, any waiting pair again for a late subscriber
            self._late = LateJoinerResend(self, [self._js_pub, self._ts_pub], self._lock,
                                          lambda: self._episode and not self.env.done, self._publish_pair)
        if p.auto_reset:
            with self._lock:
                self._reset(p.seed, "", p.variant, publish=not self.lockstep)

        self._stop = threading.Event()
        self._free_thread: Optional[threading.Thread] = None
        js_rate = 1.0 / (self.k_pub * env.sim.timestep)
        self.get_logger().info(
            f"{p.mode} mode: {env.sim.path} joints {self.joint_names}, task {env.task_name!r}, "
            f"control {p.control_rate_hz:g} Hz ({env.substeps} physics steps of {env.sim.timestep:g} s)"
            + (f", joint states {js_rate:g} Hz sim time at x{p.real_time_factor:g} real time"
               if not self.lockstep else "")
            + f"; commands on {self.command_topic} / {self.trajectory_topic}"
            + (f"; cameras {[str(c.spec) for c in self._cams]} (MUJOCO_GL={os.environ.get('MUJOCO_GL')})"
               if self._cams else ""))
        if not self.lockstep and abs(js_rate - p.joint_state_rate_hz) > 1e-6 * p.joint_state_rate_hz:
            self.get_logger().warn(f"joint_state_rate_hz {p.joint_state_rate_hz:g} is not a whole number of "
                                   f"physics steps: publishing at {js_rate:g} Hz")

    def declare_parameter(self, name, value=None, descriptor=None, ignore_override=False):
        # `cameras` defaults to [], which rclpy types as a byte array: declare it dynamically
        # typed so a string list (the only thing BridgeParams accepts) can override it.
        if name == "cameras" and descriptor is not None:
            descriptor.dynamic_typing = True
        return super().declare_parameter(name, value, descriptor, ignore_override)

    def _setup_cameras(self) -> None:
        """Renderers + publishers of the `cameras` parameter; CameraError (exit 1) names the
        model's cameras if one is unknown, or says to set MUJOCO_GL=egl if GL does not work."""
        p, sim = self.params, self.env.sim
        try:
            for spec in p.camera_specs():
                r = CameraRenderer(sim.model, spec.name, spec.width, spec.height, source=str(sim.path))
                self._cams.append(_Camera(self, spec, r, p.camera_jpeg_quality))
        except Exception:
            self._close_cameras()
            raise
        if self._cams:
            self.counts.update(camera_frames=0, camera_frames_dropped=0)
            self._render_ms = deque(maxlen=200)

    def _close_cameras(self) -> None:
        for c in self._cams:
            if c.pending is not None:
                c.pending.cancel()
                try:
                    c.pending.result(timeout=5.0)
                except Exception:  # noqa: BLE001 - cancelled or failed: closing anyway
                    pass
            c.renderer.close()
        self._cams = []

    # ------------------------------------------------------------------ lifetime
    def start(self) -> None:
        """Start the command thread and (free mode) the physics thread."""
        if self.backend is not None:
            return self.backend.start()
        self._lane.start()
        if not self.lockstep:
            self._free_thread = threading.Thread(target=self._free_loop, name="physics", daemon=True)
            self._free_thread.start()

    def shutdown(self, reason: str = "") -> None:
        if self.backend is not None:
            return self.backend.shutdown(reason)
        self._stop.set()
        if self._free_thread is not None:
            self._free_thread.join(2.0)
        self._lane.stop()
        with self._lock:
            self._close_cameras()

    def _on_lane_error(self, e: BaseException) -> None:
        self.get_logger().error(f"command handling failed: {type(e).__name__}: {e}",
                                throttle_duration_sec=2.0)

    # ------------------------------------------------------------------ publishing
    def _publish_pair(self, with_task: bool = True, with_clock: bool = True,
                      msgs: Optional[dict] = None) -> Optional[TaskState]:
        """Publish /joint_states (+ /task_state, /clock) of the current state. Lock held.

        msgs: the current state as returned by SimEnv.reset()/step() (saves rebuilding it).
        """
        env = self.env
        ns = self._offset_ns + int(round(env.sim.time * 1e9))
        if ns <= self._last_stamp_ns and self._last_finite_js is not None:
            ns = self._last_stamp_ns          # re-publication of the current pair (~/step 0)
        self._last_stamp_ns = ns
        stamp = _stamp(ns)
        js_data = msgs[JOINT_STATES_TOPIC] if msgs else env.joint_state
        if not env.sim.diverged and np.isfinite(np.sum(js_data.position) + np.sum(js_data.velocity)
                                                + np.sum(js_data.effort)):
            js = joint_state_msg(js_data)
            self._last_finite_js = js
        else:   # never publish a diverged state: repeat the last good positions, at rest
            last = self._last_finite_js
            js = JointState(name=list(last.name), position=last.position,
                            velocity=[0.0] * self.n, effort=[0.0] * self.n)
        js.header.stamp = stamp
        self._js_pub.publish(js)
        if not self.lockstep:
            self._js_stats.record(time.perf_counter(), self.k_pub * env.sim.timestep / self.params.real_time_factor)
        if self._cams:                        # frames of this state: after /joint_states, before /task_state
            self._publish_frames(ns - self._offset_ns, stamp, boundary=with_task)
        ts = None
        if with_task:
            ts = task_state_msg(msgs[TASK_STATE_TOPIC] if msgs else env.task_state)
            ts.header.stamp = stamp
            self._ts_pub.publish(ts)
            if ts.status == STATUS_DIVERGED and not self._diverged_logged:
                self._diverged_logged = True
                self.counts["divergences"] += 1
                self.get_logger().error(f"episode {ts.episode_id} (seed {ts.seed}) diverged at tick "
                                        f"{ts.step}: {ts.reason}; call ~/reset to continue")
        if with_clock and self._clock_pub is not None:   # after the data: a sim-time timer firing on this
            self._clock_pub.publish(Clock(clock=stamp))   # clock finds the pair already sent
        if self._late is not None:
            self._late.sent()
        return ts

    def _publish_frames(self, episode_ns: int, stamp: Time, boundary: bool) -> None:
        """The camera frames due at this published state (sim time `episode_ns` of the episode).
        Lock held. Lock-step: rendered and published now; free: rendered on the GL thread."""
        env = self.env
        if env.sim.diverged or not self._episode:
            return
        goal = goal_world(env.sim, env.task.goal)
        for cam in self._cams:
            if cam.spec.period_ns == 0 and not boundary:
                continue
            if not cam.schedule.due(episode_ns):
                continue
            if self.lockstep:
                cam.renderer.update(env.sim.data, goal)
                self._frame_done(cam.render_and_publish(stamp))
                continue
            if cam.pending is not None and not cam.pending.done():
                self.counts["camera_frames_dropped"] += 1
                continue
            cam.renderer.update(env.sim.data, goal)
            cam.pending = gl_submit(cam.render_and_publish, stamp)
            cam.pending.add_done_callback(self._frame_future_done)

    def _frame_done(self, render_s: float) -> None:
        self.counts["camera_frames"] += 1
        self._render_ms.append(render_s * 1e3)

    def _frame_future_done(self, fut: Future) -> None:
        if fut.cancelled():
            return
        e = fut.exception()
        if e is not None:
            self.get_logger().error(f"camera frame failed: {type(e).__name__}: {e}", throttle_duration_sec=2.0)
            return
        self._frame_done(fut.result())     # no sim lock here: shutdown holds it while waiting for the GL thread

    # ------------------------------------------------------------------ episodes
    def _reset(self, seed: int, task: str, variant: str, publish: bool = True) -> Optional[TaskState]:
        """Start an episode. Lock held. Raises TaskError/ValueError (env unchanged or no episode)."""
        env = self.env
        if task and task != env.task_name:
            env.set_task(task, variant)       # raises with the env unchanged
        self._episode = False                 # until reset() succeeds (it may fail to sample)
        msgs = env.reset(int(seed), variant)
        self._episode = True
        # next episode starts one period after the last stamp, on a multiple of the period (so
        # sim-time timers at the control rate tick on the control boundaries)
        self._offset_ns = -(-(self._last_stamp_ns + self.period_ns) // self.period_ns) * self.period_ns
        self._pending_cmd = None
        self._since_pub = self._since_clock = 0     # free mode: steps since the last js / clock
        self._diverged_logged = False
        for cam in self._cams:
            cam.schedule.reset()
        self.counts["episodes"] += 1
        return self._publish_pair(msgs=msgs) if publish else None

    def _srv_reset(self, req: ResetEpisode.Request, resp: ResetEpisode.Response):
        try:
            with self._lock:
                ts = self._reset(req.seed, req.task, req.variant)
        except (TaskError, ValueError, SimError) as e:
            resp.success, resp.message = False, f"reset refused: {e}"
            self.get_logger().warn(resp.message)
            return resp
        resp.success = True
        resp.episode_id = int(ts.episode_id)
        resp.state = ts
        resp.message = (f"episode {ts.episode_id}: {ts.task}{'/' + ts.variant if ts.variant else ''} "
                        f"seed {ts.seed}")
        self.get_logger().info(resp.message, throttle_duration_sec=1.0)
        return resp

    def _srv_step(self, req: StepSim.Request, resp: StepSim.Response):
        if not self.lockstep:
            resp.success, resp.message = False, "~/step is for mode lockstep (free mode runs by itself)"
            return resp
        with self._lock:
            if not self._episode:
                resp.success, resp.message = False, "no episode: call ~/reset first"
                return resp
            env = self.env
            done_before = env.done
            n = 0
            while n < req.ticks and not env.done:
                env.step(env.last_command)
                n += 1
            self.counts["ticks"] += n
            self._record_ticks(n)
            ts = self._publish_pair()
            resp.step = int(ts.step)
            resp.success = not (done_before and req.ticks > 0)
            resp.message = (f"advanced {n} of {req.ticks} periods" + (f"; episode {ts.status}" if ts.done else ""))
        return resp

    # ------------------------------------------------------------------ commands
    def _on_command(self, msg: Float64MultiArray) -> None:
        with self._lock:
            if self._admit():
                target, reason = validate_command(msg.data, self.n, self.lower, self.upper)
                self._apply(target, reason)

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        with self._lock:
            if not self._admit():
                return
            pos, err = trajectory_first_point(msg, self.joint_names)
            if err:
                kind = (REJ_NO_POINTS if "no points" in err else REJ_UNKNOWN_JOINT if "unknown joint" in err
                        else REJ_JOINT_SET if "do not cover" in err else REJ_LENGTH)
                self._apply(None, f"{kind}: {err}", kind)
                return
            target, reason = validate_command(pos, self.n, self.lower, self.upper)
            self._apply(target, reason)

    def _admit(self) -> bool:
        """Count a received command; False if the rate limiter drops it. Lock held."""
        self.counts["received"] += 1
        if self._limiter.allow():
            return True
        self._count(RATE_LIMITED, f"command rate above {self.params.max_command_rate_hz:g} Hz: dropped")
        return False

    def _count(self, key: str, message: str = "") -> None:
        self.counts[key] += 1
        if message:
            # one key for every counter: bad commands share one warning per 2 s
            self._bad_input_log.warning("command", f"{message} (total {key}: {self.counts[key]})")

    def _apply(self, target: Optional[np.ndarray], reason: str, kind: str = "") -> None:
        """Count a validated command and act on it (lockstep: one period; free: latch). Lock held."""
        env = self.env
        if not self._episode or env.done:
            self.counts[IGNORED] += 1
            return
        if target is None:
            key = kind or {"wrong_length": REJ_LENGTH, "nonfinite": REJ_NONFINITE}.get(
                reason.split(":", 1)[0], REJ_MALFORMED)
            self._count(key, f"command rejected ({reason}); holding the last valid target")
        elif reason:
            self._count(CLAMPED, f"command {reason}: clamped to the joint limits")
        else:
            self.counts[ACCEPTED] += 1
        if not self.lockstep:
            if target is not None:
                self._pending_cmd = target
            return
        msgs = env.step(env.last_command if target is None else target)
        self.counts["ticks"] += 1
        self._record_ticks(1)
        self._publish_pair(msgs=msgs)

    def _record_ticks(self, n: int) -> None:
        now = time.monotonic()
        w = self._tick_window
        if not w or now - w[-1][0] > 0.05:
            w.append((now, self.counts["ticks"]))

    # ------------------------------------------------------------------ free mode
    def _free_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._free_run()
            except Exception as e:  # noqa: BLE001 - keep simulating; say so loudly
                self.counts["physics_errors"] = self.counts.get("physics_errors", 0) + 1
                self.get_logger().error(f"physics loop error {type(e).__name__}: {e}; restarting it",
                                        throttle_duration_sec=2.0)
                self._stop.wait(0.1)

    def _free_run(self) -> None:
        env, p = self.env, self.params
        wall_per_substep = env.sim.timestep / p.real_time_factor
        # A lag of up to one control period (sim time) is caught up by running without sleeping;
        # a longer one (machine stalled) is dropped: the achieved real-time factor shows it.
        # Catching up more would run several control periods before a controller can answer.
        catch_up = env.substeps * wall_per_substep
        t_ref, n_ref = time.perf_counter(), 0
        while not self._stop.is_set():
            n = 0
            with self._lock:
                running = self._episode and not env.sim.diverged
                if running:
                    if self._pending_cmd is not None:
                        env.set_command(self._pending_cmd)
                        self._pending_cmd = None
                    n = min(self.k_pub - self._since_pub, env.substeps - env.substep_phase)
                    env.advance(n)
                    self._since_pub += n
                    self._since_clock += n
                    boundary = env.substep_phase == 0
                    if boundary or self._since_pub >= self.k_pub:
                        clock = boundary or self._since_clock >= self.k_clock
                        self._since_pub = 0
                        if clock:
                            self._since_clock = 0
                        self._publish_pair(with_task=boundary, with_clock=clock)
                    self._substeps_total += n
            if not running:               # idle until a reset; keep the pacing reference fresh
                self._js_stats.reset()
                self._stop.wait(0.01)
                t_ref, n_ref = time.perf_counter(), 0
                continue
            n_ref += n
            now = time.perf_counter()
            wait = t_ref + n_ref * wall_per_substep - now
            if wait > 0:
                time.sleep(wait)
            elif wait < -catch_up:        # far behind: do not sprint through control periods
                t_ref, n_ref = now, 0
            w = self._rtf_window
            if not w or now - w[-1][0] > 0.05:
                w.append((now, self._substeps_total))

    # ------------------------------------------------------------------ diagnostics
    def _rtf(self) -> float:
        w = self._rtf_window
        if len(w) < 2 or w[-1][0] <= w[0][0]:
            return float("nan")
        return (w[-1][1] - w[0][1]) * self.env.sim.timestep / (w[-1][0] - w[0][0])

    def _tick_rate(self) -> float:
        w = self._tick_window
        if len(w) < 2 or w[-1][0] <= w[0][0]:
            return float("nan")
        return (w[-1][1] - w[0][1]) / (w[-1][0] - w[0][0])

    def stats(self) -> Dict[str, object]:
        """Counters and timing figures (what /diagnostics reports)."""
        env = self.env
        with self._lock:
            ts = env.task_state if self._episode else None
            out: Dict[str, object] = dict(self.counts)
        js_subs, ts_subs = self._js_pub.get_subscription_count(), self._ts_pub.get_subscription_count()
        out.update(joint_state_subscribers=js_subs, task_state_subscribers=ts_subs,
                   state_subscribers=min(js_subs, ts_subs),
                   command_publishers=self.count_publishers(self.command_topic),
                   mode=self.params.mode, episode_id=env.episode_id,
                   step=ts.step if ts else 0, status=ts.status if ts else "no episode",
                   rejected=sum(out[k] for k in COUNTERS if k.startswith("rejected")))
        if self._cams:
            ms = np.fromiter(self._render_ms, float) if self._render_ms else np.zeros(0)
            out.update(cameras=",".join(str(c.spec) for c in self._cams),
                       camera_render_ms_p50=float(np.median(ms)) if ms.size else float("nan"))
        if self.lockstep:
            rate = self._tick_rate()
            out.update(ticks_per_s=rate, achieved_rtf=rate / self.params.control_rate_hz,
                       late_joiner_resends=self._late.resends if self._late else 0)
        else:
            out.update(target_rtf=self.params.real_time_factor, achieved_rtf=self._rtf(),
                       joint_state_rate_hz=1.0 / (self.k_pub * env.sim.timestep),
                       joint_state_period_err_p99_us=self._js_stats.p99_abs_us(),
                       joint_state_stalls=self._js_stats.stalls)
        return out

    def _publish_diagnostics(self) -> None:
        s = self.stats()
        rtf = s.get("achieved_rtf", float("nan"))
        if s["status"] == STATUS_DIVERGED:
            level, message = ERROR, f"episode {s['episode_id']} diverged: reset needed"
        elif (not self.lockstep and s["status"] != "no episode" and math.isfinite(rtf)
              and rtf < 0.9 * self.params.real_time_factor):
            level, message = WARN, f"real-time factor {rtf:.2f} below target"
        elif s["rejected"] or s[RATE_LIMITED]:
            level, message = WARN, f"{s['rejected']} commands rejected, {s[RATE_LIMITED]} rate-limited"
        else:
            level, message = OK, f"{s['mode']}: {s['status']}"
        self._diag.publish(level, message, s)


def main(args=None) -> int:
    # Three Python threads share the GIL (executor, commands, physics): hand it over within
    # 0.5 ms instead of CPython's default 5 ms, so a busy physics thread cannot delay a
    # command by several control periods of sim time.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    return run_node(MujocoBridge, NODE_NAME, (SimError, TaskError, ValueError, MetaWorldUnavailable), args)


if __name__ == "__main__":
    raise SystemExit(main())
