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
from bc_policy_node.core.runtime import OnnxPolicy, PolicyContractMismatch, embed_metadata  # noqa: E402
from bc_policy_node.core.types import JointStateData  # noqa: E402
from bc_policy_node.nodes.policy_loop import (ControlLoop, LoopStats, PolicyParams, load_policy,  # noqa: E402
                                              position_indices)

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


@pytest.mark.parametrize("bad", [{"execution_mode": "nope"}, {"command_interface": "effort"}, {"query_every": 0},
                                 {"threads": 0}, {"status_rate_hz": 0.0}, {"stale_after_s": -1.0},
                                 {"missed_tick_factor": 1.0}, {"m": math.inf}, {"controller": "a/b"},
                                 {"mode_select": "max"}, {"n_execute": -1}, {"lockstep": "yes"}])
def test_params_refuse_bad_values_naming_the_parameter(bad):
    with pytest.raises(ValueError) as e:
        PolicyParams(**bad)
    assert next(iter(bad)) in str(e.value)


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
