"""mujoco_bridge with a camera, as a real process over real DDS (lock-step protocol + frames).

One 64x64 overhead camera, lock-step: after ~/reset and N commands the bridge published exactly
N + 1 frames on each of image_raw, image_raw/compressed and camera_info, each stamped like the
/task_state of the tick it shows; raw and JPEG decode to the same image size (and nearly the same
pixels); camera_info's K is the pinhole of the camera's fovy at that size; the frame is the one the
in-process renderer makes of the same state. An unknown camera name ends the bridge with exit 1 and
the model's camera names. Waits are bounded and only turn a hang into a failure with the logs.
"""
import io
import subprocess
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402

from bc_msgs.msg import TaskState  # noqa: E402
from bc_msgs.srv import ResetEpisode  # noqa: E402
from bc_policy_node.core.sim.camera import CameraError, CameraRenderer, goal_world, intrinsics  # noqa: E402
from bc_policy_node.core.sim.env import SimEnv  # noqa: E402
from bc_policy_node.graph import sim_nodes  # noqa: E402
from bc_policy_node.nodes import qos  # noqa: E402
from bc_policy_node.nodes.conversions import command_msg, image_array  # noqa: E402
from bc_policy_node.procs import Graph, NodeProcess  # noqa: E402

pytestmark = pytest.mark.ros
TIMEOUT = 60.0
SEED = 4
N = 6                       # commands after the reset
SIZE = 64
CMD = "/forward_position_controller/commands"
BASE = "/camera/overhead"
# a ':' inside an unquoted YAML flow list does not parse in a -p override: quote the entry
PARAMS = {"auto_reset": False, "diagnostics_rate_hz": 20.0, "cameras": [f'"overhead:{SIZE}x{SIZE}"']}


