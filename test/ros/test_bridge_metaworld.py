"""mujoco_bridge with task:=metaworld/<name> as a real process over real DDS.

The bridge is started from `graph.sim_nodes(robot="sawyer", task="metaworld/...")` (the spec
the launch file uses). This test process is the controller: it sends TwistStamped + gripper
commands and listens to the contract's observation topics, /task_state and /diagnostics. The
reference for every tick is an in-process `MetaWorldSimEnv` stepped with the same commands,
which the lock-step bridge must reproduce bit for bit. Waits end as soon as their condition
holds; their timeouts only turn a hang into a failure with the bridge's log.
"""
import subprocess
import time

import numpy as np
import pytest

pytest.importorskip("metaworld")
rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import PoseStamped, TwistStamped  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402

from bc_msgs.msg import TaskState  # noqa: E402
from bc_msgs.srv import ResetEpisode, StepSim  # noqa: E402
from bc_policy_node.core.sim.metaworld_task import (EE_TOPIC, GRIPPER_COMMAND_TOPIC, GRIPPER_TOPIC,  # noqa: E402
                                                    OBJECT_TOPICS, TWIST_TOPIC, MetaWorldSimEnv)
from bc_policy_node.graph import sim_nodes  # noqa: E402
from bc_policy_node.nodes import qos  # noqa: E402
from bc_policy_node.nodes.conversions import command_msg  # noqa: E402
from bc_policy_node.nodes.fastlane import FastLane  # noqa: E402
from bc_policy_node.procs import Graph, NodeProcess  # noqa: E402

pytestmark = pytest.mark.ros
TIMEOUT = 60.0                  # s; only turns a hang into a failure
TASK = "metaworld/reach-v3"
SEED = 3
PERIOD_NS = 12_500_000          # 80 Hz: Meta-World's step
BRIDGE_TEST_PARAMS = {"auto_reset": False, "diagnostics_rate_hz": 20.0}


