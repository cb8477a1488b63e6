"""Camera frames recorded through the real graph: bridge (lock-step, one 96x96 camera) + expert
+ recorder processes (the recorder given the shipped camera contract) -> the episode bag holds
the JPEG frames as published -> the dataset builder gives uint8 images.

One planar3 curved_reach episode (~2 s of sim). In lock-step every tick is one state pair and
one frame stamped like it, so the bag has N + 1 frames (one per /task_state, same stamps), the
as-of rule matches each of the N frames to the image of its own tick (age 0, none outside the
tolerance), and the dataset is the in-process rollout of the same seed - the same states, the
same commands and, pixel for pixel, the same decoded frames (the bridge and the in-process
cameras share the renderer, the JPEG encoder and the decoder). The recorder's status counts the
bytes it wrote per topic: they are the bag's. Waits are bounded; nothing asserts on time.
"""
import numpy as np
import pytest

pytest.importorskip("rclpy")

from bc_policy_node import graph, procs  # noqa: E402
from bc_policy_node.core.contract import Contract  # noqa: E402
from bc_policy_node.core.data import bagread  # noqa: E402
from bc_policy_node.core.data.dataset_builder import build_dataset  # noqa: E402
from bc_policy_node.core.data.rostypes import header_stamp_ns  # noqa: E402
from bc_policy_node.core.eval.rollout import expert_rollouts  # noqa: E402
from bc_policy_node.core.sim.env import CONTRACTS_DIR  # noqa: E402
from bc_policy_node.pipeline.graph_client import (RESET, START_EPISODE, STEP, STOP_EPISODE,  # noqa: E402
                                                  GraphClient, GraphError)

pytestmark = pytest.mark.ros
ROBOT, TASK, SEED = "planar3", "curved_reach", 11
CONTRACT = CONTRACTS_DIR / "camera" / "planar3_curved_reach.yaml"
JPEG = "/camera/overhead/image_raw/compressed"
WAIT = 60.0          # s; deadline of every wait (a hang becomes a failure with the logs)
RETRIES = 2          # re-record an episode the recorder did not get whole (see pipeline/collect.py)
# a ':' inside an unquoted YAML flow list does not parse in a -p override: quote the entry
EXTRA = {"mujoco_bridge": {"auto_reset": False, "cameras": ['"overhead:96x96"']},
         "recorder": {"status_period_s": 0.1}}


def logs(g) -> str:
    return "\n".join(f"--- {n} log:\n{p.log()[-2000:]}" for n, p in g.procs.items())


def record_one_episode(c: GraphClient, contract: Contract):
    """start -> reset(SEED) -> done -> the recorder holds N + 1 observations per topic (frames
    included) and N commands -> stop. Returns (final TaskState, recorder status before stop)."""
    obs = list(contract.observation_topics())
    for attempt in range(RETRIES + 1):
        c.start_episode(task=TASK, seed=SEED, episode_id=0, notes="test_record_camera")
        r = c.reset(seed=SEED, task=TASK)
        final = c.wait_task_done(r.episode_id, timeout=WAIT, kick_after_s=2.0, stall_timeout=8.0)
        n = int(final.step)
        need = {**{t: n + 1 for t in obs}, contract.action.topic: n}

        def whole(s):
            w = (s.get("episode") or {}).get("written", {})
            return all(w.get(t, 0) >= k for t, k in need.items())
        try:
            status = c.wait_recorder(whole, 10.0, "the whole episode")
        except GraphError:
            if attempt == RETRIES:
                raise
            c.stop_episode(task_success=False, outcome="recorder short", discard=True)
            continue
        resp = c.stop_episode(task_success=bool(final.success), outcome=final.status)
        assert resp.success, resp.message
        return final, status
    raise AssertionError("unreachable")


