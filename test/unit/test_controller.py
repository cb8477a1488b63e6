"""The control engine without ROS (core.control): parameters, one tick's decisions, timing stats,
lock-step pairing, the policy loader. Plain Python: runs without rclpy."""
import math
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import yaml

onnx = pytest.importorskip("onnx")

from onnx_policies import hold_policy, hold_weights, linear_policy  # noqa: E402

from bc_policy_node.core.contract import Contract, ContractError, ObservationAssembler  # noqa: E402
from bc_policy_node.core.control.runtime import OnnxPolicy, PolicyContractMismatch  # noqa: E402
from bc_policy_node.core.types import JointStateData  # noqa: E402
from bc_policy_node.core.control.controller import (RESTART_EPISODE, RESTART_JUMP,  # noqa: E402
                                                    PolicyController, load_policy, position_indices)
from bc_policy_node.core.control.params import PolicyParams  # noqa: E402
from bc_policy_node.core.control.stats import LoopStats  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
K, A = 4, 2


def contract(**over):
    d = {"contract_version": 1, "name": "unit", "robot": "arm2", "task": "t", "control_rate_hz": 100.0,
         "chunk_length": K, "stale_after_s": 0.05,
         "observation": [{"name": "q", "topic": "/joint_states", "type": "sensor_msgs/msg/JointState",
                          "field": "position", "joints": ["a", "b"]}],
         "action": {"kind": "joint_position", "topic": "/c", "type": "std_msgs/msg/Float64MultiArray",
                    "joints": ["a", "b"], "lower": -1.0, "upper": 1.0, "max_step": 0.1}}
    d.update(over)
    return Contract.from_dict(d)


def offset_policy(tmp_path, c, offset, name="p.onnx", k=K):
    """actions[k] = q + offset (NaN offset -> NaN output)."""
    return hold_policy(tmp_path / name, c, offset, k)


def tick(loop, asm, now):
    """One node tick: the assembled vector, its oldest stamp, the node clock."""
    return loop.step(asm.vector(), asm.oldest_stamp(), now)


def observe(asm, q, stamp):
    asm.update("/joint_states", JointStateData(stamp, ["a", "b"], np.asarray(q, float), np.zeros(2)), stamp)


def test_config_yaml_declares_exactly_the_parameters_with_the_dataclass_defaults():
    cfg = yaml.safe_load((ROOT / "config" / "policy.yaml").read_text())["policy"]["ros__parameters"]
    defaults = {f.name: f.default for f in fields(PolicyParams)}
    assert set(cfg) == set(defaults)
    assert cfg == defaults


def test_in_process_execution_keywords_map_onto_the_node_parameters():
    """The experiments' executor keywords become the node's parameters (one set of defaults)."""
    assert PolicyParams.for_execution() == PolicyParams()
    p = PolicyParams.for_execution("mode_consistent", "sample", 7, 0.3, m=0.1, threshold=0.2, query_every=2)
    assert (p.execution_mode, p.mode_select, p.seed, p.reset_jump_rad) == ("mode_consistent", "sample", 7, 0.3)
    assert p.executor_kwargs() == {"m": 0.1, "threshold": 0.2, "query_every": 2}
    assert PolicyParams.for_execution("receding_horizon", n_execute=None).n_execute == 0
    with pytest.raises(ValueError, match="unknown execution parameter"):
        PolicyParams.for_execution(window=3)


@pytest.mark.parametrize("bad", [{"execution_mode": "nope"}, {"command_interface": "effort"}, {"query_every": 0},
                                 {"threads": 0}, {"status_rate_hz": 0.0}, {"stale_after_s": -1.0},
                                 {"missed_tick_factor": 1.0}, {"m": math.inf}, {"controller": "a/b"},
                                 {"mode_select": "max"}, {"n_execute": -1}, {"lockstep": "yes"},
                                 {"reset_jump_rad": -0.1}, {"reset_on_change": "task_state:episode_id"},
                                 {"reset_on_change": "/task_state"}, {"reset_on_change": "/task_state:"},
                                 {"reset_on_change": "/task_state:a-b"}])
