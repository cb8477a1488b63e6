"""The policy node: runs an exported ONNX chunk policy on the robot (rclpy lifecycle node).

What to command is decided by `core.control.controller.PolicyController` (no rclpy); this
module is the ROS shell:
lifecycle, observation intake, tick scheduling, hot swap, status. Ticks are triggered by
  * a dedicated control thread sleeping to absolute deadlines (free-run, system time);
  * an rclpy timer on the node clock (free-run with ``use_sim_time``);
  * the observation callbacks (``lockstep``: one tick per observation stamp).
In free-run the observation subscriptions are *polled* by the tick (newest sample, best-effort
depth 1) instead of dispatched by the executor: an rclpy dispatch costs ~100-200 us of
CPU, which a 1 kHz loop cannot pay twice per tick.

Cameras (the contract's image terms) are observations like the others: their frames go to the
same `ObservationAssembler` (one decoder, `core.image`), the tick hands `assembler.images()` to
`PolicyController.step`, and a camera whose newest frame is too old makes the tick hold (stale)
exactly like a silent state topic. A frame that cannot be decoded (size, encoding, corrupt data)
is counted (``bad_frames`` on /diagnostics) and logged throttled; the previous frame stays current.
"""
from __future__ import annotations

import collections
import copy
import math
import os
import sys
import threading
import time
from typing import Dict, List, Optional, Union

import rclpy
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.task import Future

from bc_msgs.msg import PolicyStatus
from bc_msgs.srv import LoadPolicy

from ..core.sim.env import resolve_contract
from ..core.contract import Contract, ContractError, ObservationAssembler
from . import qos
from .common import Diagnostics, ThrottledLog, message_class, refuse_static_parameters, run_node
from .conversions import has_header
from .fastlane import NeverExecutedGroup
from .params import declare_and_load
from .policy_io import ChunkOut, CommandOut, PartsOut, command_out, diagnostics_msg, status_msg
from ..core.control.controller import RESTART_JUMP, PolicyController, TickResult, load_policy
from ..core.control.safety import EVENT_STALE
from ..core.control.loader import PolicyLoader
from ..core.control.params import PolicyParams
from ..core.control.stats import LoopStats
from ..core.sync import StampSync

SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE
LOG_EVERY_S = 2.0            # throttle of warnings raised inside the control loop
GIL_SWITCH_S = 0.0005        # the control thread waits at most this long for the GIL
# Free-run observation intake: qos.SENSOR (best effort, compatible with reliable publishers)
# holding only the newest sample, so a late tick takes one message instead of a backlog
# (a take with a JointState costs ~40-50 us in Python).
LATEST = copy.copy(qos.SENSOR)
LATEST.depth = 1


class _LoadRequest:
    def __init__(self, path: str, source: str, contract: Contract, params: PolicyParams):
        self.path, self.source, self.contract, self.params = path, source, contract, params
        self.future = Future()
        self.policy = None
        self.error = ""
        self.text = ""