def stamp_ns(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


@pytest.fixture(scope="module")
def ros():
    rclpy.init()
    yield
    rclpy.shutdown()


class Client:
    def __init__(self, graph):
        self.graph = graph
        self.node = rclpy.create_node("camera_client")
        self.ex = SingleThreadedExecutor()
        self.ex.add_node(self.node)
        self.got = {k: [] for k in ("raw", "jpeg", "info", "ts", "js")}
        self.order = []        # (topic kind, stamp) in the order this process took them
        sub = self.node.create_subscription
        cam = qos.CAMERA_RELIABLE_QOS       # counts every frame: a reliable reader
        for kind, typ, topic, q in (("raw", Image, f"{BASE}/image_raw", cam),
                                    ("jpeg", CompressedImage, f"{BASE}/image_raw/compressed", cam),
                                    ("info", CameraInfo, f"{BASE}/camera_info", cam),
                                    ("ts", TaskState, "/task_state", qos.STATE),
                                    ("js", JointState, "/joint_states", qos.STATE)):
            sub(typ, topic, lambda m, k=kind: self._on(k, m), q)
        self.cmd_pub = self.node.create_publisher(Float64MultiArray, CMD, qos.COMMAND)

    def _on(self, kind, msg):
        self.got[kind].append(msg)
        self.order.append((kind, stamp_ns(msg)))

    def logs(self):
        return "\n".join(f"--- {n} log:\n{p.log()[-3000:]}" for n, p in self.graph.procs.items())

    def wait(self, cond, what, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while not cond():
            self.graph.check_alive()
            assert time.monotonic() < deadline, f"timed out waiting for {what}\n{self.logs()}"
            self.ex.spin_once(timeout_sec=0.01)

    def matched(self):
        names = [f"{BASE}/image_raw", f"{BASE}/image_raw/compressed", f"{BASE}/camera_info",
                 "/task_state", "/joint_states"]
        return (all(self.node.count_publishers(t) > 0 for t in names)
                and self.cmd_pub.get_subscription_count() > 0)

    def counts(self):
        return {k: len(v) for k, v in self.got.items()}

    def close(self):
        self.ex.shutdown()
        self.node.destroy_node()


def test_lockstep_frames_match_the_ticks(ros, tmp_path):
    specs = sim_nodes(task="curved_reach", mode="lockstep")[:1]
    with Graph(specs, tmp_path / "logs", {"mujoco_bridge": PARAMS}) as g:
        c = Client(g)
        try:
            c.wait(c.matched, "the camera, state and command topics matched")
            cli = c.node.create_client(ResetEpisode, "/mujoco_bridge/reset")
            c.wait(cli.service_is_ready, "~/reset")
            fut = cli.call_async(ResetEpisode.Request(seed=SEED, task="curved_reach"))
            c.wait(fut.done, "the answer of ~/reset")
            assert fut.result().success, fut.result().message
            env = SimEnv("planar3", "curved_reach")            # in-process twin: same states
            env.reset(SEED)
            q = env.sim.qpos
            targets = [q + 0.03 * (k + 1) * np.array([1.0, -1.0, 0.5]) for k in range(N)]
            want = {k: 1 for k in c.got}
            c.wait(lambda: all(v >= 1 for v in c.counts().values()), "the first pair + frame")
            for k, target in enumerate(targets, start=1):     # one command per tick, in lock-step
                c.cmd_pub.publish(command_msg(target))
                want = {kind: k + 1 for kind in c.got}
                c.wait(lambda: all(v >= want[kind] for kind, v in c.counts().items()),
                       f"tick {k}: its pair and its frame on all three camera topics")
            end = time.monotonic() + 0.5                       # nothing more arrives (bounded)
            while time.monotonic() < end:
                c.ex.spin_once(timeout_sec=0.02)
            totals = dict(c.counts())
        finally:
            c.close()
        g.check_alive()

    assert totals == {k: N + 1 for k in c.got}, f"exactly N + 1 = {N + 1} of each: {totals}"
    ts_stamps = [stamp_ns(m) for m in c.got["ts"]]
    assert [m.step for m in c.got["ts"]] == list(range(N + 1))
    for kind in ("raw", "jpeg", "info"):
        assert [stamp_ns(m) for m in c.got[kind]] == ts_stamps, f"{kind}: one frame per tick, its stamp"

    from PIL import Image as PILImage
    fx, fy, cx, cy = intrinsics(env.sim.model, "overhead", SIZE, SIZE)
    renderer = CameraRenderer(env.sim.model, "overhead", SIZE, SIZE)
    try:
        env.reset(SEED)
        for k, (raw, jpeg, info) in enumerate(zip(c.got["raw"], c.got["jpeg"], c.got["info"])):
            if k:
                env.step(targets[k - 1])
            img = image_array(raw)
            assert (raw.encoding, raw.width, raw.height, raw.step) == ("rgb8", SIZE, SIZE, 3 * SIZE)
            dec = np.asarray(PILImage.open(io.BytesIO(bytes(jpeg.data))).convert("RGB"))
            assert "jpeg" in jpeg.format and dec.shape == img.shape == (SIZE, SIZE, 3)
            assert np.abs(dec.astype(int) - img.astype(int)).mean() < 8, "the JPEG is the same picture"
            ref = renderer.capture(env.sim.data, goal_world(env.sim, env.task.goal))
            np.testing.assert_array_equal(img, ref, err_msg=f"frame {k} is the state of tick {k}")
            assert (info.width, info.height) == (SIZE, SIZE)
            np.testing.assert_allclose(info.k, [fx, 0, cx, 0, fy, cy, 0, 0, 1], rtol=1e-12)
            assert info.k[2] == (SIZE - 1) / 2 and info.p[0] == info.k[0]
        assert not np.array_equal(image_array(c.got["raw"][0]), image_array(c.got["raw"][-1])), "the arm moved"
    finally:
        renderer.close()
    # Publish order in the bridge: /joint_states, the frame, /task_state. Across topics DDS does not
    # promise that order at a subscriber; report how often it held here (match frames by stamp).
    first = {}
    for kind, s in c.order:
        first.setdefault((kind, s), len(first))
    before = sum(first[("raw", s)] < first[("ts", s)] for s in ts_stamps)
    print(f"\nframe taken before its /task_state in {before}/{len(ts_stamps)} ticks")


def test_unknown_camera_exits_1_with_the_camera_names(tmp_path):
    proc = NodeProcess(sim_nodes(mode="lockstep")[0], tmp_path, {"auto_reset": False, "cameras": ["nadir"]})
    try:
        try:
            rc = proc.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the bridge with an unknown camera did not exit within {TIMEOUT} s:\n{proc.log()[-3000:]}")
        log = proc.log()
        assert rc == 1, log
        assert "no camera named 'nadir'" in log and "['overhead']" in log and "planar3.xml" in log, log
    finally:
        proc.stop()


def test_camera_error_is_a_startup_error():
    from bc_policy_node.core.sim.sim import SimError
    assert issubclass(CameraError, SimError)     # run_node's startup errors of the bridge