def test_params_refuse_bad_values_naming_the_parameter(bad):
    with pytest.raises(ValueError) as e:
        PolicyParams(**bad)
    assert next(iter(bad)) in str(e.value)


def test_reset_on_change_is_parsed_into_topic_and_field_path():
    assert PolicyParams().reset_marker() == ("/task_state", ("episode_id",))
    nested = PolicyParams(reset_on_change="/ns/state:header.frame_id")
    assert nested.reset_marker() == ("/ns/state", ("header", "frame_id"))
    assert PolicyParams(reset_on_change="").reset_marker() is None


def test_command_topics_and_executor_arguments():
    assert PolicyParams().command_topic() == "/forward_position_controller/commands"
    assert PolicyParams(controller="arm", command_interface="trajectory").command_topic() == "/arm/joint_trajectory"
    assert PolicyParams(execution_mode="receding_horizon").executor_kwargs() == {"n_execute": None}
    assert PolicyParams(execution_mode="mode_consistent", mode_threshold=0.3).executor_kwargs()["threshold"] == 0.3


def test_position_indices_need_the_commanded_joints_observed():
    c = contract(observation=[{"name": "g", "topic": "/t", "type": "bc_msgs/msg/TaskState", "field": "goal", "size": 1},
                              {"name": "q", "topic": "/joint_states", "type": "sensor_msgs/msg/JointState",
                               "field": "position", "joints": ["b", "x", "a"]}])
    assert position_indices(c).tolist() == [3, 1]
    with pytest.raises(ContractError, match="first step reference"):
        position_indices(contract(observation=[{"name": "g", "topic": "/t", "type": "bc_msgs/msg/TaskState",
                                                "field": "goal", "size": 2}]))


def test_load_policy_refuses_mismatch_and_unfit_execution_parameters(tmp_path):
    c = contract()
    other = offset_policy(tmp_path, contract(robot="other", control_rate_hz=50.0), 0.0, "o.onnx")
    with pytest.raises(PolicyContractMismatch) as e:
        load_policy(str(other), c, PolicyParams())
    assert len(e.value.mismatches) == 2
    with pytest.raises(ValueError, match="n_execute=9 exceeds"):
        load_policy(str(offset_policy(tmp_path, c, 0.0)), c, PolicyParams(execution_mode="receding_horizon", n_execute=9))
    with pytest.raises(ValueError, match="model_path"):
        load_policy("", c, PolicyParams())


def test_tick_decisions_stale_nan_clamp_and_swap(tmp_path):
    c = contract()
    params = PolicyParams(m=0.0)
    loop = PolicyController(c, OnnxPolicy(offset_policy(tmp_path, c, 0.05)), params)
    asm = ObservationAssembler(c)
    observe(asm, [0.2, 0.97], stamp=1.0)
    r = tick(loop, asm, now=1.001)
    cmd = r.command
    np.testing.assert_allclose(cmd, [0.25, 1.0], atol=1e-6)   # b clamped to the upper limit
    assert "joint_limit" in r.events and r.chunk is not None and r.tick == 0 and loop.tick == 1
    # stale: no query, hold the last command exactly
    r = tick(loop, asm, now=1.2)
    assert np.array_equal(r.command, cmd) and "stale_observation" in r.events and r.chunk is None
    # a NaN model is refused by the loop: hold, counted as nonfinite
    observe(asm, [0.25, 1.0], stamp=1.3)
    nan_loop_policy = OnnxPolicy(offset_policy(tmp_path, c, float("nan"), "nan.onnx"))
    assert loop.swap(nan_loop_policy) is True and loop.swaps == 1   # same K: plan kept
    r = tick(loop, asm, now=1.301)
    assert np.array_equal(r.command, cmd) and r.events == ("nonfinite_action",) and r.chunk is None
    # swap to another chunk length: a new plan; the step bound still holds from the last command
    assert loop.swap(OnnxPolicy(offset_policy(tmp_path, c, -0.5, "k3.onnx", k=3))) is False
    r = tick(loop, asm, now=1.302)
    np.testing.assert_allclose(r.command, cmd - 0.1, atol=1e-12)
    assert "step_limit" in r.events and r.chunk.shape == (3, A)
    assert loop.hold(1.302).command.tolist() == r.command.tolist()   # what the node sends when step raises


