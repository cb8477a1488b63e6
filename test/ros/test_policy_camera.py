"""The policy node serving a camera policy, as real processes over real DDS.

1. mujoco_bridge (planar3 curved_reach, lock-step, ``cameras:=["overhead:96x96"]``) + the policy
   node (lock-step, use_sim_time) on a camera contract with two image terms of the overhead camera,
   the JPEG topic (cropped, as in config/contracts/camera/planar3_curved_reach.yaml) and the raw
   rgb8 one: every command of two seeded episodes equals the in-process rollout of the node's
   engine on the same ONNX file and seeds (`make_env(cameras=...)` renders and encodes the frames
   like the bridge), and the frames change every tick, so a frame of another tick would show.
2. This process plays the robot (free-run node on the wall clock): frames that stop make the node
   hold with the camera named as the stale term; only bad frames (corrupt JPEG, wrong size) are
   counted on /diagnostics, the node stays up and holds; good frames again and it moves again.
3. A model trained for a 64x64 camera is refused at configure with the camera and both sizes named.

The policies are hand-built ONNX graphs with the contract's ``image_<name>`` uint8 inputs
(test/onnx_policies.py `camera_policy`: actions follow the mean pixel value); no torch, no training.
Waits are bounded and fail with the logs; nothing is asserted on timing.
"""
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from lockstep_episodes import run_episodes  # noqa: E402
from onnx_policies import camera_policy  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CompressedImage, JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402

from bc_msgs.msg import PolicyStatus, TaskState  # noqa: E402
from bc_policy_node.core.contract import Contract  # noqa: E402
from bc_policy_node.core.control.controller import RESTART_JUMP  # noqa: E402
from bc_policy_node.core.control.runtime import OnnxPolicy  # noqa: E402
from bc_policy_node.core.eval.rollout import make_controller, policy_act_fn, rollout  # noqa: E402
from bc_policy_node.core.sim.env import make_env  # noqa: E402
from bc_policy_node.graph import config_path, policy_nodes, sim_nodes  # noqa: E402
from bc_policy_node.nodes import qos  # noqa: E402
from bc_policy_node.nodes.conversions import to_time  # noqa: E402
from bc_policy_node.pipeline.graph_client import RESET, GraphClient  # noqa: E402
from bc_policy_node.procs import Graph, NodeProcess  # noqa: E402

pytestmark = pytest.mark.ros
ROBOT, TASK = "planar3", "curved_reach"
SEEDS = (0, 1)
COMMANDS = "/forward_position_controller/commands"
JPEG_TOPIC = "/camera/overhead/image_raw/compressed"
DEEP = QoSProfile(depth=5000, reliability=ReliabilityPolicy.RELIABLE)
WAIT = 120.0                 # s; bounds waits only (the machine may be heavily loaded)
G = np.array([[0.3, -0.2, 0.1], [0.0, 0.4, -0.1], [-0.2, 0.1, 0.5]])   # colour channel -> joint
GAINS = [0.05 * G, -0.03 * G]
DRIFT = [0.004, -0.003, 0.002]     # rad per chunk step: the arm moves, the camera sees it move


def camera_contract(path: Path, raw_too: bool = True, **change) -> Path:
    d = Contract.load(config_path("contracts", "camera", "planar3_curved_reach.yaml")).to_dict()
    d["observation"][2].update(change)
    if raw_too:
        d["observation"].append({"name": "overhead_raw", "kind": "image", "topic": "/camera/overhead/image_raw",
                                 "type": "sensor_msgs/msg/Image", "encoding": "rgb8", "height": 96, "width": 96})
    path.write_text(json.dumps(d))       # JSON is YAML
    return path


