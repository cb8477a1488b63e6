"""Small ONNX policies for tests, built with onnx.helper (no torch): the one shared builder.

Every policy is linear, ``chunk[k] = obs @ W[:, k] + b[k]`` reshaped to (B, K, A), and carries
the package's metadata for `contract` (`core.control.runtime.embed_metadata`), so it runs
through the same OnnxPolicy / PolicyController / policy node path as a trained one.

    hold_policy(path, contract)                  every action = the measured joint positions
    hold_policy(path, contract, offset=0.02)     ... + 0.02 rad
    const_policy(path, contract, [1.2, -1.5])    every action = a fixed target
    linear_policy(path, contract, w, b)          any (obs_dim, K*A) weights and (K*A,) bias
    camera_policy(path, contract, gain, ...)     + gain * (mean pixel value of each camera / 255)
    camera_reference(contract, obs, images, ...) the same in numpy (what the graph computes)

Camera policies take the contract's ``image_<name>`` uint8 (B, h, w, 3) inputs like a trained
vision policy: ``chunk[k] = hold(obs) + (k + 1) * (drift + sum_cam gain_cam * mean_cam)``, with
``mean_cam`` the (B, 3) mean value per colour channel over the camera's (cropped) frame in [0, 1].
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


def camera_model(contract, w, b, gains, k: int) -> onnx.ModelProto:
    """obs @ W + b + sum over cameras of mean_rgb(image) / 255 @ G_cam (G_cam (3, k*A))."""
    a, d = contract.act_dim, contract.obs_dim
    inits = [numpy_helper.from_array(np.asarray(w, np.float32), "W"),
             numpy_helper.from_array(np.asarray(b, np.float32).reshape(-1), "b"),
             numpy_helper.from_array(np.array(1.0 / 255.0, np.float32), "inv255"),
             numpy_helper.from_array(np.array([-1, k, a], dtype=np.int64), "shape")]
    nodes = [helper.make_node("MatMul", ["obs", "W"], ["y"]), helper.make_node("Add", ["y", "b"], ["z0"])]
    inputs = [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["B", d])]
    last = "z0"
    for i, term in enumerate(contract.images):
        x = term.input_name
        inputs.append(helper.make_tensor_value_info(x, TensorProto.UINT8, ["B", *term.shape]))
        inits.append(numpy_helper.from_array(np.asarray(gains[i], np.float32), f"G{i}"))
        nodes += [helper.make_node("Cast", [x], [f"f{i}"], to=TensorProto.FLOAT),
                  helper.make_node("ReduceMean", [f"f{i}"], [f"m{i}"], axes=[1, 2], keepdims=0),   # (B, 3)
                  helper.make_node("Mul", [f"m{i}", "inv255"], [f"u{i}"]),
                  helper.make_node("MatMul", [f"u{i}", f"G{i}"], [f"c{i}"]),
                  helper.make_node("Add", [last, f"c{i}"], [f"z{i + 1}"])]
        last = f"z{i + 1}"
    nodes.append(helper.make_node("Reshape", [last, "shape"], ["actions"]))
    graph = helper.make_graph(nodes, "camera_policy", inputs,
                              [helper.make_tensor_value_info("actions", TensorProto.FLOAT, ["B", k, a])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def _camera_weights(contract, gain, drift, k):
    """(W, b, [G_cam]): hold + (i + 1) * (drift + gain_cam (3, A) @ mean) for action i."""
    a = contract.act_dim
    ramp = np.arange(1, k + 1)[:, None]
    b = (ramp * np.broadcast_to(np.asarray(drift, dtype=float), (a,))).reshape(-1)
    gains = []
    for i, _ in enumerate(contract.images):
        g = np.asarray(gain[i] if isinstance(gain, (list, tuple)) else gain, dtype=float)
        g = np.broadcast_to(g, (3, a))
        gains.append(np.concatenate([g * (j + 1) for j in range(k)], axis=1))    # (3, k*A)
    return hold_weights(contract, k), b, gains


def camera_policy(path, contract, gain=1.0, drift=0.0, k: Optional[int] = None):
    """A policy with the contract's camera inputs: action i of the chunk = the measured joint
    positions + (i + 1) * (drift + gain_cam^T mean_rgb_cam), mean_rgb in [0, 1]. `gain` a scalar,
    (3, A) matrix (colour channel -> joint) or one per camera; `drift` (A,) or a scalar."""
    if not contract.images:
        raise ValueError(f"contract {contract.name!r} has no camera terms")
    k = int(k or contract.chunk_length)
    w, b, gains = _camera_weights(contract, gain, drift, k)
    model = camera_model(contract, w, b, gains, k)
    embed_metadata(model, contract, {"kind": "mlp" if k == 1 else "chunk_mlp", "chunk_length": k})
    onnx.save_model(model, str(path))
    return path


def camera_reference(contract, obs, images, gain=1.0, drift=0.0, k: Optional[int] = None) -> np.ndarray:
    """(k, A) float64: what `camera_policy` computes for one observation and {camera: frame}."""
    k = int(k or contract.chunk_length)
    w, b, gains = _camera_weights(contract, gain, drift, k)
    out = np.asarray(obs, dtype=float) @ w + b
    for term, g in zip(contract.images, gains):
        out = out + (np.asarray(images[term.name], dtype=float).mean(axis=(0, 1)) / 255.0) @ g
    return out.reshape(k, contract.act_dim)
