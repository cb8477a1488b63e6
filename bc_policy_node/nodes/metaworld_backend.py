"""`mujoco_bridge` with ``task:=metaworld/<name>``: a Meta-World task as the robot on the graph.

The bridge node (`nodes/mujoco_bridge.py`) hands itself to `MetaWorldBackend` when its task
parameter names a Meta-World task; the backend then owns every topic, service and timer of
the node. Any v3 task with a scripted policy works: the task is resolved by
`core.sim.metaworld_env.resolve_task` (an unknown name fails at start-up with the list of close
matches and of the available tasks), the topics and bounds come from the task's generated
contract (`core.sim.metaworld_task.metaworld_contract`), the simulation is
`MetaWorldSimEnv` (seeded resets, one control tick = one Meta-World step, 80 Hz).

Publishes (qos.STATE, all with the same stamp per tick = the bridge's sim clock, as the
package's own arms; episodes start one period after the previous one ended):
    ``/ee_pose`` geometry_msgs/PoseStamped (frame ``base``): the hand position.
    ``/gripper/joint_states`` sensor_msgs/JointState, joint ``gripper``: opening 0 .. 1.
    ``/objects/obj0/pose``, ``/objects/obj1/pose`` geometry_msgs/PoseStamped (zeros where the
    task has one object).
    ``/task_state`` bc_msgs/TaskState: task, episode_id, seed, goal, ee_position, step, status
    (running | success | timeout), success, done, reason. Last of the tick's state messages.
    ``/clock`` (if publish_clock) after them; ``/diagnostics`` at diagnostics_rate_hz.
Subscribes (qos.COMMAND), the contract's two action parts:
    ``/servo_node/delta_twist_cmds`` geometry_msgs/TwistStamped: linear x, y, z in m/s in frame
    ``base`` ('' accepted; angular ignored: Meta-World's hand does not turn).
    ``/gripper_controller/commands`` std_msgs/Float64MultiArray: one effort, -1 open .. +1 closed.
Services: ``~/reset`` (seed; task '' = keep or another ``metaworld/<name>``; variant must be
    '') and ``~/step`` (lockstep: advance N ticks holding the latest valid twist and gripper).

A tick's command is the pair (twist, gripper). Lock-step: the bridge steps once it has
received both parts for the current tick (in either order; a second message of the same part
before the other one arrives replaces the first); valid, clamped or rejected, each part counts
as received (a rejected part holds its last valid value), as the package's own arms do with a
rejected command. A reset discards a half-received pair. Free: one Meta-World step every
1 / (80 Hz x real_time_factor) s of wall time with the latest valid values of both parts
(zero twist and gripper -1 until the first of each arrives in an episode); after the episode
ends (success or horizon) the simulation and its publishing stop until the next reset.

Bad input, counted like the own arms' (`bridge_params` counter names): rate above
max_command_rate_hz -> rate_limited (no tick); no episode / done -> ignored_not_running; NaN/inf
-> rejected_nonfinite; gripper not exactly 1 value -> rejected_wrong_length; a twist in another
frame -> rejected_malformed; a speed beyond the contract's bound (per axis) or a gripper outside
[-1, 1] -> clamped (a value within 1e-9 relative of the bound is taken as the bound without
counting: the scripted expert's full-scale action converts to the bound +- 1 ulp).
Unused parameters (fixed by Meta-World): control_rate_hz, joint_state_rate_hz, clock_rate_hz,
controller, variant; mjcf and push_magnitude must stay at their defaults.
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Dict, Optional

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseStamped, TwistStamped
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray

from bc_msgs.msg import TaskState
from bc_msgs.srv import ResetEpisode, StepSim

from ..core.control.safety import validate_command
from ..core.sim.bridge_params import (ACCEPTED, CLAMPED, COUNTERS, IGNORED, RATE_BURST_S, RATE_LIMITED,
                                       REJ_LENGTH, REJ_MALFORMED, REJ_NONFINITE, BridgeParams, RateLimiter)
from ..core.sim.metaworld_task import (EE_TOPIC, GRIPPER_TOPIC, OBJECT_TOPICS, ROBOT, TASK_STATE_TOPIC,
                                       MetaWorldSimEnv, is_metaworld)
from . import qos
from .common import OK, WARN, Diagnostics, LateJoinerResend, ThrottledLog
from .conversions import joint_state_msg, pose_stamped_msg, task_state_msg
from .fastlane import FastLane

BOUND_RTOL = 1e-9          # relative slack of the speed / gripper bounds before a value counts as clamped
TWIST, GRIPPER = 0, 1      # the action parts, contract order


def _stamp(ns: int) -> Time:
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def check_robot_task(robot: str, task: str) -> bool:
    """True if robot/task select the Meta-World backend; ValueError for a mixed pair."""
    if is_metaworld(task):
        if robot != ROBOT:
            raise ValueError(f"task {task!r} is a Meta-World task: it runs on robot {ROBOT!r} "
                             f"(robot:={ROBOT}), not {robot!r}")
        return True
    if robot == ROBOT:
        raise ValueError(f"robot {ROBOT!r} runs Meta-World tasks only (task:=metaworld/<name>, e.g. "
                         f"metaworld/pick-place-v3), not {task!r}")
    return False


class MetaWorldBackend:
    """Everything `mujoco_bridge` does on the graph, for a Meta-World task (module docstring)."""

    def __init__(self, node, p: BridgeParams):
        check_robot_task(p.robot, p.task)
        if p.mjcf:
            raise ValueError(f"Meta-World tasks bring their own scene: leave mjcf empty (got {p.mjcf!r})")
        if p.push_magnitude != 0:
            raise ValueError("pushes (push_magnitude) are not implemented for Meta-World tasks: leave it 0")
        if p.variant:
            raise ValueError(f"Meta-World tasks have no variants (got variant {p.variant!r}); the seed "
                             f"picks the object and goal positions")
        self.node, self.params = node, p
        self.env = MetaWorldSimEnv(ROBOT, p.task)       # unknown task: resolve_task's error (close matches)
        self.lockstep = p.mode == "lockstep"
        self._set_contract()

        self._lock = threading.RLock()
        self._episode = False
        self._offset_ns = 0
        self._last_stamp_ns = 0
        self._published = False
        self._values = [np.zeros(3), np.array([-1.0])]   # latest valid twist / gripper of the episode
        self._got = [False, False]                       # lockstep: parts received for this tick
        self._late: Optional[LateJoinerResend] = None
        self.counts: Dict[str, int] = {c: 0 for c in COUNTERS}
        self.counts.update(received=0, divergences=0, episodes=0, ticks=0)
        self._limiter = RateLimiter(p.max_command_rate_hz, p.max_command_rate_hz * RATE_BURST_S)
        self._rtf_window: deque = deque(maxlen=64)   # (wall, ticks) samples
        self._bad_input_log = ThrottledLog(node.get_logger(), 2.0)

        self._ee_pub = node.create_publisher(PoseStamped, EE_TOPIC, qos.STATE)
        self._grip_pub = node.create_publisher(JointState, GRIPPER_TOPIC, qos.STATE)
        self._obj_pubs = [node.create_publisher(PoseStamped, t, qos.STATE) for t in OBJECT_TOPICS]
        self._ts_pub = node.create_publisher(TaskState, TASK_STATE_TOPIC, qos.STATE)
        self._clock_pub = node.create_publisher(Clock, "/clock", qos.CLOCK) if p.publish_clock else None
        self._diag = Diagnostics(node, "simulation", hardware_id=ROBOT)
        self._lane = FastLane(node, "bridge_commands", on_error=self._on_lane_error)
        self._lane.create_subscription(TwistStamped, self.twist_topic, self._on_twist, qos.COMMAND)
        self._lane.create_subscription(Float64MultiArray, self.gripper_topic, self._on_gripper, qos.COMMAND)
        node.create_service(ResetEpisode, "~/reset", self._srv_reset)
        node.create_service(StepSim, "~/step", self._srv_step)
        node.create_timer(1.0 / p.diagnostics_rate_hz, self._publish_diagnostics)

        if self.lockstep:   # the start-up pair once heard, any waiting pair again for a late subscriber
            self._late = LateJoinerResend(node, [self._ee_pub, self._ts_pub], self._lock,
                                          lambda: self._episode and not self.env.done, self._publish)
        if p.auto_reset:
            with self._lock:
                self._reset(p.seed, publish=not self.lockstep)

        self._stop = threading.Event()
        self._free_thread: Optional[threading.Thread] = None
        node.get_logger().info(
            f"{p.mode} mode: Meta-World {self.env.task_name!r} on {ROBOT}, control {1.0 / self.env.dt:g} Hz "
            f"(Meta-World's step; control_rate_hz is not used)"
            + (f" at x{p.real_time_factor:g} real time" if not self.lockstep else "")
            + f"; commands on {self.twist_topic} + {self.gripper_topic}")

    def _set_contract(self) -> None:
        env = self.env
        self.contract = env.contract
        twist, grip = env.contract.action.parts
        self.twist_topic, self.gripper_topic = twist.topic, grip.topic
        self.frame_id = twist.frame_id
        self.bounds = [(np.asarray(part.lower, dtype=float), np.asarray(part.upper, dtype=float))
                       for part in (twist, grip)]
        self.period_ns = int(round(env.dt * 1e9))

    # ------------------------------------------------------------------ lifetime
    def start(self) -> None:
        self._lane.start()
        if not self.lockstep:
            self._free_thread = threading.Thread(target=self._free_loop, name="physics", daemon=True)
            self._free_thread.start()

    def shutdown(self, reason: str = "") -> None:
        self._stop.set()
        if self._free_thread is not None:
            self._free_thread.join(2.0)
        self._lane.stop()
        self.env.close()

    def _on_lane_error(self, e: BaseException) -> None:
        self.node.get_logger().error(f"command handling failed: {type(e).__name__}: {e}",
                                     throttle_duration_sec=2.0)

    # ------------------------------------------------------------------ publishing
    def _publish(self, msgs: Optional[dict] = None) -> TaskState:
        """Publish the tick's state messages, /task_state, then /clock (one stamp). Lock held."""
        env = self.env
        msgs = msgs if msgs is not None else env.messages()
        ns = self._offset_ns + env.step_count * self.period_ns
        if ns <= self._last_stamp_ns and self._published:
            ns = self._last_stamp_ns                      # re-publication (~/step 0)
        self._last_stamp_ns, self._published = ns, True
        stamp = _stamp(ns)
        out = [(self._ee_pub, pose_stamped_msg(msgs[EE_TOPIC])),
               (self._grip_pub, joint_state_msg(msgs[GRIPPER_TOPIC]))]
        out += [(pub, pose_stamped_msg(msgs[t])) for pub, t in zip(self._obj_pubs, OBJECT_TOPICS)]
        for pub, msg in out:
            msg.header.stamp = stamp
            pub.publish(msg)
        ts = task_state_msg(msgs[TASK_STATE_TOPIC])
        ts.header.stamp = stamp
        self._ts_pub.publish(ts)
        if self._clock_pub is not None:
            self._clock_pub.publish(Clock(clock=stamp))
        if self._late is not None:
            self._late.sent()
        return ts

    def _step(self) -> dict:
        """One Meta-World step with the latest valid twist + gripper. Lock held."""
        msgs = self.env.step(np.concatenate(self._values))
        self.counts["ticks"] += 1
        return msgs

    # ------------------------------------------------------------------ episodes
    def _reset(self, seed: int, task: str = "", variant: str = "", publish: bool = True) -> Optional[TaskState]:
        """Start an episode. Lock held. Raises ValueError (the running episode stays as it was)."""
        if task and task != self.env.task_name:
            if not is_metaworld(task):
                raise ValueError(f"this bridge runs Meta-World tasks (task:=metaworld/<name>); {task!r} needs "
                                 f"a bridge started with that task")
            new = MetaWorldSimEnv(ROBOT, task)          # unknown name: raises, env unchanged
            if new.task_name != self.env.task_name:
                new.episode_id = self.env.episode_id    # episode ids keep counting across tasks
                self.env.close()
                self.env = new
                self._set_contract()
                self._episode = False
            else:
                new.close()
        if variant:
            raise ValueError(f"Meta-World tasks have no variants (got {variant!r}); the seed picks the positions")
        msgs = self.env.reset(int(seed))
        self._episode = True
        self._offset_ns = -(-(self._last_stamp_ns + self.period_ns) // self.period_ns) * self.period_ns
        self._values = [np.zeros(3), np.array([-1.0])]
        self._got = [False, False]
        self.counts["episodes"] += 1
        return self._publish(msgs) if publish else None

    def _srv_reset(self, req: ResetEpisode.Request, resp: ResetEpisode.Response):
        try:
            with self._lock:
                ts = self._reset(req.seed, req.task, req.variant)
        except ValueError as e:
            resp.success, resp.message = False, f"reset refused: {e}"
            self.node.get_logger().warn(resp.message)
            return resp
        resp.success = True
        resp.episode_id = int(ts.episode_id)
        resp.state = ts
        resp.message = f"episode {ts.episode_id}: {ts.task} seed {ts.seed}"
        self.node.get_logger().info(resp.message, throttle_duration_sec=1.0)
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
            n, msgs = 0, None
            while n < req.ticks and not env.done:
                msgs = self._step()
                n += 1
            self._record_ticks()
            self._got = [False, False]
            ts = self._publish(msgs)
            resp.step = int(ts.step)
            resp.success = not (done_before and req.ticks > 0)
            resp.message = f"advanced {n} of {req.ticks} ticks" + (f"; episode {ts.status}" if ts.done else "")
        return resp

    # ------------------------------------------------------------------ commands
    def _on_twist(self, msg: TwistStamped) -> None:
        with self._lock:
            if not self._admit():
                return
            frame = msg.header.frame_id
            if frame not in ("", self.frame_id):
                self._apply(TWIST, None, f"malformed: twist in frame {frame!r}, expected {self.frame_id!r}")
                return
            lin = msg.twist.linear
            self._apply(TWIST, *self._validate(TWIST, [lin.x, lin.y, lin.z]))

    def _on_gripper(self, msg: Float64MultiArray) -> None:
        with self._lock:
            if self._admit():
                self._apply(GRIPPER, *self._validate(GRIPPER, msg.data))

    def _validate(self, part: int, data):
        lo, hi = self.bounds[part]
        slack_lo, slack_hi = BOUND_RTOL * np.maximum(np.abs(lo), 1.0), BOUND_RTOL * np.maximum(np.abs(hi), 1.0)
        value, reason = validate_command(data, len(lo), lo - slack_lo, hi + slack_hi)
        if value is not None:
            value = np.clip(value, lo, hi)
        return value, reason

    def _admit(self) -> bool:
        self.counts["received"] += 1
        if self._limiter.allow():
            return True
        self._count(RATE_LIMITED, f"command rate above {self.params.max_command_rate_hz:g} Hz: dropped")
        return False

    def _count(self, key: str, message: str = "") -> None:
        self.counts[key] += 1
        if message:
            self._bad_input_log.warning("command", f"{message} (total {key}: {self.counts[key]})")

    def _apply(self, part: int, value: Optional[np.ndarray], reason: str) -> None:
        """Count a validated command part and act on it (lockstep: step once both parts are in). Lock held."""
        if not self._episode or self.env.done:
            self.counts[IGNORED] += 1
            return
        what = ("twist", "gripper")[part]
        if value is None:
            key = {"wrong_length": REJ_LENGTH, "nonfinite": REJ_NONFINITE}.get(reason.split(":", 1)[0], REJ_MALFORMED)
            self._count(key, f"{what} command rejected ({reason}); holding its last valid value")
        else:
            if reason:
                self._count(CLAMPED, f"{what} command {reason}: clamped to the contract's bounds")
            else:
                self.counts[ACCEPTED] += 1
            self._values[part] = value
        if not self.lockstep:
            return
        self._got[part] = True
        if all(self._got):
            self._got = [False, False]
            msgs = self._step()
            self._record_ticks()
            self._publish(msgs)

    def _record_ticks(self) -> None:
        now = time.monotonic()
        w = self._rtf_window
        if not w or now - w[-1][0] > 0.05:
            w.append((now, self.counts["ticks"]))

    # ------------------------------------------------------------------ free mode
    def _free_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._free_run()
            except Exception as e:  # noqa: BLE001 - keep simulating; say so loudly
                self.counts["physics_errors"] = self.counts.get("physics_errors", 0) + 1
                self.node.get_logger().error(f"physics loop error {type(e).__name__}: {e}; restarting it",
                                             throttle_duration_sec=2.0)
                self._stop.wait(0.1)

    def _free_run(self) -> None:
        wall_period = self.env.dt / self.params.real_time_factor
        t_next: Optional[float] = None
        episode = -1
        while not self._stop.is_set():
            with self._lock:
                running = self._episode and not self.env.done
                if running and episode != self.counts["episodes"]:    # new episode: its first
                    episode = self.counts["episodes"]                 # tick one period after the reset
                    t_next = time.perf_counter() + wall_period
            if not running or t_next is None:      # idle until a reset
                self._stop.wait(0.01)
                continue
            wait = t_next - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            elif wait < -wall_period:     # far behind (machine stalled): drop the lag, do not sprint
                t_next = time.perf_counter()
            t_next += wall_period
            with self._lock:
                if self._episode and not self.env.done and episode == self.counts["episodes"]:
                    self._publish(self._step())
            self._record_ticks()

    # ------------------------------------------------------------------ diagnostics
    def _tick_rate(self) -> float:
        w = self._rtf_window
        if len(w) < 2 or w[-1][0] <= w[0][0]:
            return float("nan")
        return (w[-1][1] - w[0][1]) / (w[-1][0] - w[0][0])

    def stats(self) -> Dict[str, object]:
        """Counters and timing figures (what /diagnostics reports)."""
        node, env = self.node, self.env
        with self._lock:
            ts = env.messages()[TASK_STATE_TOPIC] if self._episode else None
            out: Dict[str, object] = dict(self.counts)
            waiting = [n for n, got in zip(("twist", "gripper"), self._got) if not got] if any(self._got) else []
        ee_subs, ts_subs = self._ee_pub.get_subscription_count(), self._ts_pub.get_subscription_count()
        out.update(ee_pose_subscribers=ee_subs, task_state_subscribers=ts_subs,
                   state_subscribers=min(ee_subs, ts_subs),
                   command_publishers=min(node.count_publishers(self.twist_topic),
                                          node.count_publishers(self.gripper_topic)),
                   mode=self.params.mode, task=env.task_name, episode_id=env.episode_id,
                   step=ts.step if ts else 0, status=ts.status if ts else "no episode",
                   waiting_for=",".join(waiting),
                   rejected=sum(out[k] for k in COUNTERS if k.startswith("rejected")))
        rate = self._tick_rate()
        rate_hz = 1.0 / env.dt
        if self.lockstep:
            out.update(ticks_per_s=rate, achieved_rtf=rate / rate_hz,
                       late_joiner_resends=self._late.resends if self._late else 0)
        else:
            out.update(target_rtf=self.params.real_time_factor, achieved_rtf=rate / rate_hz)
        return out

    def _publish_diagnostics(self) -> None:
        s = self.stats()
        rtf = s.get("achieved_rtf", float("nan"))
        if (not self.lockstep and s["status"] == "running" and isinstance(rtf, float) and math.isfinite(rtf)
                and rtf < 0.9 * self.params.real_time_factor):
            level, message = WARN, f"real-time factor {rtf:.2f} below target"
        elif s["rejected"] or s[RATE_LIMITED]:
            level, message = WARN, f"{s['rejected']} commands rejected, {s[RATE_LIMITED]} rate-limited"
        else:
            level, message = OK, f"{s['mode']}: {s['task']} {s['status']}"
        self._diag.publish(level, message, s)
