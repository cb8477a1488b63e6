"""The DAgger node: between policy, expert and robot while the policy drives (rclpy, no torch).

Per control step (one observation stamp, lock-step) it takes the policy's proposed command for
that observation, asks the expert for its label at the same observation, lets a
`core.dagger.gates` gate decide who acts, sends the executed command to the robot through a
`core.control.safety.SafetyFilter` and publishes a `bc_msgs/FrameTag` describing the frame. The
decision logic is `core.dagger.arbiter.DaggerArbiter` and the waiting rules (deadlines, absent parties)
`core.dagger.frames.FramePairing` (no rclpy); `DaggerNode` is the ROS shell around them.

Pairing (lock-step): the policy node runs with ``lockstep:=true``, ``command_interface:
vector`` (the whole action in one message, every part of a Cartesian + gripper contract too)
and its command topic remapped to ``/dagger/policy_command`` (`graph.dagger_nodes`). It ticks exactly once per
observation stamp and the bridge advances only on *this* node's command, so the n-th policy
command answers the n-th observation stamp: commands are paired in order (FIFO). The final
observation of an episode (``/task_state.done``) consumes the policy's answer to it and
produces no command and no frame tag. After a policy timeout the policy may answer late; a
late answer is then paired with the next stamp (counted as ``policy_timeouts``; the label
stream is unaffected, only ``policy_action`` of that frame is off by one tick).
"""
from __future__ import annotations

import collections
import dataclasses
import math
import time
from typing import Dict, List, Optional, Tuple

import numpy as np

from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import Bool, Float64MultiArray

from bc_msgs.msg import ActionChunk, FrameTag, TaskState
from bc_msgs.srv import QueryExpert

from ..core.sim.env import resolve_contract
from ..core.contract import JOINT_POSITION, ContractError, ObservationAssembler
from ..core.control.controller import ActionReference
from ..core.dagger.arbiter import REASON_EXPERT_UNAVAILABLE, DaggerArbiter, Outcome, load_ensemble
from ..core.dagger.frames import ANSWER_ERROR, Frame, FramePairing
from ..core.dagger.params import DaggerParams
from ..core.sync import StampSync
from . import qos
from .common import ERROR, OK, WARN, Diagnostics, JsonStatus, ThrottledLog, message_class, \
    refuse_static_parameters, run_node
from .conversions import command_msg, has_header, to_time
from .params import declare_and_load
from .policy_io import PartsOut

LOG_EVERY_S = 2.0
PENDING_STAMPS = 64
RESEND_AFTER_S = 0.5       # s; a lock-step round trip is ~2 ms: an older unanswered command was lost
MAX_LATE_REQUESTS = 100      # timed-out expert requests still awaited (a late answer = alive again)