def stamp_ns(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def position(msg: PoseStamped) -> np.ndarray:
    p = msg.pose.position
    return np.array([p.x, p.y, p.z])


def pose7(msg: PoseStamped) -> np.ndarray:
    o = msg.pose.orientation
    return np.concatenate([position(msg), [o.x, o.y, o.z, o.w]])


class Client:
    """This test process's node: the controller of the Meta-World bridge."""

    def __init__(self, name, graph):
        self.graph = graph
        self.node = rclpy.create_node(name)
        self.ex = SingleThreadedExecutor()
        self.ex.add_node(self.node)
        self.ee, self.grip, self.ts = [], [], []
        self.objs = {t: [] for t in OBJECT_TOPICS}
        self.lane = FastLane(self.node, f"{name}_lane")
        self.lane.create_subscription(PoseStamped, EE_TOPIC, self.ee.append, qos.STATE)
        self.lane.create_subscription(JointState, GRIPPER_TOPIC, self.grip.append, qos.STATE)
        for t, store in self.objs.items():
            self.lane.create_subscription(PoseStamped, t, store.append, qos.STATE)
        self.lane.create_subscription(TaskState, "/task_state", self.ts.append, qos.STATE)
        self.lane.start()
        self.diag, self.diag_count = {}, 0
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.twist_pub = self.node.create_publisher(TwistStamped, TWIST_TOPIC, qos.COMMAND)
        self.grip_pub = self.node.create_publisher(Float64MultiArray, GRIPPER_COMMAND_TOPIC, qos.COMMAND)
        self._clients = {}

    def close(self):
        self.lane.stop()
        self.ex.shutdown()
        self.node.destroy_node()

    def _on_diag(self, msg):
        for st in msg.status:
            if st.name.startswith("mujoco_bridge"):
                self.diag = {kv.key: kv.value for kv in st.values}
                self.diag["level"] = int.from_bytes(st.level, "little") if isinstance(st.level, bytes) else int(st.level)
                self.diag_count += 1

    def logs(self):
        return "\n".join(f"--- {n} log:\n{p.log()[-3000:]}" for n, p in self.graph.procs.items())

    def wait(self, cond, what, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while not cond():
            self.graph.check_alive()
            assert time.monotonic() < deadline, f"timed out waiting for {what}\n{self.logs()}"
            self.ex.spin_once(timeout_sec=0.01)

    def count(self, key) -> int:
        return int(self.diag.get(key, -1))

    def next_diag(self) -> dict:
        n = self.diag_count
        self.wait(lambda: self.diag_count > n, "a /diagnostics message")
        return dict(self.diag)

    def wait_matched(self):
        self.wait(lambda: self.count("state_subscribers") >= 1 and self.count("command_publishers") >= 1
                  and self.twist_pub.get_subscription_count() > 0 and self.grip_pub.get_subscription_count() > 0,
                  "topics matched")

    def call(self, srv_type, name, request):
        cli = self._clients.get(name) or self._clients.setdefault(name, self.node.create_client(srv_type, name))
        self.wait(cli.service_is_ready, f"service {name}")
        fut = cli.call_async(request)
        self.wait(fut.done, f"the answer of {name}")
        return fut.result()

    def reset(self, seed, task=""):
        r = self.call(ResetEpisode, "/mujoco_bridge/reset", ResetEpisode.Request(seed=seed, task=task))
        assert r.success, r.message
        assert r.state.step == 0 and r.state.status == "running" and r.state.seed == seed
        return r

    def send(self, cmd, frame="base"):
        """One tick's command: twist (vx, vy, vz) + gripper, as the policy node sends them."""
        t = TwistStamped()
        t.header.frame_id = frame
        t.twist.linear.x, t.twist.linear.y, t.twist.linear.z = (float(v) for v in cmd[:3])
        self.twist_pub.publish(t)
        self.grip_pub.publish(command_msg(cmd[3:]))

    def episode(self, eid):
        return [m for m in list(self.ts) if m.episode_id == eid]

    def tick(self, eid, step):
        """(ee PoseStamped, gripper JointState, [object poses], TaskState) of one tick, same stamp."""
        found = {}

        def same_stamp(msgs, key):
            return next((m for m in reversed(list(msgs)) if stamp_ns(m) == key), None)

        def ready():
            if "ts" not in found:
                found.update(ts=next((m for m in self.episode(eid) if m.step == step), None))
                if found["ts"] is None:
                    del found["ts"]
                    return False
            key = stamp_ns(found["ts"])
            parts = [same_stamp(self.ee, key), same_stamp(self.grip, key)]
            parts += [same_stamp(self.objs[t], key) for t in OBJECT_TOPICS]
            if any(p is None for p in parts):
                return False
            found["parts"] = parts
            return True

        self.wait(ready, f"the state messages of episode {eid} tick {step}")
        ee, grip, *objs = found["parts"]
        return ee, grip, objs, found["ts"]


def assert_tick_equals(c, eid, step, env, what="", task=TASK):
    """The bridge's tick `step` is the in-process env's current state, bit for bit."""
    ee, grip, objs, ts = c.tick(eid, step)
    msgs = env.messages()
    np.testing.assert_array_equal(position(ee), msgs[EE_TOPIC].pose.position, err_msg=f"ee pose {what}")
    assert ee.header.frame_id == "base"
    np.testing.assert_array_equal(grip.position, msgs[GRIPPER_TOPIC].position, err_msg=f"gripper {what}")
    assert list(grip.name) == ["gripper"]
    for t, m in zip(OBJECT_TOPICS, objs):
        want = np.concatenate([msgs[t].pose.position, msgs[t].pose.orientation])
        np.testing.assert_array_equal(pose7(m), want, err_msg=f"{t} {what}")
    want_ts = msgs["/task_state"]
    assert ts.task == task and ts.step == env.step_count and ts.status == env.status, (ts.status, env.status)
    assert ts.done == env.done and ts.success == (env.status == "success")
    np.testing.assert_array_equal(ts.goal, want_ts.goal)
    np.testing.assert_array_equal(ts.ee_position, want_ts.ee_position)
    return ee, ts


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def ros():
    rclpy.init()
    yield
    rclpy.shutdown()


@pytest.fixture(scope="class")
def lockstep(ros, tmp_path_factory):
    """The lock-step bridge. Class scope: torn down before the other tests start their own
    bridge (one bridge at a time on the test's ROS domain)."""
    specs = [s for s in sim_nodes(robot="sawyer", task=TASK, mode="lockstep", drive=False) if s.name == "mujoco_bridge"]
    with Graph(specs, tmp_path_factory.mktemp("mw_lockstep_logs"), {"mujoco_bridge": BRIDGE_TEST_PARAMS}) as g:
        c = Client("mw_lockstep_client", g)
        try:
            c.wait_matched()
            yield c
        finally:
            c.close()
        g.check_alive()


# ------------------------------------------------------------------------------ lock-step
class TestLockstep:
    """One lock-step bridge: the expert episode, then bad input."""

    @pytest.mark.parametrize("task", [TASK, "metaworld/pick-place-v3"])   # the 2nd via ~/reset's task
    def test_lockstep_expert_episode_is_the_in_process_rollout(self, lockstep, task):
        c = lockstep
        r = c.reset(SEED, task)
        assert r.state.task == task
        eid = r.episode_id
        env = MetaWorldSimEnv("sawyer", task)
        policy = env.mw.expert()                             # Meta-World's scripted policy (native units)

        def expert_cmd():                                    # its action at the env's state, in contract units
            return env.contract_action(policy(env.mw.observation()))

        env.reset(SEED)
        assert_tick_equals(c, eid, 0, env, "after reset", task=task)
        stamps = [stamp_ns(r.state)]
        # half a pair does not tick: the bridge waits for the gripper part
        before = c.next_diag()
        cmd = expert_cmd()
        t = TwistStamped()
        t.header.frame_id = "base"
        t.twist.linear.x, t.twist.linear.y, t.twist.linear.z = (float(v) for v in cmd[:3])
        c.twist_pub.publish(t)
        c.wait(lambda: c.count("received") == int(before["received"]) + 1 and c.diag.get("waiting_for") == "gripper",
               "the twist alone received, the bridge waiting for the gripper")
        assert c.count("step") == 0 and c.count("ticks") == int(before["ticks"])
        c.grip_pub.publish(command_msg(cmd[3:]))
        env.step(cmd)
        ee, ts = assert_tick_equals(c, eid, 1, env, "tick 1", task=task)
        stamps.append(stamp_ns(ts))
        while not env.done:
            cmd = expert_cmd()
            c.send(cmd)
            env.step(cmd)
            ee, ts = assert_tick_equals(c, eid, env.step_count, env, f"tick {env.step_count}", task=task)
            stamps.append(stamp_ns(ts))
        assert ts.done and ts.success and ts.status == "success", ts.reason
        assert env.status == "success" and ts.step == env.step_count < env.horizon
        assert [m.step for m in c.episode(eid)] == list(range(ts.step + 1)), "one /task_state per tick, in order"
        assert stamps[0] > 0 and np.all(np.diff(stamps) == PERIOD_NS), "stamps one control period apart"
        # after done: commands are ignored until the next reset
        n_ignored = c.count("ignored_not_running")
        c.send(cmd)
        c.wait(lambda: c.count("ignored_not_running") == n_ignored + 2, "the commands after done ignored")
        assert c.count("step") == ts.step
        # same seed again: the same episode, later stamps
        r2 = c.reset(SEED)
        assert r2.episode_id == eid + 1 and stamp_ns(r2.state) > stamps[-1]
        env.reset(SEED)
        assert_tick_equals(c, r2.episode_id, 0, env, "second reset", task=task)


    def test_bad_input_is_rejected_clamped_counted_and_harmless(self, lockstep):
        c = lockstep
        r = c.reset(5, TASK)
        eid = r.episode_id
        env = MetaWorldSimEnv("sawyer", TASK)
        env.reset(5)
        assert_tick_equals(c, eid, 0, env)
        v = env.contract.action.parts[0].upper[0]            # the speed bound (m/s)
        before = c.next_diag()
        nan, inf = float("nan"), float("inf")
        good = np.array([0.1, -0.2, 0.3, 0.5])
        sequence = [  # (twist, gripper data, twist frame, command the bridge must apply)
            (good[:3], good[3:], "base", good),
            ([nan, 0.0, 0.0], [-0.5], "base", [*good[:3], -0.5]),               # NaN twist: held
            ([0.2, 0.0, -0.1], [0.1, 0.2], "base", [0.2, 0.0, -0.1, -0.5]),      # 2 gripper values: held
            ([0.0, inf, 0.0], [nan], "", [0.2, 0.0, -0.1, -0.5]),                # inf + NaN: both held
            ([10.0, -10.0, 0.05], [5.0], "", [v, -v, 0.05, 1.0]),                # beyond bounds: clamped
            ([0.3, 0.3, 0.3], [0.0], "world", [v, -v, 0.05, 0.0]),               # other frame: twist held
            (good[:3], good[3:], "base", good),                                  # works again
        ]
        for k, (twist, grip, frame, applied) in enumerate(sequence, start=1):
            t = TwistStamped()
            t.header.frame_id = frame
            t.twist.linear.x, t.twist.linear.y, t.twist.linear.z = (float(x) for x in twist)
            c.twist_pub.publish(t)
            c.grip_pub.publish(command_msg(grip))
            env.step(np.array(applied, dtype=float))
            _, ts = assert_tick_equals(c, eid, k, env, f"command {k}")    # every pair is one tick
            assert ts.status == "running"
        c.wait(lambda: c.count("step") == len(sequence), "diagnostics of the sequence")
        d = c.diag
        delta = {k: int(d[k]) - int(before[k]) for k in ("accepted", "clamped", "rejected_nonfinite",
                                                         "rejected_wrong_length", "rejected_malformed",
                                                         "rate_limited", "ignored_not_running", "received")}
        assert delta == {"accepted": 7, "clamped": 2, "rejected_nonfinite": 3, "rejected_wrong_length": 1,
                         "rejected_malformed": 1, "rate_limited": 0, "ignored_not_running": 0,
                         "received": 2 * len(sequence)}, d
        assert int(d["rejected"]) >= 5 and d["level"] == 1, "rejections warn on /diagnostics"
        # ~/step: N ticks holding the latest valid twist + gripper, one publication at the end
        s0 = len(sequence)
        resp = c.call(StepSim, "/mujoco_bridge/step", StepSim.Request(ticks=3))
        assert resp.success and resp.step == s0 + 3, resp.message
        for _ in range(3):
            env.step(good)
        assert_tick_equals(c, eid, s0 + 3, env, "~/step 3")
        assert not [m for m in c.episode(eid) if s0 < m.step < s0 + 3]
        # a refused reset (unknown task) names close matches and leaves the episode running
        resp = c.call(ResetEpisode, "/mujoco_bridge/reset", ResetEpisode.Request(seed=1, task="metaworld/reach-v33"))
        assert not resp.success and "unknown Meta-World task" in resp.message and "reach-v3" in resp.message, resp.message
        c.send(good)
        env.step(good)
        assert_tick_equals(c, eid, s0 + 4, env, "after the refused reset")


# ------------------------------------------------------------------------------ free run
def test_free_run_ticks_with_the_latest_command_and_times_out(ros, tmp_path):
    specs = sim_nodes(robot="sawyer", task=TASK, mode="free", real_time_factor=4.0, drive=False)
    with Graph(specs, tmp_path / "logs", {"mujoco_bridge": BRIDGE_TEST_PARAMS}) as g:
        c = Client("mw_free_client", g)
        try:
            c.wait_matched()
            r = c.reset(SEED)
            eid = r.episode_id
            ee0, _, _, _ = c.tick(eid, 0)
            x0 = position(ee0)[0]
            away = -1.0 if r.state.goal[0] > x0 else 1.0      # along x away from the goal: no success
            c.send([0.4 * away, 0.0, 0.0, 1.0])               # half the speed bound, gripper closing
            c.wait(lambda: any(away * (m.ee_position[0] - x0) > 0.05 for m in c.episode(eid)),
                   "the twist to move the hand 5 cm along x")
            moved = next(m for m in c.episode(eid) if away * (m.ee_position[0] - x0) > 0.05)
            assert not moved.done, "moved before the horizon"
            c.send([0.0, 0.0, 0.0, 1.0])         # then hold still until the horizon
            c.wait(lambda: any(m.done for m in c.episode(eid)), "the episode to time out", timeout=TIMEOUT)
            final = next(m for m in c.episode(eid) if m.done)
            n_ignored = c.count("ignored_not_running")
            c.send([0.0, 0.0, 0.4, 1.0])
            c.wait(lambda: c.count("ignored_not_running") == n_ignored + 2, "the commands after done ignored")
            diag = c.next_diag()
        finally:
            c.close()
        g.check_alive()
    steps = [m.step for m in c.episode(eid)]
    assert steps == list(range(final.step + 1)), "every tick published, in order"
    stamps = np.array([stamp_ns(m) for m in c.episode(eid)])
    assert np.all(np.diff(stamps) == PERIOD_NS)
    assert final.status == "timeout" and not final.success and final.step == 500, (final.status, final.step)
    assert int(diag["step"]) == 500 and diag["status"] == "timeout"
    ee = np.array([m.ee_position for m in c.episode(eid)])
    # free run: the ticks before the twist arrives (more on a loaded machine) hold the hand, which
    # settles by up to 0.5 mm per tick either way; from 5 mm on, the twist is in effect
    start = int(np.argmax(away * (ee[:, 0] - x0) > 0.005))
    assert np.all(away * np.diff(ee[start: moved.step + 1, 0]) >= -1e-4), "the hand went one way along x"


# ------------------------------------------------------------------------------ start-up
def test_unknown_task_or_wrong_robot_exits_1_with_a_clear_message(tmp_path):
    cases = [(sim_nodes(robot="sawyer", task="metaworld/pick-plac-v3")[0], "unknown",
              ["unknown Meta-World task 'metaworld/pick-plac-v3'", "Did you mean: pick-place-v3", "Available ("]),
             (sim_nodes(robot="planar3", task=TASK)[0], "robot",
              ["runs on robot 'sawyer'", "not 'planar3'"])]
    procs = [(NodeProcess(spec, tmp_path / name, {}), texts) for spec, name, texts in cases]
    try:
        for proc, texts in procs:
            try:
                rc = proc.proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                pytest.fail(f"the bridge did not exit within {TIMEOUT} s:\n{proc.log()[-3000:]}")
            log = proc.log()
            assert rc == 1, log
            assert "cannot start" in log and all(t in log for t in texts), log
    finally:
        for proc, _texts in procs:
            proc.stop()
