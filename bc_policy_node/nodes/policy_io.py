"""Outputs of the policy node: preallocated command/chunk messages, status and diagnostics."""
from __future__ import annotations

import array
from typing import Dict

import numpy as np
from builtin_interfaces.msg import Duration
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import TwistStamped
from std_msgs.msg import Float64MultiArray, MultiArrayDimension
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from bc_msgs.msg import ActionChunk, PolicyStatus

from ..core.contract import EE_VELOCITY, JOINT_POSITION, Contract
from ..core.control.safety import EVENT_JOINT_LIMIT, EVENT_NONFINITE, EVENT_STALE, EVENT_STEP_LIMIT
from ..core.control.params import PolicyParams
from . import qos
from .common import ERROR, OK, WARN, diagnostic_array
from .conversions import to_time

STATUS_FLOATS = ("tick_time_p50_us", "tick_time_p99_us", "inference_time_p50_us", "inference_time_p99_us",
                 "period_jitter_p99_us", "obs_to_cmd_latency_p50_us", "obs_to_cmd_latency_p99_us",
                 "observation_age_s")


class CommandOut:
    """The command publisher with one preallocated message, written in place every tick.

    The generated setters copy sequences; the getters return the stored ``array.array``, so a
    numpy view on it updates the message without allocating lists or messages per tick.
    """

    def __init__(self, node, params: PolicyParams, contract: Contract):
        n = contract.act_dim
        self.topic = params.command_topic()
        if params.command_interface != "trajectory":
            label = "joints" if contract.action.kind == JOINT_POSITION else "action"
            self.msg, self.view = _forward_msg(n, label)
            self.pub = node.create_publisher(Float64MultiArray, self.topic, qos.COMMAND)
        else:  # one point, one control period ahead (JointTrajectoryController semantics)
            self.msg = JointTrajectory()
            self.msg.joint_names = list(contract.action.joints)
            pt = JointTrajectoryPoint()
            pt.positions = array.array("d", bytes(8 * n))
            sec = int(contract.dt)
            pt.time_from_start = Duration(sec=sec, nanosec=int(round((contract.dt - sec) * 1e9)))
            self.msg.points = [pt]
            self.view = np.frombuffer(self.msg.points[0].positions, dtype=np.float64)
            self.pub = node.create_publisher(JointTrajectory, self.topic, qos.COMMAND)
        self.topic = self.pub.topic_name          # after remapping (e.g. to the dagger node's input)

    def publish(self, cmd: np.ndarray) -> None:
        self.view[:] = cmd
        self.pub.publish(self.msg)


def _forward_msg(n: int, label: str):
    msg = Float64MultiArray()
    msg.layout.dim = [MultiArrayDimension(label=label, size=n, stride=n)]
    msg.data = array.array("d", bytes(8 * n))
    return msg, np.frombuffer(msg.data, dtype=np.float64)


class PartsOut:
    """One publisher per part of a multi-part (or non-joint) action, on the contract's topics:
    geometry_msgs/TwistStamped for ``ee_velocity`` (stamped with the node clock, in the part's
    frame), std_msgs/Float64MultiArray for ``gripper`` and ``joint_position`` parts."""

    def __init__(self, node, contract: Contract):
        self._node = node
        self._out = []
        for part, sl in contract.action.part_slices():
            if part.kind == EE_VELOCITY:
                msg = TwistStamped()
                msg.header.frame_id = part.frame_id
                pub = node.create_publisher(TwistStamped, part.topic, qos.COMMAND)
                self._out.append((sl, msg, None, pub))
            else:
                msg, view = _forward_msg(part.dim, "joints" if part.kind == JOINT_POSITION else part.kind)
                self._out.append((sl, msg, view, node.create_publisher(Float64MultiArray, part.topic, qos.COMMAND)))
        self.topic = ", ".join(out[-1].topic_name for out in self._out)   # after remapping

    def publish(self, cmd: np.ndarray) -> None:
        stamp = None
        for sl, msg, view, pub in self._out:
            v = cmd[sl]
            if view is not None:
                view[:] = v
            else:
                stamp = stamp or self._node.get_clock().now().to_msg()
                msg.header.stamp = stamp
                t = msg.twist
                t.linear.x, t.linear.y, t.linear.z = float(v[0]), float(v[1]), float(v[2])
                if len(v) == 6:
                    t.angular.x, t.angular.y, t.angular.z = float(v[3]), float(v[4]), float(v[5])
            pub.publish(msg)


