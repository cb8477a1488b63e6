"""The policy node as a real process over real DDS; this test process plays the robot.

The robot publishes sensor_msgs/JointState + bc_msgs/TaskState per the test contract
(test/ros/data/test_arm_reach.yaml) and listens to the commands, the chunks on
/policy/action_chunk and /policy/status. Policies are tiny ONNX graphs built here with
onnx.helper (no torch): an affine function of the observation, which outputs NaN whenever
goal[1] < 0 (fault injection from the robot side). Most tests run the node in lock-step
(one tick per observation stamp), so every command can be checked exactly.
"""
import math
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from rcl_interfaces.msg import Parameter as ParameterMsg  # noqa: E402
from rcl_interfaces.msg import ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import GetParameters, SetParameters  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from bc_msgs.msg import ActionChunk, PolicyStatus, TaskState  # noqa: E402
from bc_msgs.srv import LoadPolicy  # noqa: E402
from bc_policy_node.core.contract import Contract  # noqa: E402
from bc_policy_node.core.control.runtime import embed_metadata  # noqa: E402
from bc_policy_node.graph import policy_nodes  # noqa: E402
from bc_policy_node.nodes import qos  # noqa: E402
from bc_policy_node.nodes.conversions import to_time  # noqa: E402
from bc_policy_node.procs import NodeProcess  # noqa: E402

pytestmark = pytest.mark.ros
CONTRACT_PATH = Path(__file__).resolve().parent / "data" / "test_arm_reach.yaml"
CONTRACT = Contract.load(CONTRACT_PATH)
K, A, D = CONTRACT.chunk_length, CONTRACT.act_dim, CONTRACT.obs_dim
JOINTS = list(CONTRACT.action.joints)
LOWER, UPPER = np.array(CONTRACT.action.lower), np.array(CONTRACT.action.upper)
MAX_STEP = np.array(CONTRACT.action.max_step)
GOAL0, GOAL1 = 3, 4            # goal indices in the observation vector (joint_pos first)
TIMEOUT = 20.0                 # s; generous: waits end as soon as the condition holds


# ----------------------------------------------------------------------------- policies
def affine_weights(goal_gain, bias, k=K):
    """W (D, k*A), b (k*A): action[k, a] = q[a] + goal_gain[k] * goal[0] + bias[k, a]."""
    w = np.zeros((D, k * A))
    for kk in range(k):
        for a in range(A):
            w[a, kk * A + a] = 1.0
            w[GOAL0, kk * A + a] = np.broadcast_to(goal_gain, (k,))[kk]
    return w, np.broadcast_to(bias, (k, A)).reshape(-1).astype(float)