class DaggerNode(Node):
    """Expert-query node: decides, per observation stamp, whether policy or expert acts.

    Subscribes:
        the contract's observation topics (e.g. ``/joint_states`` sensor_msgs/JointState,
        ``/task_state`` bc_msgs/TaskState) and ``task_state_topic`` (episode id, step, done,
        latent mode), STATE QoS; ``policy_command_topic`` (``/dagger/policy_command``,
        std_msgs/Float64MultiArray: the policy node's whole action vector, remapped); ``policy_chunk_topic``
        (``/policy/action_chunk`` bc_msgs/ActionChunk, robot_gated with chunk disagreement only);
        ``~/intervention`` std_msgs/Bool (human_gated: true = the human/expert takes over);
        ``~/teleop_command`` std_msgs/Float64MultiArray (human_gated: a teleoperator's joint
        targets; while fresh they act instead of the expert label).
    Publishes:
        ``/<controller>/commands`` std_msgs/Float64MultiArray: the executed command, through
        the safety filter (joint limits, ``max_step`` per tick from the last executed command);
        for a contract with other action parts one stream per part on the contract's topics, as
        the policy node sends them (TwistStamped for ee_velocity: speed and workspace bounds;
        Float64MultiArray for a gripper: its range);
        ``~/frame_tag`` bc_msgs/FrameTag for every frame that was acted on (actor, labelled,
        expert label, policy proposal, executed command, beta, uncertainty, gate reason; with
        ``label_chunk_length`` K > 1 the expert label is the expert's planned K-step chunk,
        K x act_dim row-major, whose first row is the action that acted);
        ``~/status`` std_msgs/String (JSON counters, transient local) at ``status_rate_hz``.
    Services used:
        ``expert_service`` (``/expert/query`` bc_msgs/QueryExpert), asynchronously, one
        observation per call with the task's latent mode (chunk_length = label_chunk_length
        when > 1, else 1).
    Parameters (`DaggerParams`; defaults with units in config/dagger.yaml):
        contract, variant, beta, seed, controller, policy_command_topic, policy_chunk_topic,
        expert_service, task_state_topic, expert_timeout_periods, policy_timeout_periods,
        absent_after, teleop_timeout_periods, uncertainty_source, ensemble_models,
        uncertainty_threshold, uncertainty_scale, uncertainty_horizon, chunk_window,
        query_budget, release, min_expert_ticks, status_rate_hz, label_chunk_length. ``beta``
        (the DAgger loop sets it per round), ``expert_timeout_periods`` and
        ``policy_timeout_periods`` change at run time (from the next frame on); the others are
        read once.

    Failure behaviour: an expert that does not answer within ``expert_timeout_periods`` (or
    refuses, or whose service is gone) leaves the frame unlabelled and the policy acts; a
    policy that does not answer within ``policy_timeout_periods`` is covered by the expert
    label (or the last command is held). After ``absent_after`` consecutive timeouts a party
    is not waited for until it answers again, so a dead process never stalls the loop. A
    lock-step pair that comes again (the bridge re-publishes the pair it still waits on, ~/step 0)
    is answered with the command already sent for it if that was > 0.5 s ago (it was lost: e.g.
    sent before the bridge matched a restarted dagger node); no new frame (``resent_commands``).
    """

    def __init__(self, node_name: str = "dagger", **kwargs):
        super().__init__(node_name, **kwargs)
        self.params: DaggerParams = declare_and_load(self, DaggerParams)
        p = self.params
        if not p.contract:
            raise ValueError("parameter 'contract' is empty: give the robot's contract YAML")
        self.contract = resolve_contract(p.contract)
        ensemble = None
        if p.resolved_uncertainty_source() == "ensemble":
            ensemble = load_ensemble(p.ensemble_models, self.contract, p.uncertainty_horizon)
        self.arbiter = DaggerArbiter(self.contract, p, ensemble)
        self.dt = self.contract.dt
        self._reference = ActionReference(self.contract)
        self._assembler = ObservationAssembler(self.contract)
        self._pairing = FramePairing(p.absent_after, log=self._log)
        self._late: collections.deque = collections.deque()
        self._episode: Optional[int] = None
        # (stamp, command sent, monotonic time): the answer to re-send if that stamp comes again
        self._last_answer: Optional[Tuple[Tuple[int, int], np.ndarray, float]] = None
        self._step_of_key: Dict[Tuple[int, int], int] = {}
        self._pending_chunks: Dict[Tuple[int, int], np.ndarray] = {}
        self._intervention = False
        self._teleop: Optional[Tuple[float, np.ndarray]] = None
        self._counts: collections.Counter = collections.Counter()
        self._warn = ThrottledLog(self.get_logger(), LOG_EVERY_S)
        self._wall = Clock(clock_type=ClockType.STEADY_TIME)

        # --- observation intake: stamped topics are paired by stamp (core.sync), the others held (ZOH)
        topics = dict(self.contract.observation_topics())
        topics.setdefault(p.task_state_topic, "bc_msgs/msg/TaskState")
        sync_topics: List[str] = []
        for topic, type_name in topics.items():
            cls = message_class(type_name)
            stamped = has_header(cls)
            if stamped:
                sync_topics.append(topic)
            self.create_subscription(cls, topic, self._make_obs_callback(topic, stamped), qos.STATE)
        if p.task_state_topic not in sync_topics:
            raise ContractError(f"{p.task_state_topic} must carry a header (bc_msgs/TaskState)")
        self._sync = StampSync(sync_topics, PENDING_STAMPS)

        self.create_subscription(Float64MultiArray, p.policy_command_topic, self._on_policy_command, qos.COMMAND)
        if self.arbiter.source == "chunk":
            self.create_subscription(ActionChunk, p.policy_chunk_topic, self._on_chunk, qos.COMMAND)
        reliable10 = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.create_subscription(Bool, "~/intervention", self._on_intervention, reliable10)
        self.create_subscription(Float64MultiArray, "~/teleop_command", self._on_teleop, qos.COMMAND)
        self._send, self._command_topic = self._command_output()
        self._tag_pub = self.create_publisher(FrameTag, "~/frame_tag", qos.COMMAND)
        self._status_pub = JsonStatus(self)
        self._diag = Diagnostics(self, "dagger arbiter", hardware_id=self.contract.robot)
        self._expert = self.create_client(QueryExpert, p.expert_service)
        wait = min(p.expert_timeout_periods, p.policy_timeout_periods) * self.dt
        self._deadline_timer = self.create_timer(min(max(wait / 4, 0.001), 0.02), self._on_deadline_timer,
                                                 clock=self._wall)
        self._deadline_timer.cancel()
        self.create_timer(1.0 / p.status_rate_hz, self._publish_status, clock=self._wall)
        self._expert_ready = False     # ~/status is also published when these change (10 Hz check)
        self._linked: Dict[str, bool] = {}
        self.create_timer(0.1, self._check_expert_ready, clock=self._wall)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.get_logger().info(
            f"dagger: variant {p.variant}"
            + (f" beta={p.beta:g}" if p.variant == "classic" else "")
            + (f" uncertainty={self.arbiter.source}" if self.arbiter.source else "")
            + f", contract {self.contract.name!r}, policy on {p.policy_command_topic}, "
            f"expert {p.expert_service}, commands on {self._command_topic}")
        self._publish_status()

    def _command_output(self):
        """(send(command vector), topic names): the forward controller's Float64MultiArray for a
        joint_position action, else one stream per action part, as the policy node sends them
        (`policy_io.PartsOut`: TwistStamped for ee_velocity, Float64MultiArray for a gripper)."""
        if self.contract.action.kind != JOINT_POSITION:
            out = PartsOut(self, self.contract)
            return out.publish, out.topic
        pub = self.create_publisher(Float64MultiArray, self.params.command_topic(), qos.COMMAND)
        joints = self.contract.action.joints
        return (lambda cmd: pub.publish(command_msg(cmd, joints))), self.params.command_topic()

    def _log(self, level: str, text: str) -> None:
        # (rclpy ties a severity to each call site: one call per severity)
        if level == "warn":
            self.get_logger().warn(text)
        else:
            self.get_logger().info(text)
    def _on_set_parameters(self, params) -> SetParametersResult:
        refused = refuse_static_parameters(params, DaggerParams)
        if refused is not None:
            return refused
        changes = {}
        for prm in params:
            if prm.name == "use_sim_time":
                continue
            try:
                changes[prm.name] = float(prm.value)
            except (TypeError, ValueError):
                return SetParametersResult(successful=False, reason=f"{prm.name} must be a number")
        if not changes:
            return SetParametersResult(successful=True)
        try:
            new = dataclasses.replace(self.params, **changes)   # validated in __post_init__
        except ValueError as e:
            return SetParametersResult(successful=False, reason=str(e))
        self.params = new
        if "beta" in changes:
            self.arbiter.set_beta(new.beta)
        self.get_logger().info("set " + ", ".join(f"{k}={v:g}" for k, v in changes.items()))
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ observations
    def _make_obs_callback(self, topic: str, stamped: bool):
        def callback(msg):
            if not stamped:
                self._observe(topic, msg, time.monotonic())
                return
            st = msg.header.stamp
            self._arrival(topic, (st.sec, st.nanosec), msg)
        return callback

    def _observe(self, topic: str, msg, stamp: float) -> bool:
        try:
            self._assembler.update(topic, msg, stamp)
            return True
        except ContractError as e:
            self._counts["bad_observations"] += 1
            self._warn.warning("bad_obs", f"observation refused: {e}")
            return False

    def _arrival(self, topic: str, key, msg) -> None:
        """Lock-step intake: a frame starts when every stamped topic has delivered its stamp."""
        if self._sync.is_repeat(key):
            if topic == self.params.task_state_topic:
                self._repeat(key)              # once per re-published pair
            return
        released = self._sync.add(topic, key, msg)
        if not released:
            return
        msgs = dict(released)
        ts: TaskState = msgs[self.params.task_state_topic]
        episode = int(ts.episode_id)
        if episode != self._episode:
            self._episode = episode
            self.arbiter.begin_episode(episode, int(ts.seed))
            self._step_of_key.clear()
            self._counts["episodes"] += 1
        ok = all(self._observe(t, m, key[0] + key[1] * 1e-9) for t, m in released)
        if not ok or not self._assembler.ready:
            self._warn.warning("obs_incomplete", "observation incomplete: no data yet for "
                                 f"{self._assembler.missing_terms()}; frame skipped")
            return
        obs = self._assembler.vector()
        frame = Frame(key, key[0] + key[1] * 1e-9, episode, int(ts.step), int(ts.seed), int(ts.mode),
                      bool(ts.done), obs, self._reference(obs))
        self._start_frame(frame)

    def _repeat(self, key) -> None:
        """A stamp already acted on came again: no new frame. If it is the last one answered and
        that answer went out > RESEND_AFTER_S ago, the lock-step bridge is re-publishing the pair
        it still waits on (~/step 0): our command was lost (sent before the bridge matched this
        publisher, or dropped by its rate limit), so the same command goes again. A command
        still in flight is never doubled."""
        self._counts["stale_stamps"] += 1
        answer = self._last_answer
        if answer is not None and answer[0] == key and time.monotonic() - answer[2] > RESEND_AFTER_S:
            self._counts["resent_commands"] += 1
            self._send(answer[1])

    def _start_frame(self, f: Frame) -> None:
        p = self.params
        self._step_of_key[f.key] = f.step
        if len(self._step_of_key) > PENDING_STAMPS:
            self._step_of_key.pop(next(iter(self._step_of_key)))
        chunk = self._pending_chunks.pop(f.key, None)
        if chunk is not None:
            self.arbiter.add_chunk(f.step, chunk)
        expert_wait = None
        if f.done:
            f.label = None                        # the final observation needs no label
        elif not self._expert.service_is_ready():
            f.label, f.label_failure = None, REASON_EXPERT_UNAVAILABLE
        else:
            req = QueryExpert.Request(count=1, observations=f.obs.tolist(), modes=[f.mode],
                                      chunk_length=p.label_chunk())
            f.request = self._expert.call_async(req)
            f.request.add_done_callback(lambda fut, frame=f: self._on_expert(frame, fut))
            expert_wait = p.expert_timeout_periods * self.dt
        # an absent expert gets one control period (so that it can come back), at most
        self._pairing.open(f, p.policy_timeout_periods * self.dt, expert_wait, absent_wait_s=self.dt)
        self._advance()

    # ------------------------------------------------------------------ answers
    def _on_expert(self, f: Frame, fut) -> None:
        try:
            resp = fut.result()
        except Exception as e:                     # noqa: BLE001 - any client failure = unlabelled
            resp, err = None, str(e)
        else:
            err = "" if resp is None else resp.message
        a, k = self.contract.act_dim, self.params.label_chunk()
        plan = None
        if resp is not None and resp.success and len(resp.actions) >= k * a \
                and (k == 1 or int(resp.chunk_length) == k):
            plan = np.asarray(resp.actions[:k * a], dtype=float).reshape(k, a)
            if not np.all(np.isfinite(plan)):
                plan, err = None, "non-finite label"
        if self._pairing.expert_answer(f, plan, err) == ANSWER_ERROR:
            self._warn.warning("expert_error", f"expert query failed at step {f.step}: {err}")
        self._advance()

    def _on_policy_command(self, msg: Float64MultiArray) -> None:
        if self._pairing.policy_answer(np.asarray(msg.data, dtype=float)):
            self._advance()

    def _on_chunk(self, msg: ActionChunk) -> None:
        n = len(msg.joint_names) or self.contract.act_dim
        if msg.chunk_length < 1 or len(msg.actions) != msg.chunk_length * n or n != self.contract.act_dim:
            return
        chunk = np.asarray(msg.actions, dtype=float).reshape(msg.chunk_length, n)
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        step = self._step_of_key.get(key)
        if step is None:
            self._pending_chunks[key] = chunk     # the chunk beat the observation
            while len(self._pending_chunks) > PENDING_STAMPS:
                self._pending_chunks.pop(next(iter(self._pending_chunks)))
        else:
            self.arbiter.add_chunk(step, chunk)

    def _on_intervention(self, msg: Bool) -> None:
        if bool(msg.data) != self._intervention:
            self.get_logger().info(f"intervention {'on' if msg.data else 'off'}")
        self._intervention = bool(msg.data)

    def _on_teleop(self, msg: Float64MultiArray) -> None:
        cmd = np.asarray(msg.data, dtype=float)
        if cmd.shape == (self.contract.act_dim,) and np.all(np.isfinite(cmd)):
            self._teleop = (time.monotonic(), cmd)
        else:
            self._counts["bad_teleop"] += 1

    # ------------------------------------------------------------------ acting
    def _on_deadline_timer(self) -> None:
        self._advance()

    def _advance(self) -> None:
        """Act on the frames whose label and policy answer are in (or timed out), oldest first."""
        for f in self._pairing.pop_ready(self._keep_late_request):
            self._act(f)
        if not self._pairing.waiting:
            self._deadline_timer.cancel()
        elif self._deadline_timer.is_canceled():
            self._deadline_timer.reset()

    def _keep_late_request(self, f: Frame) -> None:
        """An expert query timed out: keep waiting for its answer (it tells that the expert is
        back), but not forever."""
        if f.request is None:
            return
        self._late.append(f.request)
        while len(self._late) > MAX_LATE_REQUESTS:
            old = self._late.popleft()
            if not old.done():
                try:
                    self._expert.remove_pending_request(old)
                except Exception:  # noqa: BLE001 - answered / removed meanwhile
                    pass

    def _act(self, f: Frame) -> None:
        if f.done:                                # final observation: nothing to command
            return
        if self.arbiter.episode_id != f.episode_id:
            self.arbiter.begin_episode(f.episode_id, f.task_seed)
        teleop = None
        if self._teleop is not None and \
                time.monotonic() - self._teleop[0] <= self.params.teleop_timeout_periods * self.dt:
            teleop = self._teleop[1]
        policy = f.policy if f.policy is not None and f.policy.shape == (self.contract.act_dim,) else None
        out = self.arbiter.decide(f.obs, f.q, f.step, f.label, f.label_failure, policy,
                                  intervention=self._intervention, teleop=teleop)
        # The tag first: it is published before the command that advances the robot, so in
        # publish order it sits between observation k and observation k + 1 (the dataset
        # builder cross-checks its observation against the raw topics at its time).
        self._tag_pub.publish(self._frame_tag(f, policy, out))
        if out.command is not None:
            cmd = np.asarray(out.command, dtype=float)
            self._send(cmd)
            self._last_answer = (f.key, cmd, time.monotonic())

    def _frame_tag(self, f: Frame, policy, out: Outcome) -> FrameTag:
        m = FrameTag()
        m.header.stamp = to_time(f.stamp)
        m.episode_id = int(f.episode_id)
        m.step = int(f.step)
        m.actor = int(out.actor)
        m.labelled = bool(out.labelled)
        m.beta = float(out.beta)
        m.uncertainty = float(out.uncertainty) if math.isfinite(out.uncertainty) else -1.0
        m.gate_reason = out.reason
        m.observation = f.obs.tolist()
        if out.expert_action is None:
            m.expert_action = []
        elif f.label_chunk is not None and out.expert_action is f.label:
            m.expert_action = f.label_chunk.ravel().tolist()    # K x A, row-major; row 0 = the label
        else:                                                   # single action (or a teleop command)
            m.expert_action = np.asarray(out.expert_action, float).tolist()
        m.policy_action = [] if policy is None else policy.tolist()
        m.executed_action = [] if out.command is None else np.asarray(out.command, float).tolist()
        return m

    # ------------------------------------------------------------------ status / logs
    def _check_expert_ready(self) -> None:
        """10 Hz: ~/status at once when the expert service or an input appears / disappears."""
        ready = self._expert.service_is_ready()
        links = {t: n > 0 for t, n in self.links().items()}
        if ready != self._expert_ready or links != self._linked:
            if ready != self._expert_ready:
                self.get_logger().info(f"expert service {self.params.expert_service} "
                                       f"{'available' if ready else 'gone'}")
            self._expert_ready, self._linked = ready, links
            self._publish_status()

    def links(self) -> Dict[str, int]:
        """Publishers this node has discovered on its inputs (0 = not connected yet)."""
        topics = list(self._sync.topics) + [self.params.policy_command_topic]
        return {t: self.count_publishers(t) for t in topics}

    def status(self) -> Dict[str, object]:
        c = {**self.arbiter.counts, **self._pairing.counts, **self._counts}
        return {"variant": self.params.variant, "beta": self.params.beta, "episode_id": self._episode,
                "expert_ready": self._expert_ready, "links": self.links(),
                "policy_absent": self._pairing.policy_absent, "expert_absent": self._pairing.expert_absent,
                "pending_frames": len(self._pairing.frames), "intervention": self._intervention,
                **{k: int(v) for k, v in c.items()}}

    def _publish_status(self) -> None:
        st = self.status()
        self._status_pub.publish(st)
        absent = [who for who in ("policy", "expert") if st[f"{who}_absent"]]
        if absent:
            level, message = ERROR, f"{' and '.join(absent)} absent: the robot holds"
        elif not st["expert_ready"]:
            level, message = WARN, f"expert service {self.params.expert_service} not available"
        else:
            level, message = OK, f"{st['variant']}: episode {st['episode_id']}"
        self._diag.publish(level, message, {k: v for k, v in st.items() if k != "links"})


def main(args=None) -> int:
    return run_node(DaggerNode, "dagger", (ValueError, ContractError), args)


if __name__ == "__main__":
    raise SystemExit(main())
