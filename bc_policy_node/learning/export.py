"""Export a trained run to one self-contained ONNX policy file, with metadata and a parity check.

The graph takes ``obs`` float32 (B, obs_dim) in raw units (normalization is inside), plus
``image_<name>`` uint8 (B, h, w, 3) per camera term of the contract (pixel scaling inside), and
returns ``actions`` (B, K, act_dim) for deterministic kinds, or ``means`` (B, M, K, act_dim)
and ``logits`` (B, M) (log mixing weights) for ``gmm``. The batch dimension is dynamic.
``metadata_props`` carries ``bc_policy.contract`` (the contract JSON) and ``bc_policy.meta``
(see docs/design.md), written by `core.control.runtime.embed_metadata` so writer and reader agree.
After writing, onnxruntime and torch are compared on held-out observations of the run; the
maximum absolute difference is written to ``<run_dir>/export_parity.json`` and export fails
(leaving no file) if it exceeds the tolerance.
"""
from __future__ import annotations

import hashlib
import io
import json
import warnings
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from ..core.contract import Contract
from ..core.control.runtime import CONTRACT_KEY, META_FORMAT, META_KEY, embed_metadata
from . import checkpoint as ckpt
from .models import ChunkPolicy

DEFAULT_OPSET = 17
PARITY_FILE = "export_parity.json"
PARITY_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """The model could not be exported, or the exported graph disagrees with torch."""


@dataclass
class ParityReport:
    """onnxruntime vs torch on held-out observations (raw output units)."""

    onnx_path: str
    num_obs: int
    max_abs_diff: float
    per_output: Dict[str, float]
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def model_id(kind: str, model: ChunkPolicy, data_hash: str) -> str:
    """``<kind>-<hash8>``: hash of the weights and the training data, stable for a given run."""
    h = hashlib.sha256(f"{kind}:{data_hash}".encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return f"{kind}-{h.hexdigest()[:8]}"


def build_metadata(run_cfg: Dict[str, Any], model: ChunkPolicy, opset: int,
                   training: Optional[Dict[str, Any]] = None) -> Tuple[Contract, Dict[str, Any]]:
    """(Contract, meta dict) for the ONNX ``metadata_props``, keys as in docs/design.md.

    ``training``: facts about the run (epochs, best epoch, ...) stored under ``train_config``.
    """
    contract = Contract.from_dict(run_cfg["contract"])
    mcfg = run_cfg["model"]
    meta = {
        "format": META_FORMAT,
        "kind": mcfg["kind"],
        "chunk_length": int(mcfg["chunk_length"]),
        "obs_dim": int(run_cfg["obs_dim"]),
        "act_dim": int(run_cfg["act_dim"]),
        "control_rate_hz": contract.control_rate_hz,
        "action_lower": list(contract.action.lower),
        "action_upper": list(contract.action.upper),
        "norm": run_cfg["norm"],
        "action_frame": mcfg.get("action_frame", "absolute"),
        "action_std": run_cfg.get("action_std", run_cfg["norm"]["act_std"]),
        "num_modes": int(mcfg["num_modes"]) if mcfg["kind"] == "gmm" else 1,
        "data_hash": run_cfg["data_hash"],
        "model_id": model_id(mcfg["kind"], model, run_cfg["data_hash"]),
        "package_version": ckpt.package_version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "opset": int(opset),
        "train_config": {"model": mcfg, "train": run_cfg["train"],
                         "num_samples": run_cfg.get("num_samples"),
                         "num_parameters": run_cfg.get("num_parameters"), **(training or {})},
    }
    return contract, meta


def to_onnx_bytes(model: ChunkPolicy, opset: int) -> bytes:
    names = list(model.output_names)
    inputs = ["obs"] + [t.input_name for t in model.cameras]
    dyn = {**{n: {0: "batch"} for n in inputs}, **{n: {0: "batch"} for n in names}}
    example = (torch.zeros(2, model.obs_dim),) + tuple(torch.zeros((2,) + t.shape, dtype=torch.uint8)
                                                        for t in model.cameras)
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo; the brief pins dynamo=False.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        # GroupNorm's trace-time size check (camera encoders); the batch axis stays dynamic.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(model, example, buf, input_names=inputs,
                          output_names=names, dynamic_axes=dyn, opset_version=opset,
                          do_constant_folding=True, dynamo=False)
    return buf.getvalue()