def test_first_command_holds_the_measured_position_when_the_first_observation_is_stale(tmp_path):
    c = contract()
    loop = PolicyController(c, OnnxPolicy(offset_policy(tmp_path, c, 0.05)), PolicyParams())
    asm = ObservationAssembler(c)
    observe(asm, [0.3, -2.0], stamp=0.0)
    r = tick(loop, asm, now=5.0)
    assert r.command.tolist() == [0.3, -1.0]              # measured position, clipped into the limits
    assert r.events == ("stale_observation",)


def test_nan_before_any_chunk_holds_the_measured_position(tmp_path):
    """Formerly the in-process runner sent NaN when it had no chunk; now it holds, like the node."""
    c = contract()
    loop = PolicyController(c, OnnxPolicy(offset_policy(tmp_path, c, float("nan"), "nan.onnx")), PolicyParams())
    r = loop.step(np.array([0.2, 0.3]), 0.0)
    assert r.command.tolist() == [0.2, 0.3] and r.events == ("nonfinite_action",)


def test_a_new_episode_starts_a_new_plan_at_the_measured_position(tmp_path):
    """reset_on_change: the tick after the watched value changed forgets the old chunks and the
    last command: its command is the new chunk's first action, step-bounded from the measured
    position (without the reset it is clamped towards the previous episode's arm position)."""
    c = contract()
    policy = OnnxPolicy(offset_policy(tmp_path, c, 0.05))
    loops = {on: PolicyController(c, policy, PolicyParams(m=0.0, reset_jump_rad=0.0)) for on in (True, False)}
    last = {}
    for on, loop in loops.items():
        asm = ObservationAssembler(c)
        assert loop.watch(7) is False and loop.marker == 7       # the first value is no change
        for n in range(5):
            observe(asm, [0.5, 0.5], stamp=0.01 * n)
            r = tick(loop, asm, now=0.01 * n)
            assert loop.watch(7) is False and r.restart == ""
        if on:
            assert loop.watch(8) is True
        observe(asm, [-0.3, -0.2], stamp=0.05)               # the new episode's first observation
        last[on] = tick(loop, asm, now=0.05)
    new, old = loops[True], loops[False]
    np.testing.assert_allclose(last[True].command, [-0.25, -0.15], atol=1e-6)   # measured + offset, one chunk
    assert last[True].restart == RESTART_EPISODE and new.restarts == {RESTART_EPISODE: 1, RESTART_JUMP: 0}
    assert new.contributors() == 1 and last[True].events == ()
    np.testing.assert_allclose(last[False].command, [0.45, 0.45], atol=1e-6)     # the bug: clamped from 0.55
    assert last[False].restart == "" and "step_limit" in last[False].events and old.contributors() == 4
    new.reset()                                                      # activation: no pending restart
    assert new.watch(8) is False