def command_out(node, params: PolicyParams, contract: Contract):
    """The command output for `contract`: the controller-named command stream for a
    joint_position action or ``command_interface: vector`` (`CommandOut`), else one publisher
    per part (`PartsOut`)."""
    if contract.action.kind == JOINT_POSITION or params.command_interface == "vector":
        return CommandOut(node, params, contract)
    return PartsOut(node, contract)


class ChunkOut:
    """bc_msgs/ActionChunk publisher (buffer reallocated only when a swap changes K).

    Chunks are published only while someone subscribes: at 1 kHz a chunk is ~1.2 kB and a
    matched publish costs tens of microseconds.
    """

    def __init__(self, node, topic: str, contract: Contract):
        self.pub = node.create_publisher(ActionChunk, topic, qos.COMMAND)
        self.msg = ActionChunk()
        self.msg.joint_names = list(contract.action.joints)
        self.msg.dt = float(contract.dt)
        self._shape = None

    def publish(self, chunk: np.ndarray, stamp: float, model_id: str) -> None:
        if self.pub.get_subscription_count() == 0:
            return
        if chunk.shape != self._shape:
            self._shape = chunk.shape
            self.msg.actions = array.array("d", bytes(8 * chunk.size))
            self.view = np.frombuffer(self.msg.actions, dtype=np.float64).reshape(chunk.shape)
            self.msg.chunk_length = int(chunk.shape[0])
        self.view[:] = chunk
        self.msg.model_id = model_id
        self.msg.header.stamp = to_time(stamp)
        self.pub.publish(self.msg)


def status_msg(stamp, state: str, params: PolicyParams, last_event: str, loop=None, contract=None,
               summary: Dict[str, float] = None) -> PolicyStatus:
    msg = PolicyStatus()
    msg.header.stamp = stamp
    msg.lifecycle_state = state
    msg.execution_mode = params.execution_mode
    msg.last_event = last_event
    if loop is not None:
        s, c = summary, loop.safety.counts
        msg.model_id = loop.policy.model_id
        msg.target_rate_hz = float(contract.control_rate_hz)
        msg.achieved_rate_hz = float(s["achieved_rate_hz"])
        msg.ticks, msg.missed_ticks = int(s["ticks"]), int(s["missed_ticks"])
        for key in STATUS_FLOATS:
            setattr(msg, key, float(s[key]))
        msg.ensembled_chunks = loop.contributors()
        msg.safety_stale, msg.safety_nan = c[EVENT_STALE], c[EVENT_NONFINITE]
        msg.safety_limit_clamps, msg.safety_step_clamps = c[EVENT_JOINT_LIMIT], c[EVENT_STEP_LIMIT]
        msg.model_swaps = loop.swaps
    return msg


def diagnostics_msg(name: str, st: PolicyStatus, hardware_id: str, extra: Dict[str, object],
                    waiting_for_obs: bool) -> DiagnosticArray:
    if st.lifecycle_state == "active" and st.ticks >= 100 and st.missed_ticks > 0.01 * st.ticks:
        level, message = WARN, f"{st.missed_ticks} of {st.ticks} ticks missed"
    elif st.lifecycle_state == "unconfigured" and st.last_event.startswith("configure refused"):
        level, message = ERROR, st.last_event[:300]
    elif st.lifecycle_state == "active" and waiting_for_obs:
        level, message = WARN, "active, waiting for observations"
    else:
        level, message = OK, st.lifecycle_state
    values = {"model_id": st.model_id, "lifecycle_state": st.lifecycle_state,
              "execution_mode": st.execution_mode, "last_event": st.last_event, **extra}
    return diagnostic_array(st.header.stamp, name, level, message, hardware_id, values)