def read_metadata(onnx_path) -> Tuple[Contract, Dict[str, Any]]:
    """(Contract, meta dict) embedded in an exported policy file."""
    import onnx

    proto = onnx.load(str(onnx_path), load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    missing = [k for k in (CONTRACT_KEY, META_KEY) if k not in props]
    if missing:
        raise ExportError(f"{onnx_path}: no {missing} metadata; not a bc_policy_node policy file")
    return Contract.from_json(props[CONTRACT_KEY]), json.loads(props[META_KEY])


def _torch_outputs(model: ChunkPolicy, obs: np.ndarray, frames: Tuple[np.ndarray, ...] = ()
                   ) -> Dict[str, np.ndarray]:
    with torch.no_grad():
        out = model(torch.from_numpy(obs), *(torch.from_numpy(f) for f in frames))
    out = out if isinstance(out, tuple) else (out,)
    return {n: o.numpy() for n, o in zip(model.output_names, out)}


def _holdout_frames(run_dir: Path, model: ChunkPolicy) -> Tuple[np.ndarray, ...]:
    """The run's held-out camera frames, in contract order (empty without cameras)."""
    if not model.cameras:
        return ()
    path = run_dir / ckpt.HOLDOUT_IMAGES_FILE
    if not path.is_file():
        raise ExportError(f"{run_dir}: camera policy without held-out frames ({path.name} is missing)")
    with np.load(path) as z:
        return tuple(np.ascontiguousarray(z[t.name], dtype=np.uint8) for t in model.cameras)


def check_parity(onnx_path, run_dir, which: str = "best", tolerance: float = PARITY_TOLERANCE,
                 obs: Optional[np.ndarray] = None, frames: Optional[Tuple[np.ndarray, ...]] = None
                 ) -> ParityReport:
    """Compare onnxruntime (1 thread) with the torch model on the run's held-out observations
    (camera policies: on the held-out frames and their observations)."""
    import onnxruntime as ort

    model, _ = ckpt.load_policy(run_dir, which)
    if obs is None:
        obs = np.load(Path(run_dir) / ckpt.HOLDOUT_FILE)
    if frames is None:
        frames = _holdout_frames(Path(run_dir), model)
    if frames:
        obs = obs[:len(frames[0])]
    obs = np.ascontiguousarray(obs, dtype=np.float32)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    feeds = {"obs": obs, **{t.input_name: f for t, f in zip(model.cameras, frames)}}
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    want = _torch_outputs(model, obs, tuple(frames))
    if set(got) != set(want):
        raise ExportError(f"{onnx_path}: outputs {sorted(got)} != expected {sorted(want)}")
    per = {}
    for name, w in want.items():
        if got[name].shape != w.shape:
            raise ExportError(f"{onnx_path}: output {name!r} has shape {got[name].shape}, torch gives {w.shape}")
        per[name] = float(np.max(np.abs(got[name].astype(np.float64) - w))) if w.size else 0.0
    return ParityReport(onnx_path=str(onnx_path), num_obs=len(obs), max_abs_diff=max(per.values()),
                        per_output=per, tolerance=tolerance)


def export(run_dir, out_path, which: str = "best", opset: int = DEFAULT_OPSET,
           tolerance: float = PARITY_TOLERANCE) -> Path:
    """Export the run's ``best`` (or ``last``) weights to ``out_path``; returns the path.

    Raises `ExportError` (and writes no file) if onnxruntime and torch differ by more than
    ``tolerance`` on the held-out observations; the parity report is written to
    ``<run_dir>/export_parity.json`` either way.
    """
    import onnx

    run_dir, out_path = Path(run_dir), Path(out_path)
    model, run_cfg = ckpt.load_policy(run_dir, which)
    last = ckpt.load_checkpoint(run_dir / ckpt.LAST_CHECKPOINT)
    has_val = bool(run_cfg.get("num_samples", {}).get("val"))
    training = {"weights": which, "epochs": int(last["epoch"]), "steps": int(last["step"]),
                "best_epoch": int(last["best_epoch"]),
                "best_val_loss": float(last["best_val"]) if has_val else None}
    contract, meta = build_metadata(run_cfg, model, opset, training)
    try:
        proto = onnx.load_from_string(to_onnx_bytes(model, opset))
    except Exception as e:  # noqa: BLE001 - surface any exporter failure with context
        raise ExportError(f"torch.onnx.export failed for {meta['kind']} model of {run_dir}: {e}") from e
    embed_metadata(proto, contract, meta)
    onnx.checker.check_model(proto)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    onnx.save_model(proto, str(tmp), save_as_external_data=False)
    try:
        report = check_parity(tmp, run_dir, which, tolerance)
        report.onnx_path = str(out_path)
        record = {**asdict(report), "ok": report.ok, "model_id": meta["model_id"], "which": which}
        ckpt.write_json(run_dir / PARITY_FILE, record)
        if not report.ok:
            raise ExportError(f"{out_path}: onnxruntime and torch differ by {report.max_abs_diff:.3g} "
                              f"(> {tolerance:g}) on {report.num_obs} held-out observations: "
                              f"{report.per_output}; file not written")
        tmp.replace(out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path