class PolicyNode(LifecycleNode):
    """Runs an exported ONNX chunk policy in closed loop on the robot.

    Lifecycle: configure = load the model and check its embedded contract against the robot's
    (refused with every mismatch listed; the node stays unconfigured); activate = start the
    control loop at the contract rate (``lockstep``: one tick per observation stamp);
    deactivate = stop commanding — nothing further is published and the controller keeps its
    last command (ros2_control forward / trajectory controllers hold it); cleanup = drop the
    model and topics. ``autostart`` does configure + activate at startup.

    Subscribes:
        the contract's observation topics, types from the contract (e.g. ``/joint_states``
        sensor_msgs/JointState, ``/task_state`` bc_msgs/TaskState); best-effort depth 1 (the
        newest sample, polled by the tick) in free-run, STATE QoS (reliable, deep) in lock-step.
        Camera terms (sensor_msgs/Image or CompressedImage, as the term says): ``qos.CAMERA_QOS``
        (best effort, newest frame, polled) in free-run; in lock-step ``qos.CAMERA_RELIABLE_QOS``,
        and a camera without ``max_age_s`` is paired per stamp like the state topics (the bridge
        renders a frame every lock-step tick), one with ``max_age_s`` (slower than the control
        rate) is taken as it arrives.
    Publishes:
        ``/<controller>/commands`` std_msgs/Float64MultiArray (``command_interface: forward``)
        or ``/<controller>/joint_trajectory`` trajectory_msgs/JointTrajectory (``trajectory``);
        for a Cartesian / gripper contract one stream per action part on the contract's topics
        (geometry_msgs/TwistStamped for ee_velocity, std_msgs/Float64MultiArray for a gripper),
        or with ``command_interface: vector`` the whole action as one Float64MultiArray on
        ``/<controller>/commands`` (what the dagger node takes as the policy's proposal);
        ``~/action_chunk`` bc_msgs/ActionChunk: every chunk the executor accepted, stamped
        with the newest observation stamp it was computed from (only while subscribed);
        ``~/status`` bc_msgs/PolicyStatus (transient local) and ``/diagnostics``
        diagnostic_msgs/DiagnosticArray, at ``status_rate_hz``.
    Services:
        ``~/load_policy`` bc_msgs/LoadPolicy: hot swap; the model is loaded and checked on a
        worker thread and swapped in between two ticks; a refused one leaves the old running.
        Lifecycle: ``~/change_state``, ``~/get_state``, ``~/get_available_transitions``, ...
    Parameters (`core.control.params.PolicyParams`; defaults with units in config/policy.yaml):
        model_path, contract, execution_mode, autostart, controller, command_interface, m,
        query_every, n_execute, mode_threshold, mode_select, threads, status_rate_hz,
        stale_after_s, lockstep, missed_tick_factor, stats_window, reset_on_change,
        reset_jump_rad (+ use_sim_time, read at activate). Only ``model_path`` changes at run
        time: setting it hot-swaps the model (a refused model is reverted).

    New plan at the measured position (`core.control.controller` docstring): when the ``reset_on_change``
    field (default ``/task_state:episode_id``) changes, and when the measured position is more
    than ``reset_jump_rad`` from the last command (throttled warning). Each one is reported in
    ``~/status`` ``last_event`` and counted on ``/diagnostics`` (``new_plan_episode``,
    ``new_plan_jump``). ``reset_on_change`` must name an observation topic of the contract (the
    node reads the field from the messages it already takes); another topic is ignored with a
    warning at configure, and a field the topic's message type lacks refuses configure.
    """

    def __init__(self, node_name: str = "policy", **kwargs):
        super().__init__(node_name, **kwargs)
        self.params: PolicyParams = declare_and_load(self, PolicyParams)
        self._model_path = self.params.model_path
        self._state = "unconfigured"
        self._last_event = ""
        self._active = False
        self._contract: Optional[Contract] = None
        self._loop: Optional[PolicyController] = None
        self._assembler: Optional[ObservationAssembler] = None
        self._stats: Optional[LoopStats] = None
        self._subs: List = []
        self._polled: List = []
        self._out: Optional[Union[CommandOut, PartsOut]] = None
        self._chunks: Optional[ChunkOut] = None
        self._timer = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._tick_done = threading.Event()
        self._obs_ready = False
        self._newest_stamp = -math.inf
        self._counters = {"bad_observations": 0, "tick_errors": 0, "bad_frames": 0}
        self._cameras: Dict[str, str] = {}         # camera topic -> term name
        self._frames: Dict[str, List[int]] = {}    # camera term -> [frames taken, frames refused]
        # reset_on_change: the observation topic whose field is watched, and the field's path
        self._marker_topic: Optional[str] = None
        self._marker_path: tuple = ()
        self._warn = ThrottledLog(self.get_logger(), LOG_EVERY_S)   # per key: safety events share a call site
        self._now = time.time
        # lock-step bookkeeping
        self._sync: Optional[StampSync] = None
        self._unticked = False
        # hot swap: worker thread loads -> executor thread queues -> the next tick swaps
        self._quiet_param = False
        self._swap_queue: "collections.deque[_LoadRequest]" = collections.deque()
        self._swapped: "collections.deque[_LoadRequest]" = collections.deque()
        self._wake = self.create_guard_condition(self._on_wake)
        self._loader = PolicyLoader(self._wake.trigger, self._wait_for_tick_boundary)
        self._chunk_topic = self.get_fully_qualified_name().rstrip("/") + "/action_chunk"
        self._status_pub = self.create_publisher(PolicyStatus, "~/status", qos.STATUS)
        self._diag = Diagnostics(self, "policy control loop")
        # Status is for people and monitors: wall (steady) time, also under a paused or fast sim.
        self._status_timer = self.create_timer(1.0 / self.params.status_rate_hz, self._publish_status,
                                               clock=Clock(clock_type=ClockType.STEADY_TIME))
        # The service awaits the loader: in its own (reentrant) group, or its pending coroutine
        # would lock the node's default mutually exclusive group — lock-step ticks included.
        self._load_srv = self.create_service(LoadPolicy, "~/load_policy", self._srv_load_policy,
                                             callback_group=ReentrantCallbackGroup())
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._guard_change_state()
        if self.params.autostart and self.trigger_configure() == SUCCESS:
            self.trigger_activate()
        self._publish_status()

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        p = self.params
        try:
            if not p.contract:
                raise ValueError("parameter 'contract' is empty: give the robot's contract YAML")
            contract = resolve_contract(p.contract)
            types = {topic: message_class(t) for topic, t in contract.observation_topics().items()}
            cameras = {t.topic: t for t in contract.images}
            policy = load_policy(self._model_path, contract, p)
            loop = PolicyController(contract, policy, p)
            if p.lockstep and not any(has_header(c) for c in types.values()):
                raise ValueError("lockstep needs at least one stamped (header) observation topic")
            marker_topic, marker_path = self._check_reset_marker(contract, types)
        except Exception as e:  # every refusal reason ends up in the log and in ~/status
            self._event(f"configure refused: {e}", error=True)
            return FAILURE
        self._contract, self._loop = contract, loop
        self._marker_topic, self._marker_path = marker_topic, marker_path
        self._assembler = ObservationAssembler(contract)
        self._stats = LoopStats(contract.dt, p.missed_tick_factor, p.stats_window, count_missed=not p.lockstep)
        self._obs_ready, self._newest_stamp = False, -math.inf
        self._cameras = {topic: t.name for topic, t in cameras.items()}
        self._frames = {t.name: [0, 0] for t in contract.images}
        # lock-step pairs every stamped topic, except cameras slower than the tick (max_age_s)
        paired = [t for t, c in types.items()
                  if has_header(c) and (t not in cameras or cameras[t].max_age_s is None)]
        self._sync = StampSync(paired) if p.lockstep else None
        self._unticked = False
        self._subs, self._polled = [], []
        polled = None if p.lockstep else NeverExecutedGroup()  # the control tick takes these itself
        for topic, cls in types.items():
            if polled is None:
                self._subs.append(self.create_subscription(
                    cls, topic, self._make_obs_callback(topic, has_header(cls)),
                    qos.CAMERA_RELIABLE_QOS if topic in cameras else qos.STATE))
            else:
                sub = self.create_subscription(cls, topic, lambda _msg: None,
                                               qos.CAMERA_QOS if topic in cameras else LATEST, callback_group=polled)
                self._subs.append(sub)
                self._polled.append((topic, sub, has_header(cls)))
        self._out = command_out(self, p, contract)
        self._chunks = ChunkOut(self, self._chunk_topic, contract)
        self._state = "inactive"
        self._event(f"configured: model {policy.model_id} ({policy.kind}, K={policy.chunk_length}) on "
                    f"contract {contract.name!r} at {contract.control_rate_hz:g} Hz, "
                    f"{p.execution_mode}, commands on {self._out.topic}"
                    f"{' (lock-step)' if p.lockstep else ''}")
        return SUCCESS

    def _check_reset_marker(self, contract: Contract, types: Dict[str, type]):
        """reset_on_change -> (topic, field path), or (None, ()) when off or not observed."""
        marker = self.params.reset_marker()
        if marker is None:
            return None, ()
        topic, path = marker
        if topic not in types:
            self.get_logger().warn(
                f"reset_on_change: {topic} is not an observation topic of contract {contract.name!r} "
                f"({sorted(types)}): episode changes are not detected; reset_jump_rad="
                f"{self.params.reset_jump_rad:g} still starts a new plan when the arm is moved")
            return None, ()
        obj = types[topic]()
        for part in path:
            if not hasattr(obj, part):
                raise ValueError(f"reset_on_change: {types[topic].__name__} on {topic} has no field "
                                 f"{'.'.join(path)!r} (set reset_on_change:='' to turn it off)")
            obj = getattr(obj, part)
        return topic, path

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        sim_time = bool(self.get_parameter("use_sim_time").value)
        self._now = self._clock_source(sim_time)
        self._loop.reset()
        self._active = True
        if not self.params.lockstep:
            if sim_time:   # ticks follow /clock
                self._timer = self.create_timer(self._contract.dt, self._tick)
            else:
                self._stop.clear()
                self._thread = threading.Thread(target=self._run_free, name="policy_control", daemon=True)
                self._thread.start()
        self._state = "active"
        self._event(f"activated at tick {self._loop.tick}")
        if self._unticked:  # lock-step: the robot is already waiting for a command
            self._unticked = False
            self._tick()
        return SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_loop()
        self._state = "inactive"
        self._event("deactivated: no further commands (the controller holds the last one)")
        return SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        self._state = "unconfigured"
        self._event("cleaned up")
        return SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        self._state = "finalized"
        return SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        self._state = "unconfigured"
        return SUCCESS

    def _guard_change_state(self) -> None:
        """rclpy (Jazzy) raises inside the executor on a transition that is invalid in the current
        state (e.g. activate while unconfigured) and the process dies; answer success=false."""
        srv = getattr(self, "_service_change_state", None)
        if srv is None:
            return
        inner = srv.callback

        def guarded(request, response):
            valid = {t[0] for t in self._state_machine.available_transitions}
            if not request.transition.label and request.transition.id not in valid:
                self.get_logger().warn(f"change_state: transition {request.transition.id} is not "
                                       f"available in state {self._state}")
                response.success = False
                return response
            return inner(request, response)

        srv.callback = guarded

    def _stop_loop(self) -> None:
        self._active = False
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5.0)
            self._thread = None
        if self._timer is not None:
            self.destroy_timer(self._timer)
            self._timer = None
        if self._stats is not None:
            self._stats.pause()
        while self._swap_queue:            # no tick will take them now: swap here
            self._apply_swap(self._swap_queue.popleft())
        self._on_wake()

    def _teardown(self) -> None:
        self._stop_loop()
        for s in self._subs:
            self.destroy_subscription(s)
        self._subs, self._polled = [], []
        for out in (self._out, self._chunks):
            if out is not None:
                self.destroy_publisher(out.pub)
        self._out = self._chunks = None
        self._loop = self._contract = self._assembler = None
        self._cameras, self._frames = {}, {}

    def _clock_source(self, sim_time: bool):
        if sim_time:
            clock = self.get_clock()
            return lambda: clock.now().nanoseconds * 1e-9
        return time.time  # ROS time without sim time is the system clock (robot stamps use it too)

    # ------------------------------------------------------------------ observations
    def _make_obs_callback(self, topic: str, stamped: bool):
        synced = self._sync is not None and topic in self._sync.topics

        def callback(msg):
            stamp, key = self._stamp(msg, stamped)
            if synced:
                self._lockstep_arrival(topic, key, stamp, msg)
            else:
                self._observe(topic, msg, stamp)

        return callback

    def _stamp(self, msg, stamped: bool):
        if stamped:
            st = msg.header.stamp
            sec, ns = st.sec, st.nanosec
            if sec or ns:
                return sec + ns * 1e-9, (sec, ns)
        return self._now(), None

    def _observe(self, topic: str, msg, stamp: float) -> None:
        try:
            self._assembler.update(topic, msg, stamp)
        except Exception as e:
            if topic in self._cameras:     # whatever a decoder raises: never the node's end
                self._bad_frame(topic, e)
                return
            if not isinstance(e, ContractError):
                raise
            self._counters["bad_observations"] += 1
            self._warn.warning("bad_observation", f"observation refused: {e}")
            return
        if self._cameras and topic in self._cameras:
            self._frames[self._cameras[topic]][0] += 1
        if stamp > self._newest_stamp:
            self._newest_stamp = stamp
        if topic == self._marker_topic:
            value = msg
            for part in self._marker_path:
                value = getattr(value, part)
            self._loop.watch(value)

    def _bad_frame(self, topic: str, e: Exception) -> None:
        """A camera frame the decoder refused: counted, logged (throttled per camera); the
        assembler kept the previous frame and its stamp, so only bad frames -> stale -> hold."""
        name = self._cameras[topic]
        counts = self._frames[name]
        counts[1] += 1
        self._counters["bad_frames"] += 1
        why = str(e) if isinstance(e, ContractError) else f"{type(e).__name__}: {e}"
        self._warn.warning(f"bad_frame:{topic}", f"camera {name!r}: frame refused ({counts[1]} so far), the "
                           f"previous frame stays current: {why}")

    def _poll_observations(self) -> None:
        """Free-run: take the newest sample of every observation topic (depth 1: one take)."""
        for topic, sub, stamped in self._polled:
            with sub.handle:
                got = sub.handle.take_message(sub.msg_type, sub.raw)
            if got is not None:
                msg = got[0]
                self._observe(topic, msg, self._stamp(msg, stamped)[0])

    def _lockstep_arrival(self, topic: str, key, stamp: float, msg) -> None:
        """Lock-step: tick once per stamp, when every stamped topic has delivered that stamp."""
        if key is None:                     # unstamped message on a stamped topic: no sync
            self._observe(topic, msg, stamp)
            return
        released = self._sync.add(topic, key, (msg, stamp))
        if not released:
            return
        for t, (m, s) in released:
            self._observe(t, m, s)
        if self._active:
            self._tick()
        else:
            self._unticked = True

    # ------------------------------------------------------------------ control tick
    def _run_free(self) -> None:
        """Control thread: one tick per period on absolute deadlines (late ticks are not
        bunched up: after a stall the schedule restarts from now, like an rcl timer)."""
        period = self._contract.dt
        deadline = time.monotonic()
        tick_done = self._tick_done
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception as e:
                if not rclpy.ok():
                    return
                self._warn.warning("tick_crash", f"control tick failed: {type(e).__name__}: {e}")
            tick_done.set()
            deadline += period
            delay = deadline - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -period:
                deadline = time.monotonic()

    def _tick(self) -> None:
        start = time.perf_counter()
        now = self._now()
        if self._swap_queue:
            self._swap_between_ticks()
        if self._polled:
            self._poll_observations()
        if not self._obs_ready:
            if not self._assembler.ready:
                self._warn.warning("waiting", "waiting for observations: no data yet for "
                                   f"{self._assembler.missing_terms()}")
                return
            self._obs_ready = True
        loop, obs = self._loop, self._assembler
        try:
            r = loop.step(obs.vector(), obs.oldest_stamp(), now, obs.images() if self._cameras else None)
        except Exception as e:  # never let one bad tick kill the node: hold and report
            self._counters["tick_errors"] += 1
            self._last_event = f"tick {loop.tick - 1}: error {type(e).__name__}: {e}"
            self._warn.warning("tick_error", f"{self._last_event} -> holding the last command")
            r = loop.hold(obs.oldest_stamp())
        if r.command is not None:
            self._out.publish(r.command)
        pub_time = self._now()
        if r.chunk is not None:
            self._chunks.publish(r.chunk, self._newest_stamp, loop.policy.model_id)
        self._stats.record(now, time.perf_counter() - start, pub_time - self._newest_stamp,
                           now - r.stamp, r.inference_s)
        if r.events:
            why = self._stale_reason(now) if EVENT_STALE in r.events else ""
            self._last_event = f"tick {r.tick}: {'+'.join(r.events)}{why}"
            self._warn.warning(r.events[0], f"safety at tick {r.tick}: {', '.join(r.events)}{why} "
                               f"(totals {loop.safety.stats()})")
        if r.restart:
            self._report_restart(loop, r)

    def _stale_reason(self, now: float) -> str:
        """`` (camera 'overhead' 0.512 s old > 0.1 s)``: the term that made the tick stale."""
        name, stamp = self._assembler.stalest()
        limit = self._loop.stale_after_s
        if name in self._frames:
            what, age = "camera", self._contract.image_term(name).max_age_s
            limit = limit if age is None else age
        else:
            what = "term"
        return f" ({what} {name!r} {now - stamp:.3f} s old > {limit:g} s)"

    def _report_restart(self, loop: PolicyController, r: TickResult) -> None:
        """A tick started a new plan (rare: once per episode / per disturbance)."""
        n = r.tick
        if r.restart == RESTART_JUMP:
            why = (f"measured position {r.jump:.3f} rad from the last command "
                   f"(> reset_jump_rad {self.params.reset_jump_rad:g})")
            self._warn.warning("restart_jump", f"tick {n}: new plan at the measured position: {why} "
                               f"(total {loop.restarts[RESTART_JUMP]})")
        else:
            why = f"{self.params.reset_on_change} changed to {loop.marker}"
        events = f"; {'+'.join(r.events)}" if r.events else ""
        self._last_event = f"tick {n}: new plan at the measured position ({why}){events}"

    # ------------------------------------------------------------------ hot swap
    def _request_load(self, path: str, source: str) -> Future:
        if self._loop is None:
            fut = Future()
            fut.set_result((False, f"node is {self._state}: configure it first (the model_path "
                                   f"parameter is used at configure)", ""))
            return fut
        req = _LoadRequest(path, source, self._contract, self.params)
        self._loader.submit(req)
        return req.future

    def _wait_for_tick_boundary(self) -> None:
        """Loader thread, before a load: onnxruntime holds the GIL while it builds a session
        (~2 ms for a small MLP, measured); starting right after a tick lets the hold eat the
        slack before the next tick instead of interrupting one."""
        if self._thread is not None:
            self._tick_done.clear()
            self._tick_done.wait(timeout=0.1)

    def _swap_between_ticks(self) -> None:
        """Called by the tick before anything else: the new model computes this tick."""
        while self._swap_queue:
            self._apply_swap(self._swap_queue.popleft())
        self._wake.trigger()

    def _apply_swap(self, req: _LoadRequest) -> None:
        loop = self._loop
        old = loop.policy.model_id
        kept = loop.swap(req.policy)
        req.text = (f"hot swap {old} -> {req.policy.model_id} before tick {loop.tick} "
                    f"({'plan kept' if kept else 'new plan: chunk length changed'}; swap #{loop.swaps})")
        self._swapped.append(req)

    def _on_wake(self) -> None:
        """Executor thread: finish loads (refuse, or queue for the next tick) and swaps."""
        while self._loader.done:
            req = self._loader.done.popleft()
            if req.policy is not None and (self._loop is None or req.contract is not self._contract):
                req.policy, req.error = None, "the node was reconfigured while the model loaded"
            if req.policy is None:
                running = self._loop.policy.model_id if self._loop is not None else "nothing"
                msg = f"refused {req.path}: {req.error} — still running {running}"
                self._event(msg, error=True)
                if req.source == "parameter":
                    self._set_model_path_param(self._model_path)
                req.future.set_result((False, msg, ""))
            elif self._active:
                self._swap_queue.append(req)
            else:
                self._apply_swap(req)
        while self._swapped:
            req = self._swapped.popleft()
            self._model_path = req.path
            if req.source != "parameter":
                self._set_model_path_param(req.path)
            self._event(req.text)
            req.future.set_result((True, req.text, req.policy.model_id))

    def _set_model_path_param(self, path: str) -> None:
        self._quiet_param = True
        try:
            self.set_parameters([Parameter("model_path", Parameter.Type.STRING, path)])
        finally:
            self._quiet_param = False

    async def _srv_load_policy(self, request, response):
        ok, message, model_id = await self._request_load(request.model_path, "service")
        response.success, response.message, response.model_id = ok, message, model_id
        return response

    def _on_set_parameters(self, params) -> SetParametersResult:
        refused = refuse_static_parameters(params, PolicyParams, " (hot swap)")
        if refused is not None:
            return refused
        for p in params:     # model_path is the only run-time parameter (+ rclpy's use_sim_time)
            if p.name != "model_path" or self._quiet_param:
                continue
            if not isinstance(p.value, str) or not p.value:
                return SetParametersResult(successful=False, reason="model_path must be a non-empty path")
            if self._loop is None:
                self._model_path = p.value  # used at the next configure
            elif p.value != self._model_path:
                self._request_load(p.value, "parameter")  # refused -> reverted, see _on_wake
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ status
    def _publish_status(self) -> None:
        loop = self._loop
        summary = self._stats.summary(self._now()) if loop is not None else {}
        st = status_msg(self.get_clock().now().to_msg(), self._state, self.params, self._last_event,
                        loop, self._contract, summary)
        self._status_pub.publish(st)
        extra = {"model_path": self._model_path, **self._counters, **summary}
        for name, (taken, refused) in self._frames.items():
            extra[f"camera_{name}_frames"], extra[f"camera_{name}_bad_frames"] = taken, refused
        if loop is not None:
            extra.update(loop.safety.stats())
            extra.update({f"new_plan_{k}": v for k, v in loop.restarts.items()})
        self._diag.pub.publish(diagnostics_msg(self._diag.name, st, self._contract.robot if self._contract else "",
                                               extra, not self._obs_ready))

    # ------------------------------------------------------------------ logging
    def _event(self, text: str, error: bool = False) -> None:
        self._last_event = text
        # (rclpy ties a severity to each call site: one call per severity)
        if error:
            self.get_logger().error(text)
        else:
            self.get_logger().info(text)

    def destroy_node(self):
        self._active = False
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5.0)
        self._loader.close()
        return super().destroy_node()


def _executor(node):
    # One executor thread runs services, parameters, status and lock-step ticks; the free-run
    # control thread and the model loader are the node's own threads. (EventsExecutor.spin is
    # unusable in these wheels; BCP_POLICY_EXECUTOR=multi is kept for the bench's comparison.)
    if os.environ.get("BCP_POLICY_EXECUTOR", "single") == "multi":
        return MultiThreadedExecutor(num_threads=2)
    return SingleThreadedExecutor()


def main(args=None) -> int:
    sys.setswitchinterval(GIL_SWITCH_S)
    return run_node(PolicyNode, "policy", (ValueError,), args, executor=_executor)


if __name__ == "__main__":
    raise SystemExit(main())