def stamp_ns(stamp):
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def test_camera_policy_node_in_lockstep_commands_exactly_the_in_process_rollout(tmp_path):
    cpath = camera_contract(tmp_path / "camera.yaml")
    contract = Contract.load(cpath)
    model = camera_policy(tmp_path / "camera.onnx", contract, gain=GAINS, drift=DRIFT)
    env = make_env(ROBOT, TASK, cameras=contract.images)
    ctl = make_controller(OnnxPolicy(model), contract)
    refs = []
    for s in SEEDS:
        ctl.reset(seed=s)
        refs.append(rollout(env, contract, policy_act_fn(ctl, contract.dt), s))
    assert ctl.restarts[RESTART_JUMP] == 0
    for r in refs:
        assert np.abs(r.q[-1] - r.q[0]).max() > 0.5, "the test policy must move the arm"
        for name, frames in r.images.items():       # what the policy reads changes every tick
            means = frames.reshape(len(frames), -1, 3).mean(axis=1)
            assert np.mean(np.any(np.diff(means, axis=0) != 0, axis=1)) > 0.9, name

    specs = sim_nodes(robot=ROBOT, task=TASK, mode="lockstep", drive=False)[:1]
    specs += policy_nodes(robot=ROBOT, task=TASK, model=str(model), autostart=True, lockstep=True,
                          use_sim_time=True)
    extra = {"mujoco_bridge": {"auto_reset": False, "diagnostics_rate_hz": 20.0,
                               "cameras": ['"overhead:96x96"']},       # quoted: a ':' in a -p flow list
             "policy": {"contract": str(cpath), "status_rate_hz": 5.0}}
    cmds, diag, bridge, status = [], {}, {}, {}

    def on_diag(msg):
        for s in msg.status:
            if s.name.startswith("policy:"):
                diag.update({kv.key: kv.value for kv in s.values})
            elif s.name.startswith("mujoco_bridge:"):
                bridge.update({kv.key: kv.value for kv in s.values})

    with Graph(specs, tmp_path / "logs", extra_params=extra) as g, \
            GraphClient("camera_parity", check=g.check_alive) as client:
        node = client.node
        node.create_subscription(Float64MultiArray, COMMANDS, lambda m: cmds.append(np.array(m.data)), DEEP)
        node.create_subscription(PolicyStatus, "/policy/status", lambda m: status.__setitem__("last", m), qos.STATUS)
        node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
        client.wait_for_services([RESET], timeout=WAIT)
        client.wait_until(lambda: "last" in status and status["last"].lifecycle_state == "active", WAIT,
                          "the policy node to become active")
        client.wait_until(lambda: all(node.count_subscribers(t) >= 1 for t in contract.image_topics())
                          and node.count_subscribers("/joint_states") >= 1
                          and node.count_subscribers("/task_state") >= 2
                          and node.count_publishers(COMMANDS) >= 1 and node.count_subscribers(COMMANDS) >= 2,
                          WAIT, "the bridge, the policy node (cameras included) and this client to connect")
        client.spin(0.5)
        episodes = [(f, n0) for f, _, n0 in run_episodes(client, cmds, bridge, SEEDS, TASK, WAIT)]
        client.wait_until(lambda: diag.get("camera_overhead_frames") == str(sum(int(f.step) + 1 for f, _ in episodes)),
                          WAIT, f"/diagnostics to count every frame (last: {diag})")
        assert len(cmds) == sum(int(f.step) + 1 for f, _ in episodes), "one command per observation"

    for i, ((final, n0), ref) in enumerate(zip(episodes, refs)):
        assert (final.status, int(final.step)) == (ref.status, ref.steps), \
            f"episode {i} (seed {SEEDS[i]}): node {final.status}@{final.step} vs in-process {ref.status}@{ref.steps}"
        diff = np.abs(np.array(cmds[n0:n0 + ref.steps]) - ref.actions).max(axis=1)
        assert diff.max() < 1e-9, (f"episode {i} (seed {SEEDS[i]}): commands differ from tick "
                                   f"{int(np.argmax(diff > 1e-9))} on, max {diff.max():.3g} rad")
    for key in ("bad_frames", "camera_overhead_bad_frames", "camera_overhead_raw_bad_frames",
                "bad_observations", "tick_errors", "new_plan_jump", "stale_observation"):
        assert diag.get(key) == "0", f"{key}: {diag.get(key)}"
    assert diag["camera_overhead_raw_frames"] == diag["camera_overhead_frames"]


# ----------------------------------------------------------------------------- the robot plays
def jpeg(level: int, size=(96, 96)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), level, np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


class Robot:
    """Publishes /joint_states, /task_state and the JPEG camera; reads commands, status, diagnostics."""

    def __init__(self, proc: NodeProcess):
        self.proc = proc
        self.node = rclpy.create_node("camera_robot")
        self.ex = SingleThreadedExecutor()
        self.ex.add_node(self.node)
        n = self.node
        self.js = n.create_publisher(JointState, "/joint_states", qos.STATE)
        self.ts = n.create_publisher(TaskState, "/task_state", qos.STATE)
        self.cam = n.create_publisher(CompressedImage, JPEG_TOPIC, qos.CAMERA_RELIABLE_QOS)
        self.commands, self.status, self.diag = [], None, {}
        n.create_subscription(Float64MultiArray, COMMANDS, lambda m: self.commands.append(np.array(m.data)),
                              qos.COMMAND)
        n.create_subscription(PolicyStatus, "/policy/status", lambda m: setattr(self, "status", m), qos.STATUS)
        n.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.q = np.array([0.2, -0.3, 0.4])

    def _on_diag(self, msg):
        for s in msg.status:
            if s.name.startswith("policy:"):
                self.diag.update({kv.key: kv.value for kv in s.values})

    def spin_until(self, cond, what, timeout=WAIT):
        deadline = time.monotonic() + timeout
        while not cond():
            assert self.proc.alive(), f"the policy node died:\n{self.proc.log()[-4000:]}"
            assert time.monotonic() < deadline, (f"timed out waiting for {what}; status {self.status}, "
                                                 f"diagnostics {self.diag}\n{self.proc.log()[-4000:]}")
            self.ex.spin_once(timeout_sec=0.005)

    def stream(self, frame, until, what):
        """At ~50 Hz: the state (following the commands) and ``frame()`` (bytes, or None: no frame),
        all stamped now, until `until()`."""
        nxt = [0.0]

        def step():
            now = time.monotonic()
            if now >= nxt[0]:
                nxt[0] = now + 0.02
                self.publish(frame())
            return until()
        self.spin_until(step, what)

    def publish(self, frame):
        if self.commands:
            self.q = self.commands[-1]
        stamp = to_time(time.time())
        js = JointState(name=["j1", "j2", "j3"], position=[float(v) for v in self.q], velocity=[0.0] * 3)
        ts = TaskState(task=TASK, status="running", ee_position=[0.1, 0.2])
        js.header.stamp = ts.header.stamp = stamp
        self.js.publish(js)
        self.ts.publish(ts)
        if frame is not None:
            img = CompressedImage(format="jpeg", data=frame)
            img.header.stamp = stamp
            self.cam.publish(img)

    def close(self):
        self.ex.shutdown()
        self.node.destroy_node()


