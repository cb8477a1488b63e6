"""ONNX policy runtime: metadata round trip, every load error, gmm mode selection (no torch)."""
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bc_policy_node.core.contract import Contract
from bc_policy_node.core.control.runtime import (
    CONTRACT_KEY, META_FORMAT, META_KEY, OnnxPolicy, PolicyContractMismatch, PolicyLoadError,
    embed_metadata)

K, A, OBS = 4, 3, 5


def contract_dict(**over):
    d = {"contract_version": 1, "name": "t", "robot": "planar3", "task": "reach",
         "control_rate_hz": 50.0, "chunk_length": K, "stale_after_s": 0.1,
         "observation": [{"name": "q", "topic": "/joint_states", "type": "sensor_msgs/msg/JointState",
                          "field": "position", "joints": ["j1", "j2", "j3"]},
                         {"name": "goal", "topic": "/task_state", "type": "bc_msgs/msg/TaskState",
                          "field": "goal", "size": 2}],
         "action": {"kind": "joint_position", "topic": "/forward_position_controller/commands",
                    "type": "std_msgs/msg/Float64MultiArray", "joints": ["j1", "j2", "j3"],
                    "lower": -3.0, "upper": 3.0, "max_step": 0.08}}
    d.update(over)
    return d


CONTRACT = Contract.from_dict(contract_dict())


def linear_graph(out_name, w, b, out_shape, in_name="obs", in_dim=OBS, declared=None):
    """obs (B, in_dim) @ w + b, reshaped to (-1, *out_shape)."""
    inits = [numpy_helper.from_array(w.astype(np.float32), out_name + "_w"),
             numpy_helper.from_array(b.astype(np.float32), out_name + "_b"),
             numpy_helper.from_array(np.array((-1,) + out_shape, dtype=np.int64), out_name + "_s")]
    nodes = [helper.make_node("MatMul", [in_name, out_name + "_w"], [out_name + "_mm"]),
             helper.make_node("Add", [out_name + "_mm", out_name + "_b"], [out_name + "_add"])]
    if declared:  # target shape computed at run time (B, -1, A): K unknown to shape inference
        inits += [numpy_helper.from_array(np.array(v, dtype=np.int64), out_name + n)
                  for n, v in (("_c", [-1, out_shape[-1]]), ("_0", [0]), ("_1", [1]))]
        nodes += [helper.make_node("Shape", [in_name], [out_name + "_sh"]),
                  helper.make_node("Slice", [out_name + "_sh", out_name + "_0", out_name + "_1"],
                                   [out_name + "_bs"]),
                  helper.make_node("Concat", [out_name + "_bs", out_name + "_c"], [out_name + "_t"], axis=0)]
        shape_name = out_name + "_t"
    else:
        shape_name = out_name + "_s"
    nodes.append(helper.make_node("Reshape", [out_name + "_add", shape_name], [out_name]))
    out = helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["B"] + list(declared or out_shape))
    return nodes, inits, out


def make_model(kind="chunk_mlp", seed=0, k=K, modes=3, in_name="obs", out_names=None,
               declared=None, in_dim=OBS, logit_bias=None):
    rng = np.random.default_rng(seed)
    parts = []
    if kind == "gmm":
        names = out_names or ("means", "logits")
        parts.append(linear_graph(names[0], rng.normal(size=(in_dim, modes * k * A)),
                                  rng.normal(size=modes * k * A), (modes, k, A), in_name, in_dim))
        bias = np.zeros(modes) if logit_bias is None else np.asarray(logit_bias)
        parts.append(linear_graph(names[1], np.zeros((in_dim, modes)), bias, (modes,), in_name, in_dim))
    else:
        name = (out_names or ("actions",))[0]
        parts.append(linear_graph(name, rng.normal(size=(in_dim, k * A)), rng.normal(size=k * A),
                                  (k, A), in_name, in_dim, declared))
    graph = helper.make_graph([n for p in parts for n in p[0]], "policy",
                              [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, ["B", in_dim])],
                              [p[2] for p in parts], [i for p in parts for i in p[1]])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def save(model, tmp_path, name="p.onnx"):
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def exported(tmp_path, kind="chunk_mlp", meta=None, **kw):
    model = make_model(kind, **kw)
    m = {"kind": kind, "chunk_length": K, **({"num_modes": 3} if kind == "gmm" else {}), **(meta or {})}
    return save(embed_metadata(model, CONTRACT, m), tmp_path), model