def test_the_arm_moved_away_from_the_last_command_starts_a_new_plan(tmp_path):
    """reset_jump_rad: a fresh measured position farther than that from the last command (on
    any joint) re-anchors the plan and the step bound there; stale positions never do."""
    c = contract()
    policy = OnnxPolicy(offset_policy(tmp_path, c, 0.05))
    loop = PolicyController(c, policy, PolicyParams(m=0.0, reset_jump_rad=0.5))
    asm = ObservationAssembler(c)
    observe(asm, [0.0, 0.0], stamp=0.0)
    assert tick(loop, asm, now=0.0).command.tolist() == pytest.approx([0.05, 0.05])
    observe(asm, [0.0, 0.54], stamp=0.01)               # 0.49 from the last command: tracking, no restart
    r = tick(loop, asm, now=0.01)
    assert r.restart == "" and "step_limit" in r.events
    cmd = r.command
    np.testing.assert_allclose(cmd, [0.05, 0.15], atol=1e-12)
    observe(asm, [0.0, 0.7], stamp=0.0)                 # far, but stale: hold, no restart
    r = tick(loop, asm, now=0.2)
    assert np.array_equal(r.command, cmd) and r.restart == ""
    observe(asm, [-0.6, 0.0], stamp=0.3)                # 0.65 rad away on joint a: someone moved the arm
    r = tick(loop, asm, now=0.3)
    assert r.restart == RESTART_JUMP and r.jump == pytest.approx(0.65)
    np.testing.assert_allclose(r.command, [-0.55, 0.05], atol=1e-6)
    assert r.events == () and loop.contributors() == 1 and loop.restarts[RESTART_JUMP] == 1
    off = PolicyController(c, policy, PolicyParams(m=0.0, reset_jump_rad=0.0))
    observe(asm, [0.0, 0.0], stamp=1.0)
    tick(off, asm, now=1.0)
    observe(asm, [-0.6, 0.0], stamp=1.01)
    r = tick(off, asm, now=1.01)
    np.testing.assert_allclose(r.command, [-0.05, 0.05], atol=1e-6)   # clamped from the old
    assert r.restart == "" and off.restarts == {RESTART_EPISODE: 0, RESTART_JUMP: 0}


def test_sampling_is_seeded_and_reseeded_by_reset(tmp_path):
    """mode_select: sample draws from the controller's own generator (PolicyParams.seed)."""
    class Sampler:   # a stand-in policy whose chunk is the generator's next draw
        chunk_length, obs_dim = K, A

        def predict_chunk(self, obs, mode_select="argmax", rng=None, images=None):
            return np.full((1, K, A), rng.uniform(-0.05, 0.05))

    c = contract()
    runs = []
    for seed in (1, 1, 2):
        loop = PolicyController(c, Sampler(), PolicyParams(m=0.0, seed=seed, mode_select="sample"))
        runs.append([loop.step(np.zeros(2), 0.01 * i).command[0] for i in range(5)])
        loop.reset()                                    # re-seeded: the first draw again
        assert loop.step(np.zeros(2), 1.0).command[0] == runs[-1][0]
    assert runs[0] == runs[1] and runs[0] != runs[2]


def moving_policy(path, c, seed=0):
    """chunk[k] = q + (k + 1) / K * (M obs + b): a deterministic policy that moves the arm."""
    k, a = c.chunk_length, c.act_dim
    rng = np.random.default_rng(seed)
    m, b = rng.normal(0, 0.4, (c.obs_dim, a)), rng.normal(0, 0.2, a)
    scale = np.repeat(np.arange(1, k + 1) / k, a)
    return linear_policy(path, c, hold_weights(c, k) + np.tile(m, k) * scale, np.tile(b, k) * scale, k)


