"""The policy node on a Cartesian + gripper contract, as a real process over real DDS: it reads
geometry_msgs/PoseStamped observations, publishes geometry_msgs/TwistStamped (what MoveIt Servo
takes) and the gripper's Float64MultiArray, and applies the safety rules of those kinds: the
speed ramps by max_step per tick, the workspace box cuts a velocity that would leave it, a
stale observation stops the arm (zero twist) while the gripper holds. Lock-step: one tick per
observation stamp, so every command is checked exactly. Waits are bounded and fail with a
message."""
import time

import numpy as np
import pytest
import yaml

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("onnx")

from geometry_msgs.msg import PoseStamped, TwistStamped  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402

from bc_msgs.msg import PolicyStatus, TaskState  # noqa: E402
from bc_policy_node.core.contract import Contract  # noqa: E402
from bc_policy_node.graph import policy_nodes  # noqa: E402
from bc_policy_node.nodes import qos  # noqa: E402
from bc_policy_node.nodes.conversions import to_time  # noqa: E402
from bc_policy_node.procs import NodeProcess  # noqa: E402

from onnx_policies import const_policy  # noqa: E402

pytestmark = pytest.mark.ros
DT = 0.02
WAIT = 30.0
TWIST_TOPIC, GRIP_TOPIC = "/servo_node/delta_twist_cmds", "/gripper_controller/commands"
SPEC = {"contract_version": 1, "name": "cartesian_test", "robot": "sawyer", "task": "push", "control_rate_hz": 1 / DT,
        "chunk_length": 4, "stale_after_s": 0.1,
        "observation": [{"name": "ee", "topic": "/ee_pose", "type": "geometry_msgs/msg/PoseStamped",
                         "field": "pose.position", "size": 3},
                        {"name": "goal", "topic": "/task_state", "type": "bc_msgs/msg/TaskState", "field": "goal",
                         "size": 3}],
        "action": {"parts": [
            {"kind": "ee_velocity", "topic": TWIST_TOPIC, "type": "geometry_msgs/msg/TwistStamped",
             "frame_id": "base_link", "names": ["vx", "vy", "vz"], "lower": -0.5, "upper": 0.5, "max_step": 0.1,
             "workspace": {"ee_term": "ee", "lower": [-0.5, 0.4, 0.05], "upper": [0.5, 0.9, 0.3]}},
            {"kind": "gripper", "topic": GRIP_TOPIC, "type": "std_msgs/msg/Float64MultiArray", "names": ["gripper"],
             "lower": -1.0, "upper": 1.0, "max_step": 0.5, "rest": -1.0}]}}


class Arm:
    """Publishes the end-effector pose and the task state with one stamp per tick, records the
    node's twists and gripper commands."""

    def __init__(self):
        self.node = rclpy.create_node("cartesian_test_arm")
        self.ex = SingleThreadedExecutor()
        self.ex.add_node(self.node)
        n = self.node
        self.pose_pub = n.create_publisher(PoseStamped, "/ee_pose", qos.STATE)
        self.ts_pub = n.create_publisher(TaskState, "/task_state", qos.STATE)
        self.twists, self.grips, self.status = [], [], None
        n.create_subscription(TwistStamped, TWIST_TOPIC, self.twists.append, qos.COMMAND)
        n.create_subscription(Float64MultiArray, GRIP_TOPIC, lambda m: self.grips.append(list(m.data)), qos.COMMAND)
        n.create_subscription(PolicyStatus, "/policy/status", lambda m: setattr(self, "status", m), qos.STATUS)

    def wait(self, cond, what: str, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
            self.ex.spin_once(timeout_sec=0.01)

    def tick(self, ee, stale: bool = False) -> None:
        """One observation pair (same stamp); the node answers with one twist and one gripper
        command. stale: the stamp follows the previous one by 1 us but is published 0.3 s later
        (older than stale_after_s 0.1 s when the node takes it; lock-step ignores stamps that go back)."""
        n = len(self.twists)
        if stale:
            t = self.last + 1e-6
            time.sleep(0.3)
        else:
            t = time.time()
        self.last = t
        stamp = to_time(t)
        p = PoseStamped()
        p.header.stamp, p.header.frame_id = stamp, "base_link"
        p.pose.position.x, p.pose.position.y, p.pose.position.z = (float(v) for v in ee)
        ts = TaskState()
        ts.header.stamp, ts.goal, ts.episode_id = stamp, [0.1, 0.7, 0.1], 1
        self.pose_pub.publish(p)
        self.ts_pub.publish(ts)
        self.wait(lambda: len(self.twists) > n and len(self.grips) > n, f"the command of tick {n}")

    def close(self):
        self.ex.shutdown()
        self.node.destroy_node()


@pytest.fixture
def arm():
    rclpy.init()
    a = Arm()
    yield a
    a.close()
    rclpy.shutdown()


def test_twist_and_gripper_commands_follow_the_kinds_safety_rules(tmp_path, arm):
    c = Contract.from_dict(SPEC)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(c.to_dict()))
    model = const_policy(tmp_path / "p.onnx", c, [0.3, 0.0, 0.1, 1.0])
    spec = policy_nodes(model=str(model), execution_mode="receding_horizon", autostart=True)[0]
    node = NodeProcess(spec, tmp_path / "logs", extra_params={"contract": str(tmp_path / "c.yaml"), "lockstep": True,
                                                               "n_execute": 4, "status_rate_hz": 20.0})
    try:
        arm.wait(lambda: node.alive() is False or (arm.status is not None and arm.status.lifecycle_state == "active"),
                 "the policy node to become active")
        assert node.alive(), node.log()[-3000:]
        arm.wait(lambda: arm.node.count_subscribers("/ee_pose") > 0 and arm.node.count_publishers(TWIST_TOPIC) > 0,
                 "the node's topics to match")
        ee = np.array([0.0, 0.6, 0.1])
        for _ in range(4):
            arm.tick(ee)
        vx = [round(t.twist.linear.x, 6) for t in arm.twists]
        vz = [round(t.twist.linear.z, 6) for t in arm.twists]
        grip = [round(g[0], 6) for g in arm.grips]
        assert vx == [0.1, 0.2, 0.3, 0.3] and vz == [0.1, 0.1, 0.1, 0.1]        # ramp by max_step (float32 model)
        assert grip == [-0.5, 0.0, 0.5, 1.0]                                     # from rest -1 by 0.5 per tick
        assert {t.header.frame_id for t in arm.twists} == {"base_link"}
        arm.tick([0.0, 0.6, 0.299])                                              # 1 mm below the box's top
        assert arm.twists[-1].twist.linear.z == pytest.approx(0.001 / DT) and arm.twists[-1].twist.linear.x == pytest.approx(0.3)
        arm.tick(ee, stale=True)                                                 # stale: stop, gripper holds
        t = arm.twists[-1].twist
        assert (t.linear.x, t.linear.y, t.linear.z) == (0.0, 0.0, 0.0) and arm.grips[-1] == [pytest.approx(1.0)]
    finally:
        rc = node.stop()
    assert rc == 0, node.log()[-3000:]
