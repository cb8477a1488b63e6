"""The policy node's control loop without ROS: parameters, one tick's decisions, timing stats."""
import math
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import yaml

onnx = pytest.importorskip("onnx")
pytest.importorskip("rclpy")  # policy_loop lives in nodes/ (params.doc imports rcl_interfaces)

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from bc_policy_node.core.contract import Contract, ContractError, ObservationAssembler  # noqa: E402
from bc_policy_node.core.control.runtime import OnnxPolicy, PolicyContractMismatch, embed_metadata  # noqa: E402
from bc_policy_node.core.types import JointStateData  # noqa: E402
from bc_policy_node.nodes.policy_loop import (RESTART_EPISODE, RESTART_JUMP, ControlLoop,  # noqa: E402
                                              LoopStats, PolicyParams, load_policy, position_indices)

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
    w = np.zeros((A, k * A), np.float32)
    for kk in range(k):
        w[np.arange(A), kk * A + np.arange(A)] = 1
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.full(k * A, offset, np.float32), "b"),
             numpy_helper.from_array(np.array([-1, k, A], np.int64), "s")]
    nodes = [helper.make_node("MatMul", ["obs", "W"], ["m"]), helper.make_node("Add", ["m", "b"], ["f"]),
             helper.make_node("Reshape", ["f", "s"], ["actions"])]
    g = helper.make_graph(nodes, "p", [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["B", A])],
                          [helper.make_tensor_value_info("actions", TensorProto.FLOAT, ["B", k, A])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 10
    embed_metadata(m, c, {"kind": "chunk_mlp", "chunk_length": k})
    onnx.save(m, str(tmp_path / name))
    return tmp_path / name


def observe(asm, q, stamp):
    asm.update("/joint_states", JointStateData(stamp, ["a", "b"], np.asarray(q, float), np.zeros(2)), stamp)


def test_config_yaml_declares_exactly_the_parameters_with_the_dataclass_defaults():
    cfg = yaml.safe_load((ROOT / "config" / "policy.yaml").read_text())["policy"]["ros__parameters"]
    defaults = {f.name: f.default for f in fields(PolicyParams)}
    assert set(cfg) == set(defaults)
    assert cfg == defaults


def test_node_defaults_are_the_in_process_runners():
    """Same execution defaults as core.eval.rollout.PolicyRunner, so the node runs what was evaluated."""
    from bc_policy_node.core.eval.rollout import EXEC_DEFAULTS, RESET_JUMP_RAD

    p = PolicyParams()
    assert p.m == EXEC_DEFAULTS["temporal_ensembling"]["m"] == EXEC_DEFAULTS["mode_consistent"]["m"]
    assert p.mode_threshold == EXEC_DEFAULTS["mode_consistent"]["threshold"]
    assert p.reset_jump_rad == RESET_JUMP_RAD and p.query_every == 1 and p.mode_select == "argmax"


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
    loop = ControlLoop(c, OnnxPolicy(offset_policy(tmp_path, c, 0.05)), params)
    asm = ObservationAssembler(c)
    observe(asm, [0.2, 0.97], stamp=1.0)
    cmd = loop.step(asm, now=1.001)
    np.testing.assert_allclose(cmd, [0.25, 1.0], atol=1e-6)   # b clamped to the upper limit
    assert "joint_limit" in loop.events and loop.chunk is not None and loop.tick == 1
    # stale: no query, hold the last command exactly
    held = loop.step(asm, now=1.2)
    assert np.array_equal(held, cmd) and "stale_observation" in loop.events and loop.chunk is None
    # a NaN model is refused by the loop: hold, counted as nonfinite
    observe(asm, [0.25, 1.0], stamp=1.3)
    nan_loop_policy = OnnxPolicy(offset_policy(tmp_path, c, float("nan"), "nan.onnx"))
    assert loop.swap(nan_loop_policy) is True and loop.swaps == 1   # same K: plan kept
    held = loop.step(asm, now=1.301)
    assert np.array_equal(held, cmd) and loop.events == ("nonfinite_action",) and loop.chunk is None
    # swap to another chunk length: a new plan; the step bound still holds from the last command
    assert loop.swap(OnnxPolicy(offset_policy(tmp_path, c, -0.5, "k3.onnx", k=3))) is False
    nxt = loop.step(asm, now=1.302)
    np.testing.assert_allclose(nxt, cmd - 0.1, atol=1e-12)
    assert "step_limit" in loop.events and loop.chunk.shape == (3, A)


def test_first_command_holds_the_measured_position_when_the_first_observation_is_stale(tmp_path):
    c = contract()
    loop = ControlLoop(c, OnnxPolicy(offset_policy(tmp_path, c, 0.05)), PolicyParams())
    asm = ObservationAssembler(c)
    observe(asm, [0.3, -2.0], stamp=0.0)
    cmd = loop.step(asm, now=5.0)
    assert cmd.tolist() == [0.3, -1.0]                    # measured position, clipped into the limits
    assert loop.events == ("stale_observation",)


def test_a_new_episode_starts_a_new_plan_at_the_measured_position(tmp_path):
    """reset_on_change: the tick after the watched value changed forgets the old chunks and the
    last command: its command is the new chunk's first action, step-bounded from the measured
    position (without the reset it is clamped towards the previous episode's arm position)."""
    c = contract()
    policy = OnnxPolicy(offset_policy(tmp_path, c, 0.05))
    loops = {on: ControlLoop(c, policy, PolicyParams(m=0.0, reset_jump_rad=0.0)) for on in (True, False)}
    for on, loop in loops.items():
        asm = ObservationAssembler(c)
        assert loop.watch(7) is False and loop.marker == 7       # the first value is no change
        for n in range(5):
            observe(asm, [0.5, 0.5], stamp=0.01 * n)
            loop.step(asm, now=0.01 * n)
            assert loop.watch(7) is False and loop.restart == ""
        if on:
            assert loop.watch(8) is True
        observe(asm, [-0.3, -0.2], stamp=0.05)               # the new episode's first observation
        loop.step(asm, now=0.05)
        loop.cmd = loop.safety.last_command
    new, old = loops[True], loops[False]
    np.testing.assert_allclose(new.cmd, [-0.25, -0.15], atol=1e-6)   # measured + offset, one chunk
    assert new.restart == RESTART_EPISODE and new.restarts == {RESTART_EPISODE: 1, RESTART_JUMP: 0}
    assert new.contributors() == 1 and new.events == ()
    np.testing.assert_allclose(old.cmd, [0.45, 0.45], atol=1e-6)     # the bug: clamped from the old 0.55
    assert old.restart == "" and "step_limit" in old.events and old.contributors() == 4
    new.reset()                                                      # activation: no pending restart
    assert new.watch(8) is False


def test_the_arm_moved_away_from_the_last_command_starts_a_new_plan(tmp_path):
    """reset_jump_rad: a fresh measured position farther than that from the last command (on
    any joint) re-anchors the plan and the step bound there; stale positions never do."""
    c = contract()
    policy = OnnxPolicy(offset_policy(tmp_path, c, 0.05))
    loop = ControlLoop(c, policy, PolicyParams(m=0.0, reset_jump_rad=0.5))
    asm = ObservationAssembler(c)
    observe(asm, [0.0, 0.0], stamp=0.0)
    assert loop.step(asm, now=0.0).tolist() == pytest.approx([0.05, 0.05])
    observe(asm, [0.0, 0.54], stamp=0.01)               # 0.49 from the last command: tracking, no restart
    cmd = loop.step(asm, now=0.01)
    assert loop.restart == "" and "step_limit" in loop.events
    np.testing.assert_allclose(cmd, [0.05, 0.15], atol=1e-12)
    observe(asm, [0.0, 0.7], stamp=0.0)                 # far, but stale: hold, no restart
    assert np.array_equal(loop.step(asm, now=0.2), cmd) and loop.restart == ""
    observe(asm, [-0.6, 0.0], stamp=0.3)                # 0.65 rad away on joint a: someone moved the arm
    cmd = loop.step(asm, now=0.3)
    assert loop.restart == RESTART_JUMP and loop.jump == pytest.approx(0.65)
    np.testing.assert_allclose(cmd, [-0.55, 0.05], atol=1e-6)
    assert loop.events == () and loop.contributors() == 1 and loop.restarts[RESTART_JUMP] == 1
    off = ControlLoop(c, policy, PolicyParams(m=0.0, reset_jump_rad=0.0))
    observe(asm, [0.0, 0.0], stamp=1.0)
    off.step(asm, now=1.0)
    observe(asm, [-0.6, 0.0], stamp=1.01)
    np.testing.assert_allclose(off.step(asm, now=1.01), [-0.05, 0.05], atol=1e-6)   # clamped from the old
    assert off.restart == "" and off.restarts == {RESTART_EPISODE: 0, RESTART_JUMP: 0}


def linear_policy(path, c, seed=0):
    """chunk[k] = q + (k + 1) / K * (M obs + b): a deterministic policy that moves the arm."""
    k, a, d = c.chunk_length, c.act_dim, c.obs_dim
    rng = np.random.default_rng(seed)
    m, b = rng.normal(0, 0.4, (d, a)), rng.normal(0, 0.2, a)
    w, bias = np.zeros((d, k * a)), np.zeros(k * a)
    q = c.slices()[c.observation[0].name]
    for kk in range(k):
        cols = kk * a + np.arange(a)
        w[np.arange(q.start, q.stop), cols] = 1.0
        w[:, cols] += (kk + 1) / k * m
        bias[cols] = (kk + 1) / k * b
    inits = [numpy_helper.from_array(w.astype(np.float32), "W"), numpy_helper.from_array(bias.astype(np.float32), "b"),
             numpy_helper.from_array(np.array([-1, k, a], np.int64), "s")]
    nodes = [helper.make_node("MatMul", ["obs", "W"], ["m"]), helper.make_node("Add", ["m", "b"], ["f"]),
             helper.make_node("Reshape", ["f", "s"], ["actions"])]
    g = helper.make_graph(nodes, "lin", [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["B", d])],
                          [helper.make_tensor_value_info("actions", TensorProto.FLOAT, ["B", k, a])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    embed_metadata(model, c, {"kind": "chunk_mlp", "chunk_length": k})
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("params, same", [({}, True), ({"reset_on_change": "", "reset_jump_rad": 0.0}, False)])
def test_control_loop_commands_what_the_in_process_runner_commands_across_episodes(tmp_path, params, same):
    """The node's loop, fed the sim's messages tick by tick like the lock-step bridge feeds the
    node (one tick per observation, also on an episode's final one), over consecutive episodes
    = core.rollout.rollout with a PolicyRunner reset per episode, bit for bit. Without the
    episode trigger the second episode differs (the bug this guards against)."""
    from bc_policy_node.core.sim.env import SimEnv, load_contract
    from bc_policy_node.core.eval.rollout import PolicyRunner, policy_act_fn, rollout

    c = load_contract("planar3", "curved_reach")
    path = linear_policy(tmp_path / "lin.onnx", c)
    loop = ControlLoop(c, OnnxPolicy(path), PolicyParams(**params))
    asm, env = ObservationAssembler(c), SimEnv("planar3", "curved_reach")
    runner, ref_env = PolicyRunner(OnnxPolicy(path), c), SimEnv("planar3", "curved_reach")
    stamp, equal = 0.0, []
    for seed in (3, 4, 5):
        msgs, cmds = env.reset(seed), []
        while True:
            stamp += c.dt
            for topic, msg in msgs.items():
                asm.update(topic, msg, stamp)
            if params.get("reset_on_change", "x"):
                loop.watch(msgs["/task_state"].episode_id)
            cmd = loop.step(asm, now=stamp)
            if env.done:
                break
            cmds.append(cmd)
            msgs = env.step(cmd)
        runner.reset(seed=seed)
        ref = rollout(ref_env, c, policy_act_fn(runner, ref_env, c), seed)
        assert len(cmds) == ref.steps and np.abs(ref.q[-1] - ref.q[0]).max() > 0.2, "the policy moves the arm"
        equal.append(np.array_equal(np.array(cmds), ref.actions))
    if same:
        assert equal == [True, True, True]
        assert loop.restarts == {RESTART_EPISODE: 2, RESTART_JUMP: 0} and runner.jump_resets == 0
    else:
        assert equal[0] and not equal[1]


def test_policy_runner_holds_on_nan_and_restarts_after_a_jump_like_the_node(tmp_path):
    from bc_policy_node.core.eval.rollout import PolicyRunner

    c = contract()
    nan = PolicyRunner(OnnxPolicy(offset_policy(tmp_path, c, float("nan"), "nan.onnx")), c)
    assert nan.act(np.array([0.2, 0.3]), 0, np.array([0.2, 0.3])).tolist() == [0.2, 0.3]   # hold, no crash
    r = PolicyRunner(OnnxPolicy(offset_policy(tmp_path, c, 0.05)), c, m=0.0)
    np.testing.assert_allclose(r.act(np.zeros(2), 0, np.zeros(2)), [0.05, 0.05], atol=1e-6)
    np.testing.assert_allclose(r.act(np.array([-0.6, 0.0]), 1, np.array([-0.6, 0.0])), [-0.55, 0.05], atol=1e-6)
    assert r.jump_resets == 1


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
    from bc_policy_node.nodes.policy_loop import StampSync

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

    from bc_policy_node.nodes.policy_loop import PolicyLoader

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