def test_lockstep_camera_recorded_and_built_into_the_in_process_frames(tmp_path):
    c = Contract.load(CONTRACT)
    (term,) = c.images
    assert term.topic == JPEG and term.compressed
    out = tmp_path / "bags"
    specs = (graph.sim_nodes(robot=ROBOT, task=TASK, mode="lockstep", seed=SEED, drive=True)
             + graph.record_nodes(robot=ROBOT, task=TASK, output_dir=str(out), contract=str(CONTRACT)))
    with procs.Graph(specs, tmp_path / "logs", EXTRA) as g, GraphClient("record_camera", check=g.check_alive) as cl:
        try:
            cl.wait_for_services([RESET, STEP, START_EPISODE, STOP_EPISODE], WAIT)
            node = cl.node
            state = [t.topic for t in c.observation]
            cl.wait_until(lambda: all(node.count_subscribers(t) >= 2 for t in state)     # expert + recorder
                          and node.count_subscribers(JPEG) >= 1 and node.count_publishers(JPEG) >= 1
                          and node.count_publishers(c.action.topic) >= 1, WAIT, "the graph's topics to connect")
            topics = list(c.topics())
            status = cl.wait_recorder(lambda s: all(s["publishers"].get(t, 0) >= 1 for t in topics), WAIT,
                                      "the recorder to match every contract topic")
            assert status["qos"][JPEG] == "reliable"          # the bridge's camera writers are reliable
            final, status = record_one_episode(cl, c)
        except (GraphError, AssertionError) as e:
            raise AssertionError(f"{e}\n{logs(g)}") from None
    assert final.success
    n = int(final.step)

    # the bag: the contract's compressed topic, JPEG bytes as published (the raw topic is not in
    # the contract, so it is not recorded)
    (bag,) = bagread.find_bags([out])
    types = bagread.topic_types(bag)
    assert types[JPEG] == "sensor_msgs/msg/CompressedImage" and "/camera/overhead/image_raw" not in types
    raw, store = bagread.read_raw(bag, [JPEG, "/task_state"])
    frames = raw[JPEG][1]
    assert len(frames) == n + 1, f"one frame per state: {len(frames)} frames, {n + 1} states"
    msgs = [store.deserialize_cdr(it[1], "sensor_msgs/msg/CompressedImage") for it in frames]
    assert all("jpeg" in m.format and bytes(m.data[:2]) == b"\xff\xd8" for m in msgs)
    assert sorted(header_stamp_ns(it[1]) for it in frames) == \
        sorted(header_stamp_ns(it[1]) for it in raw["/task_state"][1]), "each frame stamped like its state"
    cdr = sum(len(it[1]) for it in frames)
    assert status["bytes"][JPEG] == cdr, "the recorder's byte count is the bag's"
    print(f"\n{n + 1} frames recorded, {cdr / (n + 1):.0f} B per CompressedImage (96x96 JPEG)")

    # the dataset: one image per frame, the image of its own tick, = the in-process rollout
    ds, rep = build_dataset([out], c, tmp_path / "ds")
    assert rep["included"] == 1, rep["episodes"]
    cams = rep["cameras"]["overhead"]
    assert (cams["frames_aligned"], cams["frames_outside"], cams["max_age_seen_s"]) == (n, 0, 0.0), cams
    (ep,) = ds.episodes
    assert len(ep) == n and ep.labelled.all()
    assert ep.images["overhead"].dtype == np.uint8 and ep.images["overhead"].shape == (n,) + term.shape
    (ref,) = expert_rollouts(ROBOT, TASK, [SEED], contract=c)
    assert ref.steps == n
    np.testing.assert_array_equal(ep.obs, ref.obs)
    np.testing.assert_array_equal(ep.act, ref.actions)
    np.testing.assert_array_equal(ep.images["overhead"], ref.images["overhead"])
    assert not np.array_equal(ep.images["overhead"][0], ep.images["overhead"][-1]), "the arm moved"


def test_best_effort_camera_driver_is_recorded(tmp_path):
    """A camera driver publishing best effort (sensor-data QoS, what real drivers offer) never
    matches a reliable subscription: the recorder sees the offered QoS, subscribes the camera
    topic best effort (the state topics stay reliable) and the frames reach the bag as sent."""
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CompressedImage

    from bc_policy_node.core.sim.camera import encode_jpeg

    c = Contract.load(CONTRACT)
    out = tmp_path / "bags"
    specs = graph.record_nodes(robot=ROBOT, task=TASK, output_dir=str(out), contract=str(CONTRACT))
    rng = np.random.default_rng(0)
    jpegs = [encode_jpeg(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)) for _ in range(8)]
    with procs.Graph(specs, tmp_path / "logs", {"recorder": {"status_period_s": 0.1}}) as g, \
            GraphClient("camera_driver", check=g.check_alive) as cl:
        try:
            pub = cl.node.create_publisher(CompressedImage, JPEG, qos_profile_sensor_data)
            cl.wait_for_services([START_EPISODE, STOP_EPISODE], WAIT)
            st = cl.wait_recorder(lambda s: s["qos"][JPEG] == "best_effort" and s["publishers"][JPEG] == 1,
                                  WAIT, f"{JPEG} subscribed best effort and matched")
            assert st["qos"]["/joint_states"] == "reliable" and st["qos"][c.action.topic] == "reliable"
            cl.wait_until(lambda: pub.get_subscription_count() >= 1, WAIT, "the recorder's reader matched")
            bag = cl.start_episode(task=TASK, seed=0, episode_id=0)
            sent = 0
            for k, data in enumerate(jpegs):
                msg = CompressedImage(format="jpeg", data=data)
                msg.header.stamp.sec = k + 1
                pub.publish(msg)
                sent += 1
                try:      # one at a time; best effort may drop one, so a wait only paces
                    cl.wait_recorder(lambda s: (s["episode"] or {}).get("written", {}).get(JPEG, 0) >= k + 1,
                                     2.0, f"frame {k}")
                except GraphError:
                    pass
            resp = cl.stop_episode(task_success=True)
            assert resp.success, resp.message
            log = g.procs["recorder"].log()
        except (GraphError, AssertionError) as e:
            raise AssertionError(f"{e}\n{logs(g)}") from None
    assert f"{JPEG}: subscription now best_effort" in log, log[-2000:]
    raw, store = bagread.read_raw(bag, [JPEG])
    got = [store.deserialize_cdr(it[1], "sensor_msgs/msg/CompressedImage") for it in raw[JPEG][1]]
    assert got, "nothing of the best-effort camera in the bag"
    ks = [m.header.stamp.sec - 1 for m in got]
    assert ks == sorted(set(ks)) and ks[-1] < sent
    for k, m in zip(ks, got):
        assert bytes(m.data) == jpegs[k], f"frame {k}: the JPEG bytes as published"