@pytest.fixture(scope="module")
def ros():
    rclpy.init()
    yield
    rclpy.shutdown()


def start_policy(tmp_path, model, contract_path, **params):
    spec = policy_nodes(model=str(model), autostart=True)[0]
    extra = {"contract": str(contract_path), "status_rate_hz": 20.0, **params}
    return NodeProcess(spec, tmp_path / "logs", extra_params=extra)


def test_a_camera_that_stops_or_sends_bad_frames_makes_the_node_hold_stale(ros, tmp_path):
    cpath = camera_contract(tmp_path / "camera.yaml", raw_too=False)
    model = camera_policy(tmp_path / "camera.onnx", Contract.load(cpath), gain=0.05 * G, drift=DRIFT)
    proc = start_policy(tmp_path, model, cpath)
    r = Robot(proc)
    try:
        r.spin_until(lambda: r.status is not None and r.status.lifecycle_state == "active", "the node active")
        r.spin_until(lambda: r.js.get_subscription_count() and r.cam.get_subscription_count()
                     and r.node.count_publishers(COMMANDS), "the node's topics to match")
        good = jpeg(150)
        r.stream(lambda: good, lambda: len(r.commands) >= 20, "20 commands with good frames")
        moving = np.array(r.commands[-10:])
        assert np.abs(moving[-1] - moving[0]).max() > 1e-3, "the policy moves the arm while it sees"
        assert r.status.safety_stale == 0

        # The camera stops; the state topics go on: stale -> hold, the camera named as the reason.
        stale0 = r.status.safety_stale
        r.stream(lambda: None, lambda: r.status.safety_stale >= stale0 + 5, "stale holds after the camera stopped")
        assert "stale_observation" in r.status.last_event and "camera 'overhead'" in r.status.last_event, \
            r.status.last_event
        n = len(r.commands)
        r.stream(lambda: None, lambda: len(r.commands) >= n + 10, "10 more held commands")
        held = np.array(r.commands[n:])
        assert np.all(held == held[0]), "a stopped camera must hold the last command"

        # Only bad frames (corrupt, another size, truncated): counted and logged; the previous, now
        # too old, frame stays current -> still holding; the node stays up.
        bad = iter([b"\xff\xd8 not a jpeg", jpeg(150, size=(64, 64)), good[: len(good) // 3]] * 1000)
        n = len(r.commands)
        r.stream(lambda: next(bad), lambda: int(r.diag.get("camera_overhead_bad_frames", 0)) >= 6,
                 "six bad frames counted on /diagnostics")
        assert np.all(np.array(r.commands[n:]) == held[0]), "bad frames must not move the arm"
        assert int(r.diag["bad_frames"]) >= 6 and r.diag["bad_observations"] == "0"
        assert "camera 'overhead'" in r.status.last_event, r.status.last_event
        log = proc.log()
        assert "camera 'overhead': frame refused" in log and "the previous frame stays current" in log
        assert "cannot decode" in log or "the contract expects 96x96" in log

        # Good frames again: fresh, the policy moves again.
        n = len(r.commands)
        r.stream(lambda: good, lambda: len(r.commands) >= n + 20, "20 commands after the camera came back")
        back = np.array(r.commands[n + 5:])
        assert np.abs(back[-1] - back[0]).max() > 1e-3, "fresh frames: the policy moves again"
    finally:
        r.close()
        rc = proc.stop()
    assert rc == 0, f"the policy node did not shut down cleanly (exit {rc}):\n{proc.log()[-3000:]}"


def test_a_model_for_another_camera_size_is_refused_with_the_sizes(ros, tmp_path):
    cpath = camera_contract(tmp_path / "camera.yaml", raw_too=False)
    other = Contract.load(camera_contract(tmp_path / "other.yaml", raw_too=False, height=64, width=64, crop=None))
    model = camera_policy(tmp_path / "cam64.onnx", other, gain=0.05 * G)
    proc = start_policy(tmp_path, model, cpath)
    r = Robot(proc)
    try:
        r.spin_until(lambda: r.status is not None and r.status.last_event.startswith("configure refused"),
                     "configure refused")
        want = "camera 'overhead': height model 64, robot 96; width model 64, robot 96"
        assert want in r.status.last_event and r.status.lifecycle_state == "unconfigured", r.status.last_event
        assert want in proc.log()
        assert r.node.count_publishers(COMMANDS) == 0
    finally:
        r.close()
        rc = proc.stop()
    assert rc == 0, proc.log()[-3000:]
