"""DAgger through real processes over DDS: bridge (lock-step) + policy + expert + dagger + recorder.

Policies are tiny ONNX graphs (test/onnx_policies.py, no torch): "hold" (every action =
the measured joint positions) and "constant" (every action = a fixed far-away target, so a
hand-back to it would jump). The expert is the scripted one, so every label can be checked
against `core.sim.experts` exactly. No timed asserts: timeouts only bound waits.
"""
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx_policies import const_policy, hold_policy  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Bool, Float64MultiArray  # noqa: E402

from bc_msgs.msg import FrameTag  # noqa: E402
from bc_policy_node.core.sim.disturbance import Pushes  # noqa: E402
from bc_policy_node.core.sim.env import SimEnv, load_contract  # noqa: E402
from bc_policy_node.core.data.episodes import Dataset  # noqa: E402
from bc_policy_node.core.eval.rollout import make_controller, policy_act_fn, rollout  # noqa: E402
from bc_policy_node.core.control.runtime import OnnxPolicy  # noqa: E402
from bc_policy_node.core.types import ACTOR_EXPERT, ACTOR_INTERVENTION, ACTOR_POLICY  # noqa: E402
from bc_policy_node.nodes import qos  # noqa: E402
from bc_policy_node.pipeline.dagger.graph import DaggerGraph  # noqa: E402
from bc_policy_node.pipeline.dagger.ros import RosOptions, ros_config, run_dagger_ros  # noqa: E402
from bc_policy_node.pipeline.dagger.training import round_configs  # noqa: E402

pytestmark = pytest.mark.ros
ROBOT, TASK = "planar3", "curved_reach"
CONTRACT = load_contract(ROBOT, TASK)
MAX_STEP = np.array(CONTRACT.action.max_step)
K, A, D = CONTRACT.chunk_length, CONTRACT.act_dim, CONTRACT.obs_dim
FAR = [1.2, -1.5, 1.5]          # rad; a target far from every start configuration
GENEROUS = {"expert_timeout_periods": 500.0}   # 10 s: labels never time out on a loaded machine
DEEP = QoSProfile(depth=5000, reliability=ReliabilityPolicy.RELIABLE)


class Watch:
    """Test-side subscriptions on the loop's client node (spun by DaggerGraph's waits)."""

    def __init__(self, dg: DaggerGraph):
        n = dg.client.node
        self.tags, self.js, self.cmds = [], [], []
        n.create_subscription(FrameTag, "/dagger/frame_tag", self.tags.append, DEEP)
        n.create_subscription(JointState, "/joint_states", self.js.append, DEEP)
        n.create_subscription(Float64MultiArray, "/forward_position_controller/commands",
                              lambda m: self.cmds.append(np.array(m.data)), DEEP)

    def clear(self):
        self.tags.clear()
        self.js.clear()
        self.cmds.clear()

    def episode(self, ep):
        tags = sorted((t for t in self.tags if t.episode_id == ep), key=lambda t: t.step)
        return tags, np.array([t.executed_action for t in tags])

    def positions(self):
        """Joint positions by stamp (a re-published pair counts once)."""
        by = {(m.header.stamp.sec, m.header.stamp.nanosec): np.array(m.position) for m in self.js}
        return np.array([by[k] for k in sorted(by)])


def spin_until(dg, cond, timeout=60.0):
    end = time.monotonic() + timeout
    while not cond():
        dg.client.check()
        assert time.monotonic() < end, "condition not reached (see the node logs)"
        dg.client.executor.spin_once(timeout_sec=0.005)


def assert_steps_within_clamp(q0, executed):
    d = np.abs(np.diff(np.vstack([q0, executed]), axis=0))
    worst = d.max(axis=0)
    assert np.all(d <= MAX_STEP + 1e-12), f"command jump {worst} > max_step {MAX_STEP}"


# ----------------------------------------------------------------------------- one round
PUSHES = Pushes(magnitude=0.4, interval=40.0, count=2)