@pytest.mark.parametrize("params, same", [({}, True), ({"reset_on_change": "", "reset_jump_rad": 0.0}, False)])
def test_node_ticks_command_what_the_in_process_rollout_commands_across_episodes(tmp_path, params, same):
    """The controller fed the sim's messages tick by tick like the lock-step bridge feeds the
    node (one tick per observation, also on an episode's final one, episode changes only seen
    through watch()), over consecutive episodes = core.eval.rollout.rollout with the controller
    reset per episode, bit for bit. Without the episode trigger the second episode differs."""
    from bc_policy_node.core.eval.rollout import make_controller, policy_act_fn, rollout
    from bc_policy_node.core.sim.env import SimEnv, load_contract

    c = load_contract("planar3", "curved_reach")
    path = moving_policy(tmp_path / "lin.onnx", c)
    loop = PolicyController(c, OnnxPolicy(path), PolicyParams(**params))
    asm, env = ObservationAssembler(c), SimEnv("planar3", "curved_reach")
    ref_ctl, ref_env = make_controller(OnnxPolicy(path), c), SimEnv("planar3", "curved_reach")
    stamp, equal = 0.0, []
    for seed in (3, 4, 5):
        msgs, cmds = env.reset(seed), []
        for _tick in range(env.horizon + 2):     # bounded: the episode ends at its horizon
            stamp += c.dt
            for topic, msg in msgs.items():
                asm.update(topic, msg, stamp)
            if params.get("reset_on_change", "x"):
                loop.watch(msgs["/task_state"].episode_id)
            cmd = tick(loop, asm, now=stamp).command
            if env.done:
                break
            cmds.append(cmd)
            msgs = env.step(cmd)
        else:
            pytest.fail(f"seed {seed}: episode not done after horizon + 2 ticks")
        ref_ctl.reset(seed=seed)
        ref = rollout(ref_env, c, policy_act_fn(ref_ctl, c.dt), seed)
        assert len(cmds) == ref.steps and np.abs(ref.q[-1] - ref.q[0]).max() > 0.2, "the policy moves the arm"
        equal.append(np.array_equal(np.array(cmds), ref.actions))
    if same:
        assert equal == [True, True, True]
        assert loop.restarts == {RESTART_EPISODE: 2, RESTART_JUMP: 0} and ref_ctl.restarts[RESTART_JUMP] == 0
    else:
        assert equal[0] and not equal[1]


def test_loop_stats_count_missed_ticks_and_percentiles():
    s = LoopStats(0.001, 1.5, window=1000)
    t = 0.0
    for i in range(200):
        t += 0.001 if i % 50 else 0.0031                  # 4 stalls of 3.1 ms (the first is no period)
        s.record(t, 50e-6, 300e-6, 0.0, 10e-6 if i % 2 else float("nan"))
    out = s.summary(now=t)
    assert out["ticks"] == 200 and out["missed_ticks"] == 3 and out["queries"] == 100
    assert out["tick_time_p50_us"] == pytest.approx(50.0) and out["inference_time_p50_us"] == pytest.approx(10.0)
    assert out["period_p50_us"] == pytest.approx(1000.0)
    s.pause()
    s.record(t + 10.0, 50e-6, 0.0, 0.0, float("nan"))    # the gap after a pause is not a missed tick
    assert s.missed == 3


def test_stamp_sync_releases_a_stamp_once_every_topic_has_it():
    from bc_policy_node.core.sync import StampSync

    s = StampSync(["/js", "/ts"], max_pending=3)
    assert s.add("/js", (1, 0), "js1") is None
    assert s.add("/js", (2, 0), "js2") is None          # topics may run ahead of each other
    assert s.add("/ts", (2, 0), "ts2") == [("/js", "js2"), ("/ts", "ts2")]
    assert s.add("/ts", (1, 0), "ts1") is None          # older than the last released stamp
    assert s.add("/ts", (3, 0), "ts3") is None and s.add("/js", (3, 0), "js3") == [("/js", "js3"), ("/ts", "ts3")]
    for i in range(4, 9):                                # bounded memory for unmatched stamps
        s.add("/js", (i, 0), i)
    assert len(s._pending["/js"]) == 3


def test_policy_loader_reports_success_and_refusal_reasons(tmp_path):
    import threading
    from types import SimpleNamespace

    from bc_policy_node.core.control.loader import PolicyLoader

    c = contract()
    done = threading.Semaphore(0)
    loader = PolicyLoader(done.release)
    good = SimpleNamespace(path=str(offset_policy(tmp_path, c, 0.0)), contract=c, params=PolicyParams(),
                           policy=None, error="")
    bad = SimpleNamespace(path=str(tmp_path / "none.onnx"), contract=c, params=PolicyParams(), policy=None, error="")
    loader.submit(good)
    loader.submit(bad)
    assert done.acquire(timeout=30) and done.acquire(timeout=30)
    loader.close()
    assert list(loader.done) == [good, bad]
    assert good.policy is not None and good.error == ""
    assert bad.policy is None and "not found" in bad.error