def test_metadata_round_trip_and_prediction(tmp_path):
    path, model = exported(tmp_path, meta={"norm": {"obs_mean": [0.0] * OBS}, "data_hash": "abc"})
    p = OnnxPolicy(path, threads=1)
    assert p.kind == "chunk_mlp" and p.chunk_length == K and p.act_dim == A and p.obs_dim == OBS
    assert p.contract.fingerprint() == CONTRACT.fingerprint()
    assert p.meta["format"] == META_FORMAT and p.meta["opset"] == 17 and p.meta["data_hash"] == "abc"
    assert p.meta["action_lower"] == [-3.0] * 3 and p.meta["control_rate_hz"] == 50.0
    assert p.model_id.startswith("chunk_mlp-") and p.describe()["model_id"] == p.model_id
    w = numpy_helper.to_array(model.graph.initializer[0]).astype(np.float64)
    b = numpy_helper.to_array(model.graph.initializer[1]).astype(np.float64)
    obs = np.arange(OBS, dtype=float) * 0.1
    out = p.predict(obs)
    assert out.shape == (1, K, A) and out.dtype == np.float64
    np.testing.assert_allclose(out[0], (obs @ w + b).reshape(K, A), rtol=1e-5, atol=1e-5)
    assert p.predict(np.zeros((7, OBS))).shape == (7, K, A)
    with pytest.raises(ValueError, match="obs must be"):
        p.predict(np.zeros(OBS + 1))


def test_embed_metadata_replaces_and_validates():
    model = make_model()
    extra = model.metadata_props.add()
    extra.key, extra.value = "other", "kept"
    embed_metadata(model, CONTRACT, {"kind": "chunk_mlp", "chunk_length": K, "model_id": "first"})
    embed_metadata(model, CONTRACT, {"kind": "chunk_mlp", "chunk_length": K, "model_id": "second"})
    props = {p.key: p.value for p in model.metadata_props}
    assert len(model.metadata_props) == 3 and props["other"] == "kept"
    assert json.loads(props[META_KEY])["model_id"] == "second"
    assert Contract.from_json(props[CONTRACT_KEY]).fingerprint() == CONTRACT.fingerprint()
    with pytest.raises(ValueError, match="disagrees with the contract"):
        embed_metadata(model, CONTRACT, {"kind": "chunk_mlp", "chunk_length": K, "act_dim": 9})
    with pytest.raises(ValueError, match="num_modes"):
        embed_metadata(model, CONTRACT, {"kind": "gmm", "chunk_length": K})
    with pytest.raises(ValueError, match="kind"):
        embed_metadata(model, CONTRACT, {"kind": "diffusion", "chunk_length": K})


def with_props(model, contract_json, meta):
    for key, value in ((CONTRACT_KEY, contract_json), (META_KEY, json.dumps(meta))):
        e = model.metadata_props.add()
        e.key, e.value = key, value
    return model


GOOD_META = {"format": META_FORMAT, "kind": "chunk_mlp", "chunk_length": K, "obs_dim": OBS,
             "act_dim": A, "model_id": "m"}