def test_one_round_through_the_graph_labels_aggregates_and_hot_swaps(tmp_path):
    """A short classic round (beta_1 = 0.5): every frame tagged, labels = the core expert's
    act_obs at the recorded observations, each with the expert's planned chunk (chunk labels
    on by default for classic: K = the retrained model's chunk_length) = plan_obs there,
    aggregated with round 0, retrained, exported and hot-swapped into the running policy node
    (its status reports the new model id). The bridge pushes the arm (--push-magnitude): the
    recorded states carry the seeded pushes and are labelled like any other."""
    hold = hold_policy(tmp_path / "hold.onnx", CONTRACT)
    hold_id = OnnxPolicy(hold).model_id
    seen = {}

    def on_round(rec, dg):        # while the graph still runs: the node's own status
        seen["status_model_id"] = dg.policy_status.model_id
        seen["swaps"] = dg.policy_status.model_swaps

    out = tmp_path / "dagger"
    cfg = ros_config(robot=ROBOT, task=TASK, initial_model=str(hold), rounds=1, episodes_per_round=2,
                     out_dir=str(out), eval_seeds=range(10_000, 10_003), initial_demos=2, progress=False,
                     model_cfg={"width": 32, "depth": 1}, train_cfg={"max_steps": 30}, disturbance=PUSHES)
    summary = run_dagger_ros(cfg, RosOptions(dagger_params=GENEROUS), on_round=on_round)
    r0, r1 = summary["rounds"]
    assert r1["beta"] == 0.5
    k_label = round_configs(None, None)[0].chunk_length   # the default config's K (config/train/chunk_mlp.yaml)
    assert summary["label_chunk_length"] == k_label and summary["disturbance"] == PUSHES.to_dict()
    # ---- tags: one per control step, both actors, everything labelled (generous timeout)
    episodes = json.loads((out / "round_01" / "episodes.json").read_text())
    assert len(episodes) == 2
    for e in episodes:
        assert e["frames"] == e["steps"] > 0 and e["missing_steps"] == 0, e
        assert e["labelled"] == e["frames"], e
        assert set(e["actors"]) <= {"expert", "policy"}
    actors = {a for e in episodes for a in e["actors"]}
    assert actors == {"expert", "policy"}, "beta 0.5 over ~400 steps: both must have acted"
    # ---- the round's dataset: FrameTag alignment, observations = the raw topics' assembly
    report = json.loads((out / "round_01" / "data" / "build_report.json").read_text())
    assert report["included"] == 2
    for entry in report["episodes"]:
        assert entry["alignment"] == "frame_tag" and entry["frame_obs_mismatch"] == 0, entry
    ds = Dataset.load(out / "round_01" / "data")
    assert [len(ep) for ep in ds.episodes] == [e["steps"] for e in sorted(episodes, key=lambda e: e["bag"])]
    expert = SimEnv(ROBOT, TASK).make_expert()
    n = 0
    for ep in ds.episodes:
        assert ep.labelled.all()
        want = np.array([expert.act_obs(o, CONTRACT, mode=-1) for o in ep.obs])
        np.testing.assert_allclose(ep.act, want, rtol=0, atol=1e-12)
        # chunk labels: the expert's K-step plan from each recorded observation (FrameTag
        # expert_action K x A -> Episode.chunk_labels); its first row is the label that acted
        assert ep.chunk_labels is not None and ep.chunk_labels.shape == (len(ep), k_label, A)
        plans = np.array([expert.plan_obs(o, CONTRACT, k_label, mode=-1) for o in ep.obs])
        np.testing.assert_allclose(ep.chunk_labels, plans, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(ep.chunk_labels[:, 0], ep.act)
        q = ep.obs[:, CONTRACT.slices()["joint_pos"]]
        ticks = [t for t in PUSHES.schedule(ep.meta["seed"], SimEnv(ROBOT, TASK).horizon, A) if t < len(ep)]
        assert ticks and all(np.linalg.norm(q[t] - q[t - 1]) > 0.8 * PUSHES.magnitude for t in ticks)
        n += len(ep)
    # ---- aggregate = round 0 + round 1; retrained model swapped into the running node
    assert r1["labels_new"] == n and r1["labels_cumulative"] == r0["labels_cumulative"] + n
    assert r1["frames_cumulative"] == r0["frames_cumulative"] + n
    new_id = OnnxPolicy(out / "round_01" / "policy.onnx").model_id
    assert r0["model_id"] == hold_id and r1["model_id"] == new_id != hold_id
    rec = json.loads((out / "round_01" / "record.json").read_text())
    assert rec["extra"]["swap"]["from"] == hold_id and rec["extra"]["swap"]["to"] == new_id
    assert seen == {"status_model_id": new_id, "swaps": 1}
    assert Path(summary["plot"]).is_file() and "| 1 | 0.5 |" in summary["table"]


def test_a_lost_command_is_sent_again_when_the_bridge_republishes_its_pair(tmp_path):
    """(Its own graph, before the module's shared one starts: one bridge at a time.)
    Lock-step recovery: the bridge drops a command (here its rate limit, 2 Hz: one command
    per 0.5 s gets through), so it stays at its pair; kicked (~/step 0), it re-publishes that
    pair, and the dagger node answers the repeated stamp with the command it already sent (no
    new frame). Without the re-send the loop would stay at step 1 for good."""
    hold = hold_policy(tmp_path / "hold.onnx", CONTRACT)
    with DaggerGraph(ROBOT, TASK, hold, "classic", tmp_path / "logs", tmp_path / "bags", beta=1.0,
                     dagger_params=GENEROUS, bridge_params={"max_command_rate_hz": 2.0}) as dg:
        c = dg.client
        dg.rearm_policy()
        ep = int(c.reset(seed=7, task=TASK).episode_id)
        step = lambda: c.task_states[ep].step if ep in c.task_states else 0  # noqa: E731
        c.wait_until(lambda: step() >= 1, 30.0, "the first command to get through")
        c.spin(1.0)
        assert step() == 1, "the rate limit dropped the answer to step 1"
        end = time.monotonic() + 60.0
        while step() < 4:
            assert time.monotonic() < end, f"stuck at step {step()} (dagger status {dg.dagger_status})"
            c.step(0)                        # the kick DaggerGraph.wait_done sends after a stall
            c.spin(0.7)                      # > RESEND_AFTER_S, and the bucket refills
        # steps 1 -> 2 -> 3 -> 4 each needed a re-send; still one frame per stamp (steps 0..4)
        c.wait_until(lambda: dg.dagger_status and dg.dagger_status.get("resent_commands", 0) >= 3
                     and dg.dagger_status.get("frames", 0) == step() + 1, 10.0,
                     "the dagger node to report its re-sent commands")


# ----------------------------------------------------------------------------- one graph
@pytest.fixture(scope="module")
def dagger(tmp_path_factory):
    d = tmp_path_factory.mktemp("dagger_graph")
    hold = hold_policy(d / "hold.onnx", CONTRACT)
    dg = DaggerGraph(ROBOT, TASK, hold, "classic", d / "logs", d / "bags", beta=1.0, dagger_params=GENEROUS)
    try:
        yield dg, Watch(dg), d
    finally:
        dg.close()


def test_beta_one_is_the_expert_alone_and_beta_zero_the_policy_alone(dagger):
    """beta = 1: executed commands and joint trajectory are the expert's own rollout of that
    seed (in-process SimEnv + the same scripted expert), to the last bit. beta = 0: they are
    the in-process rollout of the same ONNX policy (core.eval.rollout.make_controller: the policy node's engine) - which also
    proves each policy command is paired with the observation it answered."""
    dg, w, d = dagger
    dg.set_beta(1.0)
    w.clear()
    seed = 7
    out = dg.run_episode(seed, episode_id=1, record=False)
    final, traj = SimEnv(ROBOT, TASK).run_expert(seed, record=True)
    assert out["reasons"] == {"beta": out["steps"]}, out
    assert (out["status"], out["steps"]) == (final.status, len(traj["act"])) == ("success", final.step)
    tags, executed = w.episode(out["bridge_episode"])
    assert [t.step for t in tags] == list(range(out["steps"]))
    assert all(t.actor == ACTOR_EXPERT and t.labelled and t.gate_reason == "beta" for t in tags)
    np.testing.assert_allclose(executed, traj["act"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(w.positions()[:len(traj["q"])], traj["q"], rtol=0, atol=1e-12)

    drift = hold_policy(d / "drift.onnx", CONTRACT, step_bias=[0.03, -0.02, 0.01])
    dg.swap(drift)
    dg.set_beta(0.0)
    w.clear()
    out = dg.run_episode(seed, episode_id=2, record=False)
    env = SimEnv(ROBOT, TASK)
    ctl = make_controller(OnnxPolicy(drift), CONTRACT)
    ctl.reset(seed=seed)
    ref = rollout(env, CONTRACT, policy_act_fn(ctl, CONTRACT.dt), seed)
    tags, executed = w.episode(out["bridge_episode"])
    assert (out["status"], out["steps"]) == (ref.status, ref.steps)
    assert all(t.actor == ACTOR_POLICY and t.labelled for t in tags)     # classic: labels everywhere
    np.testing.assert_allclose(executed, ref.actions, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.array([t.policy_action for t in tags]), ref.actions, rtol=0, atol=1e-12)


def test_expert_timeout_unlabels_frames_and_the_loop_keeps_running(dagger):
    """The expert process is frozen (SIGSTOP) mid-episode: its frames time out, are marked
    unlabelled, the policy acts, a command still goes out at every step and the episode
    ends; once it is thawed, labels come back."""
    dg, w, _ = dagger
    dg.set_dagger_params(beta=1.0, expert_timeout_periods=5.0)
    w.clear()
    expert = dg.graph["expert"]
    dg.rearm_policy()
    ep = int(dg.client.reset(seed=11, task=TASK).episode_id)
    spin_until(dg, lambda: len(w.episode(ep)[0]) >= 10)
    os.kill(expert.pid, signal.SIGSTOP)
    try:
        final = dg.wait_done(ep)
        dg.client.spin(1.5)                      # the next ~/status of the dagger node
    finally:
        os.kill(expert.pid, signal.SIGCONT)
    tags, executed = w.episode(ep)
    assert [t.step for t in tags] == list(range(final.step)), "a frame tag for every step"
    assert final.done and final.step > 30
    assert len(w.cmds) == final.step, "one command per step, never a stall"
    assert all(t.labelled for t in tags[:10])
    late = [t for t in tags if not t.labelled]
    assert late and any("expert_timeout" in t.gate_reason for t in late), {t.gate_reason for t in late}
    for t in late:
        assert t.actor == ACTOR_POLICY and len(t.expert_action) == 0 and len(t.policy_action) == A
    assert dg.dagger_status["expert_timeouts"] >= 1
    # ---- thawed: labels are back in the next episode
    dg.set_dagger_params(expert_timeout_periods=GENEROUS["expert_timeout_periods"])
    out = dg.run_episode(12, episode_id=2, record=False)
    tags2, _ = w.episode(out["bridge_episode"])
    labelled = np.array([t.labelled for t in tags2])
    assert labelled[len(labelled) // 2:].all() and labelled.mean() > 0.9, out["reasons"]


def drop_resent(cmds: np.ndarray, n: int) -> np.ndarray:
    """`cmds` without the first `n` commands that repeat their predecessor exactly (re-sends)."""
    keep = np.ones(len(cmds), dtype=bool)
    for i in range(1, len(cmds)):
        if n and np.array_equal(cmds[i], cmds[i - 1]):
            keep[i], n = False, n - 1
    assert n == 0, "the dagger node reported more re-sent commands than repeated ones on the wire"
    return cmds[keep]


def test_intervention_handover_never_jumps_beyond_the_step_clamp(dagger):
    """human_gated: intervention on -> off (hand-back to a policy whose own plan has run far
    away) -> on with a teleop target far away -> off. Every executed command stays within
    max_step of the previous one (the first one of the measured position), although the
    proposals at the hand-overs jump further; intervention frames are labelled, policy
    frames are not."""
    dg, w, d = dagger
    dg.swap(const_policy(d / "far.onnx", CONTRACT, FAR))
    dg.restart_dagger({"variant": "human_gated"})
    resent0 = int(dg.dagger_status.get("resent_commands", 0))
    teleop = dg.client.node.create_publisher(Float64MultiArray, "/dagger/teleop_command", qos.COMMAND)
    switch = dg._intervention
    dg.rearm_policy()
    switch.publish(Bool(data=True))
    dg.client.spin(0.3)
    w.clear()
    ep = int(dg.client.reset(seed=4, task=TASK).episode_id)
    target = np.array([-1.0, 1.2, -1.2])
    phase = [0]

    def operator():             # reacts to the frames it sees, like a person (a few ticks late)
        n = len(w.tags)
        if phase[0] == 0 and n >= 15:
            switch.publish(Bool(data=False))
            phase[0] = 1
        elif phase[0] == 1 and n >= 45:
            switch.publish(Bool(data=True))
            phase[0] = 2
        elif phase[0] == 2:
            teleop.publish(Float64MultiArray(data=target.tolist()))
            if n >= 75:
                switch.publish(Bool(data=False))
                phase[0] = 3

    ts = dg.wait_done(ep, on_spin=operator)
    dg.client.spin(0.2)
    tags, executed = w.episode(ep)
    assert [t.step for t in tags] == list(range(ts.step)) and phase[0] == 3
    # the commands on the wire are the executed ones, plus the lock-step re-sends of a command the
    # bridge did not get (a loaded machine: the restarted node's first command before the bridge
    # matched it; the kick re-publishes the pair and the node sends the same command again)
    dg.client.wait_until(lambda: int(dg.dagger_status.get("frames", 0)) >= ts.step, 10.0, "the dagger status")
    resent = int(dg.dagger_status.get("resent_commands", 0)) - resent0
    np.testing.assert_array_equal(drop_resent(np.array(w.cmds), resent), executed)
    assert_steps_within_clamp(w.positions()[0], executed)
    actors = np.array([t.actor for t in tags])
    assert {ACTOR_INTERVENTION, ACTOR_POLICY} <= set(actors.tolist())
    prev = np.vstack([w.positions()[:1], executed[:-1]])
    wanted = np.array([np.abs(np.asarray(t.policy_action if t.actor == ACTOR_POLICY else t.expert_action)
                              - p).max() for t, p in zip(tags, prev)])
    hand_backs = [i for i in range(1, len(tags)) if actors[i] == ACTOR_POLICY and actors[i - 1] == ACTOR_INTERVENTION]
    assert hand_backs and max(wanted[i] for i in hand_backs) > MAX_STEP.max() + 1e-3, \
        "the hand-back must have needed the clamp (else this test proves nothing)"
    teleop_frames = [t for t in tags if "teleop" in t.gate_reason]
    assert teleop_frames, "the teleop command must have acted"
    for t in teleop_frames:
        np.testing.assert_array_equal(t.expert_action, target)
    for t in tags:
        if t.actor == ACTOR_INTERVENTION:
            assert t.labelled and len(t.expert_action) == A
        else:
            assert not t.labelled and len(t.expert_action) == 0

