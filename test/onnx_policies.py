"""Small ONNX policies for tests, built with onnx.helper (no torch): the one shared builder.

Every policy is linear, ``chunk[k] = obs @ W[:, k] + b[k]`` reshaped to (B, K, A), and carries
the package's metadata for `contract` (`core.control.runtime.embed_metadata`), so it runs
through the same OnnxPolicy / PolicyController / policy node path as a trained one.

    hold_policy(path, contract)                  every action = the measured joint positions
    hold_policy(path, contract, offset=0.02)     ... + 0.02 rad
    const_policy(path, contract, [1.2, -1.5])    every action = a fixed target
    linear_policy(path, contract, w, b)          any (obs_dim, K*A) weights and (K*A,) bias
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bc_policy_node.core.control.runtime import embed_metadata


def linear_model(w, b, k: int, a: int, in_name: str = "obs", out_name: str = "actions",
                 in_dim: Optional[int] = None) -> onnx.ModelProto:
    """The bare graph obs (B, D) -> MatMul W -> Add b -> Reshape (B, k, a), opset 17, no metadata."""
    w = np.asarray(w, dtype=np.float32)
    d = int(in_dim or w.shape[0])
    inits = [numpy_helper.from_array(w, "W"),
             numpy_helper.from_array(np.asarray(b, dtype=np.float32).reshape(-1), "b"),
             numpy_helper.from_array(np.array([-1, k, a], dtype=np.int64), "shape")]
    nodes = [helper.make_node("MatMul", [in_name, "W"], ["y"]), helper.make_node("Add", ["y", "b"], ["z"]),
             helper.make_node("Reshape", ["z", "shape"], [out_name])]
    graph = helper.make_graph(nodes, "policy", [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, ["B", d])],
                              [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["B", k, a])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def linear_policy(path, contract, w, b, k: Optional[int] = None, meta: Optional[dict] = None):
    """Save the linear policy (w, b) for `contract` with its metadata at `path`; returns `path`."""
    k = int(k or contract.chunk_length)
    model = linear_model(w, b, k, contract.act_dim)
    embed_metadata(model, contract, {"kind": "mlp" if k == 1 else "chunk_mlp", "chunk_length": k, **(meta or {})})
    onnx.save_model(model, str(path))
    return path


def hold_weights(contract, k: int, gain: float = 1.0) -> np.ndarray:
    """(obs_dim, k*A) weights copying the measured joint positions (the first observation term
    that covers the action's joints) into every action of the chunk."""
    a = contract.act_dim
    start = contract.slices()[contract.observation[0].name].start
    w = np.zeros((contract.obs_dim, k * a))
    for i in range(k):
        w[start + np.arange(a), i * a + np.arange(a)] = gain
    return w


def hold_policy(path, contract, offset=0.0, k: Optional[int] = None, step_bias: Optional[Sequence[float]] = None):
    """Every action = the measured joint positions + `offset`; with `step_bias`, action i of the
    chunk adds (i + 1) * step_bias (a policy that drifts)."""
    k = int(k or contract.chunk_length)
    b = np.full((k, contract.act_dim), float(offset))
    if step_bias is not None:
        b += np.arange(1, k + 1)[:, None] * np.asarray(step_bias, dtype=float)
    return linear_policy(path, contract, hold_weights(contract, k), b, k)


def const_policy(path, contract, target: Sequence[float], k: Optional[int] = None):
    """Every action = `target`, whatever the observation."""
    k = int(k or contract.chunk_length)
    return linear_policy(path, contract, np.zeros((contract.obs_dim, k * contract.act_dim)),
                         np.tile(np.asarray(target, dtype=float), k), k)