@pytest.mark.parametrize("case, match", [
    ("missing_file", "not found"),
    ("garbage", "not a loadable ONNX model"),
    ("no_metadata", "missing metadata"),
    ("contract_version", "contract_version 2 is not supported"),
    ("meta_format", "meta format 2 is not supported"),
    ("meta_json", "not valid JSON"),
    ("meta_missing_key", "lacks \\['model_id'\\]"),
    ("meta_kind", "kind 'diffusion' not supported"),
    ("meta_obs_dim", "obs_dim=9 but the embedded contract says 5"),
    ("meta_rate", "control_rate_hz=100.0 but the embedded contract says 50.0"),
    ("input_name", "expected inputs \\['obs'\\]"),
    ("input_dim", "input 'obs' must be float32"),
    ("output_name", "must have outputs \\['actions'\\]"),
    ("gmm_outputs", "must have outputs \\['logits', 'means'\\]"),
    ("chunk_static", "output 'actions' must be float32"),
    ("chunk_runtime", "has shape \\(2, 6, 3\\) at run time"),
])
def test_load_errors(tmp_path, case, match):
    cj = CONTRACT.to_json()
    if case == "missing_file":
        path = tmp_path / "nope.onnx"
    elif case == "garbage":
        path = tmp_path / "g.onnx"
        path.write_bytes(b"definitely not protobuf \x00\x01\x02" * 10)
    elif case == "no_metadata":
        path = save(make_model(), tmp_path)
    elif case == "contract_version":
        path = save(with_props(make_model(), json.dumps(contract_dict(contract_version=2)), GOOD_META), tmp_path)
    elif case == "meta_format":
        path = save(with_props(make_model(), cj, {**GOOD_META, "format": 2}), tmp_path)
    elif case == "meta_json":
        model = with_props(make_model(), cj, {})
        model.metadata_props[1].value = "{not json"
        path = save(model, tmp_path)
    elif case == "meta_missing_key":
        path = save(with_props(make_model(), cj, {k: v for k, v in GOOD_META.items() if k != "model_id"}), tmp_path)
    elif case == "meta_kind":
        path = save(with_props(make_model(), cj, {**GOOD_META, "kind": "diffusion"}), tmp_path)
    elif case == "meta_obs_dim":
        path = save(with_props(make_model(), cj, {**GOOD_META, "obs_dim": 9}), tmp_path)
    elif case == "meta_rate":
        path = save(with_props(make_model(), cj, {**GOOD_META, "control_rate_hz": 100.0}), tmp_path)
    elif case == "input_name":
        path = save(with_props(make_model(in_name="x"), cj, GOOD_META), tmp_path)
    elif case == "input_dim":
        model = with_props(make_model(in_dim=OBS + 1), cj, GOOD_META)
        path = save(model, tmp_path)
    elif case == "output_name":
        path = save(with_props(make_model(out_names=("y",)), cj, GOOD_META), tmp_path)
    elif case == "gmm_outputs":
        path = save(with_props(make_model(), cj, {**GOOD_META, "kind": "gmm", "num_modes": 3}), tmp_path)
    elif case == "chunk_static":      # graph says K=6, meta says K=4
        path = save(with_props(make_model(k=6), cj, GOOD_META), tmp_path)
    elif case == "chunk_runtime":     # K symbolic in the graph, 6 at run time
        path = save(with_props(make_model(k=6, declared=("K", "A")), cj, GOOD_META), tmp_path)
    with pytest.raises(PolicyLoadError, match=match):
        OnnxPolicy(path)


def test_gmm_mode_selection(tmp_path):
    probs = np.array([0.2, 0.5, 0.3])
    path, model = exported(tmp_path, kind="gmm", logit_bias=np.log(probs))
    p = OnnxPolicy(path, seed=0)
    assert p.kind == "gmm" and p.num_modes == 3
    obs = np.linspace(-1, 1, OBS)
    means, pr = p.mixture(obs)
    assert means.shape == (1, 3, K, A)
    np.testing.assert_allclose(pr[0], probs, rtol=1e-5)
    chunk, idx = p.predict(obs, mode_select="argmax")
    assert idx.tolist() == [1] and chunk.shape == (1, K, A)
    np.testing.assert_array_equal(chunk[0], means[0, 1])
    batch = np.tile(obs, (6000, 1))
    chunks, idx = p.predict(batch, mode_select="sample", rng=np.random.default_rng(1))
    np.testing.assert_allclose(np.bincount(idx, minlength=3) / len(idx), probs, atol=0.025)
    np.testing.assert_array_equal(chunks[idx == 2][0], means[0, 2])
    again = p.predict(batch[:50], mode_select="sample", rng=np.random.default_rng(1))[1]
    np.testing.assert_array_equal(again, idx[:50])                     # reproducible with a seed
    assert p.predict_chunk(obs).shape == (1, K, A)
    with pytest.raises(ValueError, match="mode_select"):
        p.predict(obs, mode_select="mean")


def test_check_contract_lists_mismatches(tmp_path):
    path, _ = exported(tmp_path)
    p = OnnxPolicy(path)
    p.check_contract(CONTRACT)
    other = dict(contract_dict(control_rate_hz=100.0))
    other["action"] = {**other["action"], "joints": ["a", "b", "c"]}
    with pytest.raises(PolicyContractMismatch) as err:
        p.check_contract(Contract.from_dict(other))
    assert len(err.value.mismatches) == 2
    assert any(m.startswith("control_rate_hz") for m in err.value.mismatches)
    assert any(m.startswith("action.joints") for m in err.value.mismatches)
    assert "action.joints" in str(err.value)


def test_core_runtime_modules_import_without_torch_or_rclpy():
    code = ("import sys; import bc_policy_node.core.control.runtime, bc_policy_node.core.control.ensemble, "
            "bc_policy_node.core.control.safety, bc_policy_node.core.eval.metrics; "
            "print(sorted(m for m in ('torch', 'rclpy', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"