def affine_model(path, goal_gain=0.0, bias=0.0, k=K, contract=CONTRACT):
    """ONNX chunk policy obs @ W + b, plus 0 * sqrt(goal[1]) so that goal[1] < 0 yields NaN."""
    w, b = affine_weights(goal_gain, bias, k)
    inits = [numpy_helper.from_array(w.astype(np.float32), "W"), numpy_helper.from_array(b.astype(np.float32), "b"),
             numpy_helper.from_array(np.array([GOAL1], np.int64), "s0"),
             numpy_helper.from_array(np.array([GOAL1 + 1], np.int64), "s1"),
             numpy_helper.from_array(np.array([1], np.int64), "ax"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
             numpy_helper.from_array(np.array([-1, k, A], np.int64), "shape")]
    nodes = [helper.make_node("MatMul", ["obs", "W"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["lin"]),
             helper.make_node("Slice", ["obs", "s0", "s1", "ax"], ["g1"]), helper.make_node("Sqrt", ["g1"], ["sq"]),
             helper.make_node("Mul", ["sq", "zero"], ["gate"]), helper.make_node("Add", ["lin", "gate"], ["flat"]),
             helper.make_node("Reshape", ["flat", "shape"], ["actions"])]
    graph = helper.make_graph(nodes, "affine_policy",
                              [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["B", D])],
                              [helper.make_tensor_value_info("actions", TensorProto.FLOAT, ["B", k, A])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    embed_metadata(model, contract, {"kind": "chunk_mlp", "chunk_length": k})
    onnx.save(model, str(path))
    return path


def affine_reference(obs, goal_gain=0.0, bias=0.0, k=K):
    w, b = affine_weights(goal_gain, bias, k)
    x = np.asarray(obs, np.float32)
    return (x @ w.astype(np.float32) + b.astype(np.float32)).reshape(k, A).astype(float)


def mismatched_contract():
    d = CONTRACT.to_dict()
    d.update(robot="other_arm", control_rate_hz=100.0)
    d["action"]["joints"] = ["a1", "a2", "a3"]
    return Contract.from_dict(d)


# ----------------------------------------------------------------------------- the robot
class Robot:
    """Publishes observations, records commands / chunks / status, calls the node's services."""

    def __init__(self, interface="forward", controller="forward_position_controller"):
        self.node = rclpy.create_node("test_robot")
        self.ex = SingleThreadedExecutor()
        self.ex.add_node(self.node)
        n = self.node
        self.js_pub = n.create_publisher(JointState, "/joint_states", qos.STATE)
        self.ts_pub = n.create_publisher(TaskState, "/task_state", qos.STATE)
        self.commands, self.trajectories, self.chunks, self.status = [], [], [], None
        if interface == "forward":
            self.cmd_topic = f"/{controller}/commands"
            n.create_subscription(Float64MultiArray, self.cmd_topic,
                                  lambda m: self.commands.append(np.array(m.data)), qos.COMMAND)
        else:
            self.cmd_topic = f"/{controller}/joint_trajectory"

            def on_traj(m):
                self.trajectories.append(m)
                self.commands.append(np.array(m.points[0].positions))
            n.create_subscription(JointTrajectory, self.cmd_topic, on_traj, qos.COMMAND)
        n.create_subscription(ActionChunk, "/policy/action_chunk", self.chunks.append, qos.COMMAND)
        n.create_subscription(PolicyStatus, "/policy/status", self._on_status, qos.STATUS)

    def _on_status(self, msg):
        self.status = msg

    def close(self):
        self.ex.shutdown()
        self.node.destroy_node()

    def spin_until(self, cond, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                return False
            self.ex.spin_once(timeout_sec=0.005)
        return True

    def spin_for(self, seconds):
        self.spin_until(lambda: False, seconds)

    def wait_status(self, pred, proc, what, timeout=TIMEOUT):
        ok = self.spin_until(lambda: self.status is not None and pred(self.status), timeout)
        assert ok, f"status never showed {what}; last status: {self.status}\n--- node log:\n{proc.log()[-4000:]}"
        return self.status

    def wait_active(self, proc):
        self.wait_status(lambda s: s.lifecycle_state == "active", proc, "lifecycle_state active")
        ok = self.spin_until(lambda: self.js_pub.get_subscription_count() > 0
                             and self.ts_pub.get_subscription_count() > 0
                             and self.node.count_publishers(self.cmd_topic) > 0
                             and self.node.count_publishers("/policy/action_chunk") > 0)
        assert ok, "policy node topics never matched\n" + proc.log()[-3000:]

    def publish(self, q, goal, stamp=None, episode_id=0):
        st = to_time(time.time() if stamp is None else stamp)
        js = JointState(name=JOINTS, position=[float(v) for v in q], velocity=[0.0] * len(JOINTS))
        js.header.stamp = st
        ts = TaskState(task="reach", goal=[float(v) for v in goal], status="running", episode_id=episode_id)
        ts.header.stamp = st
        self.js_pub.publish(js)
        self.ts_pub.publish(ts)

    def step(self, q, goal, proc, episode_id=0):
        """Lock-step: one observation -> exactly one command."""
        n = len(self.commands)
        self.publish(q, goal, episode_id=episode_id)
        assert self.spin_until(lambda: len(self.commands) > n), \
            f"no command for observation {n}\n--- node log:\n{proc.log()[-3000:]}"
        return self.commands[-1]

    def call(self, srv_type, name, request, timeout=TIMEOUT):
        client = self.node.create_client(srv_type, name)
        assert client.wait_for_service(timeout_sec=timeout), f"service {name} not available"
        fut = client.call_async(request)
        assert self.spin_until(fut.done, timeout), f"no response from {name}"
        self.node.destroy_client(client)
        return fut.result()

    def call_async(self, srv_type, name, request):
        client = self.node.create_client(srv_type, name)
        assert client.wait_for_service(timeout_sec=TIMEOUT), f"service {name} not available"
        return client.call_async(request)


def set_model_path_request(path):
    return SetParameters.Request(parameters=[ParameterMsg(name="model_path", value=ParameterValue(
        type=ParameterType.PARAMETER_STRING, string_value=str(path)))])


def chunk_array(msg):
    return np.array(msg.actions).reshape(msg.chunk_length, len(msg.joint_names))


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def ros():
    rclpy.init()
    yield
    rclpy.shutdown()


@pytest.fixture
def robot(ros):
    made = []

    def make(**kw):
        made.append(Robot(**kw))
        return made[-1]
    yield make
    for r in made:
        r.close()


@pytest.fixture
def start(tmp_path):
    procs = []

    def start_node(model, execution_mode="temporal_ensembling", autostart=True, **params):
        spec = policy_nodes(model=str(model), execution_mode=execution_mode, autostart=autostart)[0]
        extra = {"contract": str(CONTRACT_PATH), "status_rate_hz": 20.0, **params}
        procs.append(NodeProcess(spec, tmp_path / f"logs{len(procs)}", extra_params=extra))
        return procs[-1]
    yield start_node
    for p in procs:
        rc = p.stop()
        assert rc == 0, f"policy node did not shut down cleanly (exit {rc}):\n{p.log()[-3000:]}"


# ----------------------------------------------------------------------------- tests
def test_temporal_ensembling_commands_equal_closed_form_average_of_published_chunks(tmp_path, start, robot):
    gain, bias = 0.01 * (np.arange(K) - 3.5), 0.002 * (np.arange(K) + 1)[:, None]
    proc = start(affine_model(tmp_path / "a.onnx", gain, bias), lockstep=True, m=0.1)
    r = robot()
    r.wait_active(proc)
    q, observations, steps = np.zeros(A), [], 60
    for n in range(steps):
        goal = [0.3 * math.sin(n / 5.0), 0.0]
        observations.append(np.r_[q, goal])
        q = r.step(q, goal, proc)          # the robot reaches each command exactly
    assert r.spin_until(lambda: len(r.chunks) >= steps)
    r.spin_for(0.3)
    assert len(r.commands) == steps and len(r.chunks) == steps, "one command and one chunk per observation"
    chunks = [chunk_array(c) for c in r.chunks]
    for obs, c in zip(observations, chunks):  # the node assembled the observation as the robot sent it
        np.testing.assert_allclose(c, affine_reference(obs, gain, bias), atol=1e-6)
    for n, cmd in enumerate(r.commands):    # ACT: w_i = exp(-m i), i = 0 the oldest chunk covering tick n
        covering = [chunks[j][n - j] for j in range(max(0, n - K + 1), n + 1)]
        w = np.exp(-0.1 * np.arange(len(covering)))
        expected = (w[:, None] * np.array(covering)).sum(axis=0) / w.sum()
        np.testing.assert_allclose(cmd, expected, rtol=0, atol=1e-12, err_msg=f"tick {n}")
    s = r.wait_status(lambda s: s.ticks >= steps, proc, f"{steps} ticks")
    assert (s.safety_step_clamps, s.safety_limit_clamps, s.safety_nan, s.safety_stale) == (0, 0, 0, 0)
    assert s.ensembled_chunks == K and s.execution_mode == "temporal_ensembling"
    assert s.model_id == r.chunks[0].model_id and s.model_swaps == 0


def test_safety_rules_fire_on_injected_faults(tmp_path, start, robot):
    """NaN output -> hold + counter; a far target -> step clamps, then joint-limit clamps."""
    proc = start(affine_model(tmp_path / "push.onnx", goal_gain=0.5), lockstep=True)
    r = robot()
    r.wait_active(proc)
    q0 = np.array([0.1, 0.2, -0.1])
    q, cmds = q0, []
    for n in range(5):                      # goal[0] = 0: the policy says "stay"
        q = r.step(q, [0.0, 0.0], proc)
        cmds.append(q)
    np.testing.assert_allclose(cmds, [q0] * 5, atol=1e-6)
    for n in range(5):                      # goal[1] < 0: NaN chunks are rejected, the arm holds
        q = r.step(q, [0.0, -1.0], proc)
        cmds.append(q)
    assert all(np.array_equal(c, cmds[4]) for c in cmds[5:10]), "NaN output must hold the last command"
    s = r.wait_status(lambda s: s.ticks >= 10, proc, "10 ticks")
    assert s.safety_nan == 5 and "nonfinite_action" in s.last_event
    for n in range(50):                     # goal[0] = 1: targets 0.5 rad away -> clamped
        q = r.step(q, [1.0, 0.0], proc)
        cmds.append(q)
    cmds = np.array(cmds)
    steps = np.abs(np.diff(np.vstack([q0, cmds]), axis=0))
    assert np.all(steps <= MAX_STEP), f"step bound violated: {steps.max(axis=0)}"
    assert np.all(cmds >= LOWER) and np.all(cmds <= UPPER)
    assert np.array_equal(cmds[-1], UPPER), f"the arm should end clamped at the upper limits, got {cmds[-1]}"
    np.testing.assert_allclose(steps[10], MAX_STEP, rtol=1e-12, err_msg="the first push tick moves max_step")
    s = r.wait_status(lambda s: s.ticks >= 60, proc, "60 ticks")
    assert s.safety_step_clamps > 0 and s.safety_limit_clamps > 0
    assert s.safety_nan == 5 and s.safety_stale == 0


def test_stale_observations_hold_then_recover_and_deactivate_stops_commands(tmp_path, start, robot):
    """Free-running timer at 50 Hz, trajectory interface."""
    gain, bias = 0.0, 0.004
    proc = start(affine_model(tmp_path / "drift.onnx", gain, bias), command_interface="trajectory")
    r = robot(interface="trajectory")
    r.wait_active(proc)
    q = np.zeros(A)

    def stream(seconds, stamp_offset=0.0):
        nonlocal q
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            r.publish(q, [0.0, 0.0], stamp=time.time() - stamp_offset)
            r.spin_for(0.02)
            if r.commands:
                q = r.commands[-1]

    stream(1.0)
    assert len(r.commands) >= 10, proc.log()[-3000:]
    t = r.trajectories[-1]
    assert list(t.joint_names) == JOINTS and len(t.points) == 1
    assert t.points[0].time_from_start.nanosec == 20_000_000  # one period ahead
    moving = np.array(r.commands[-10:])
    assert np.all(moving[-1] > moving[0] + 1e-3), "the drift policy moves the arm"

    # Observations stop: after stale_after_s the node keeps ticking but holds.
    r.wait_status(lambda s: s.safety_stale > 0, proc, "stale holds")
    n = len(r.commands)
    r.spin_for(0.4)
    held = np.array(r.commands[n:])
    assert len(held) >= 5 and np.all(held == held[0]), "stale observations must hold the last command"
    # Observations arrive again but stamped 1 s in the past: still stale, still holding.
    n = len(r.commands)
    stream(0.4, stamp_offset=1.0)
    old = np.array(r.commands[n:])
    assert len(old) >= 5 and np.all(old == held[0])
    # Fresh observations: the policy moves again (within the step bound).
    n = len(r.commands)
    stream(0.5)
    fresh = np.array(r.commands[n:])
    assert len(fresh) >= 5 and np.any(fresh != held[0])
    assert np.all(np.abs(np.diff(np.vstack([held[0], fresh]), axis=0)) <= MAX_STEP)

    res = r.call(ChangeState, "/policy/change_state",
                 ChangeState.Request(transition=Transition(id=Transition.TRANSITION_DEACTIVATE)))
    assert res.success
    r.wait_status(lambda s: s.lifecycle_state == "inactive", proc, "inactive")
    r.spin_for(0.1)
    n = len(r.commands)
    stream(0.5)
    assert len(r.commands) == n, "an inactive policy node must not command"


def test_sim_time_drives_ticks_and_staleness(tmp_path, start, robot):
    """With use_sim_time the loop ticks on /clock and judges staleness on the sim clock."""
    proc = start(affine_model(tmp_path / "drift.onnx", bias=0.004), use_sim_time=True)
    r = robot()
    clock = r.node.create_publisher(Clock, "/clock", qos.CLOCK)
    r.wait_active(proc)
    assert r.spin_until(lambda: clock.get_subscription_count() > 0)
    sim, q = 1000.0, np.zeros(A)                       # sim time: 1000 s after the epoch

    def advance(steps, publish_clock=True):
        nonlocal sim, q
        for _ in range(steps):
            sim += CONTRACT.dt
            if publish_clock:
                clock.publish(Clock(clock=to_time(sim)))
            r.publish(q, [0.0, 0.0], stamp=sim)
            r.spin_for(0.01)
            if r.commands:
                q = r.commands[-1]

    advance(60)
    assert len(r.commands) >= 20, proc.log()[-3000:]
    s = r.wait_status(lambda s: s.ticks >= 20, proc, "sim-time ticks")
    assert s.safety_stale == 0, "observations stamped in sim time are fresh on the sim clock"
    cmds = np.array(r.commands)
    assert np.all(np.diff(cmds, axis=0) >= 0) and np.all(cmds[-1] > cmds[0]), "the drift policy moves the arm"
    r.spin_for(0.2)
    n = len(r.commands)
    advance(30, publish_clock=False)                   # sim paused: observations arrive, no ticks
    assert len(r.commands) == n, "a paused /clock must pause the control loop"


def test_contract_mismatch_refuses_configure_and_names_each_mismatch(tmp_path, start, robot):
    model = affine_model(tmp_path / "other.onnx", contract=mismatched_contract())
    proc = start(model, autostart=True)
    r = robot()
    s = r.wait_status(lambda s: s.last_event.startswith("configure refused"), proc, "configure refused")
    assert s.lifecycle_state == "unconfigured" and s.model_id == ""
    for needle in ("robot: model 'other_arm' vs robot 'test_arm'", "control_rate_hz: model 100.0 vs robot 50.0",
                   "action.joints: model ['a1', 'a2', 'a3'] vs robot ['j1', 'j2', 'j3']"):
        assert needle in s.last_event, s.last_event
        assert needle in proc.log()
    res = r.call(ChangeState, "/policy/change_state",
                 ChangeState.Request(transition=Transition(id=Transition.TRANSITION_CONFIGURE)))
    assert not res.success
    res = r.call(ChangeState, "/policy/change_state",
                 ChangeState.Request(transition=Transition(id=Transition.TRANSITION_ACTIVATE)))
    assert not res.success
    state = r.call(GetState, "/policy/get_state", GetState.Request())
    assert state.current_state.label == "unconfigured"
    assert r.node.count_publishers(r.cmd_topic) == 0, "an unconfigured node has no command publisher"


def test_hot_swap_under_load_loses_no_tick_and_refuses_bad_models(tmp_path, start, robot):
    a = affine_model(tmp_path / "a.onnx", bias=0.001)
    b = affine_model(tmp_path / "b.onnx", bias=0.002)
    c = affine_model(tmp_path / "c.onnx", bias=0.003, k=6)      # another chunk length: new plan
    bad = affine_model(tmp_path / "bad.onnx", contract=mismatched_contract())
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an onnx file")
    proc = start(a, lockstep=True)
    r = robot()
    r.wait_active(proc)
    q, steps = np.zeros(A), 0

    def step_until(fut, min_steps=5):
        """Keep the robot stepping (one observation -> one command) until `fut` completes."""
        nonlocal q, steps
        n0 = steps
        while not fut.done() or steps - n0 < min_steps:
            q = r.step(q, [0.0, 0.0], proc)
            steps += 1
            assert steps < 5000, "the request never completed"
        return fut.result()

    step_until(r.call_async(GetState, "/policy/get_state", GetState.Request()), 20)
    res = step_until(r.call_async(LoadPolicy, "/policy/load_policy", LoadPolicy.Request(model_path=str(b))))
    assert res.success, res.message
    model_b = res.model_id
    for path, needle in ((bad, "robot: model 'other_arm' vs robot 'test_arm'"), (garbage, "not a loadable ONNX"),
                         (tmp_path / "missing.onnx", "not found")):
        res = step_until(r.call_async(LoadPolicy, "/policy/load_policy", LoadPolicy.Request(model_path=str(path))))
        assert not res.success and needle in res.message, res.message
        assert r.chunks[-1].model_id == model_b, "a refused model must leave the old one running"
    res = step_until(r.call_async(SetParameters, "/policy/set_parameters", set_model_path_request(c)))
    assert res.results[0].successful
    n = steps
    while r.chunks[-1].chunk_length != 6:
        q = r.step(q, [0.0, 0.0], proc)
        steps += 1
        assert steps - n < 2000, "the model_path parameter never swapped the model in"
    r.status = None
    res = step_until(r.call_async(SetParameters, "/policy/set_parameters", set_model_path_request(bad)))
    assert res.results[0].successful      # accepted, loaded off the control path, refused, reverted
    r.wait_status(lambda s: s.last_event.startswith("refused"), proc, "the refused parameter load")
    got = step_until(r.call_async(GetParameters, "/policy/get_parameters", GetParameters.Request(names=["model_path"])))
    assert got.values[0].string_value == str(c), "a refused model_path must be reverted"
    step_until(r.call_async(GetState, "/policy/get_state", GetState.Request()), 20)
    r.spin_for(0.5)

    assert len(r.commands) == steps, f"{steps} observations but {len(r.commands)} commands"
    assert len(r.chunks) == steps
    ids = [m.model_id for m in r.chunks]
    order = [ids[0]] + [y for x, y in zip(ids, ids[1:]) if y != x]
    assert len(order) == 3 and order[1] == model_b, f"model sequence {order}"
    assert ids[-1] == order[2] and r.chunks[-1].chunk_length == 6
    steps_taken = np.abs(np.diff(np.array(r.commands), axis=0))
    assert np.all(steps_taken <= MAX_STEP)
    s = r.wait_status(lambda s: s.ticks >= steps, proc, f"{steps} ticks")
    assert s.model_swaps == 2 and s.model_id == ids[-1] and s.ticks == steps


def test_new_episode_and_moved_arm_start_a_new_plan_at_the_measured_position(tmp_path, start, robot):
    """reset_on_change (/task_state episode_id) and reset_jump_rad through DDS: the tick that
    sees the new episode (or the arm far from the last command) commands the first action of a
    fresh chunk from the measured position instead of ensembling the old plan and clamping
    towards the old arm position; ~/status says so."""
    bias = 0.01
    proc = start(affine_model(tmp_path / "drift.onnx", bias=bias), lockstep=True)
    r = robot()
    r.wait_active(proc)
    q = np.zeros(A)
    for _ in range(5):
        q = r.step(q, [0.0, 0.0], proc, episode_id=1)
    assert r.spin_until(lambda: len(r.chunks) >= 5)
    far = np.array([0.6, -0.7, 0.8])                    # the next episode starts elsewhere
    cmd = r.step(far, [0.0, 0.0], proc, episode_id=2)
    np.testing.assert_allclose(cmd, affine_reference(np.r_[far, 0.0, 0.0], bias=bias)[0], atol=1e-6)
    s = r.wait_status(lambda s: "new plan" in s.last_event, proc, "the new plan")
    assert "/task_state:episode_id changed to 2" in s.last_event and s.ensembled_chunks == 1
    for _ in range(3):
        q = r.step(cmd, [0.0, 0.0], proc, episode_id=2)
        cmd = q
    moved = q + np.array([0.0, 0.6, 0.0])               # someone moved the arm, same episode
    cmd = r.step(moved, [0.0, 0.0], proc, episode_id=2)
    np.testing.assert_allclose(cmd, affine_reference(np.r_[moved, 0.0, 0.0], bias=bias)[0], atol=1e-6)
    s = r.wait_status(lambda s: "reset_jump_rad" in s.last_event, proc, "the jump restart")
    assert "new plan" in s.last_event and s.safety_step_clamps == 0
    assert "new plan at the measured position" in proc.log()   # the throttled warning


def test_reset_on_change_is_checked_at_configure(tmp_path, start, robot):
    model = affine_model(tmp_path / "a.onnx")
    bad = start(model, reset_on_change="/task_state:no_such_field")
    r = robot()
    s = r.wait_status(lambda s: s.last_event.startswith("configure refused"), bad, "configure refused")
    assert "no field 'no_such_field'" in s.last_event and "reset_on_change" in s.last_event
    bad.stop()
    other = start(model, reset_on_change="/not_observed:episode_id", lockstep=True)
    r.status = None
    r.wait_active(other)
    q = r.step(np.zeros(A), [0.0, 0.0], other)
    assert np.allclose(q, 0.0, atol=1e-6)
    assert "reset_on_change: /not_observed is not an observation topic" in other.log()
