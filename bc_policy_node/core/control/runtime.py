"""Exported ONNX policies: metadata, validation on load, inference in numpy (no torch).

File format (docs/design.md, "ONNX policy files"): input ``obs`` float32 ``(B, obs_dim)`` in
raw units, plus ``image_<name>`` uint8 ``(B, h, w, 3)`` for each camera term of the contract
(normalization inside the graph); output ``actions`` float32 ``(B, K, act_dim)`` for deterministic kinds, or
``means (B, M, K, act_dim)`` + ``logits (B, M)`` for ``gmm``. ``metadata_props`` carry
``bc_policy.contract`` (contract JSON) and ``bc_policy.meta`` (JSON, format `META_FORMAT`).
`embed_metadata` writes both (the torch exporter and the tests share it); `OnnxPolicy` refuses
anything else with a `PolicyLoadError` that says what is wrong.
"""
from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from ..contract import Contract, ContractError
from ..types import json_default

META_FORMAT = 1
CONTRACT_KEY = "bc_policy.contract"
META_KEY = "bc_policy.meta"
DETERMINISTIC_KINDS = ("mlp", "chunk_mlp", "transformer")
POLICY_KINDS = DETERMINISTIC_KINDS + ("gmm",)
REQUIRED_META = ("format", "kind", "chunk_length", "obs_dim", "act_dim", "model_id")
MODE_SELECTIONS = ("argmax", "sample")


class PolicyLoadError(RuntimeError):
    """A policy file is missing, unreadable, lacks metadata or does not follow the format."""


class PolicyContractMismatch(ContractError):
    """The model's contract does not fit the robot's; ``.mismatches`` lists every difference."""

    def __init__(self, message: str, mismatches: List[str]):
        super().__init__(message)
        self.mismatches = list(mismatches)



def embed_metadata(model_proto, contract: Contract, meta: Mapping[str, Any]):
    """Write ``bc_policy.contract`` and ``bc_policy.meta`` into an ``onnx.ModelProto`` (in place).

    `meta` needs at least ``kind`` and ``chunk_length`` (and ``num_modes`` for gmm). Missing
    ``obs_dim``, ``act_dim``, ``control_rate_hz``, ``action_lower/upper`` are taken from the
    contract (given ones must agree with it); ``format``, ``opset``, ``created``,
    ``package_version`` and ``model_id`` (hash of graph + contract + meta) are filled in.
    Existing entries with the same keys are replaced. Returns `model_proto`.
    Works on the protobuf object directly, so the runtime never needs the ``onnx`` package.
    """
    m: Dict[str, Any] = json.loads(json.dumps(dict(meta), default=json_default))
    if m.setdefault("format", META_FORMAT) != META_FORMAT:
        raise ValueError(f"meta format {m['format']!r}: this package writes format {META_FORMAT}")
    if m.get("kind") not in POLICY_KINDS:
        raise ValueError(f"meta kind {m.get('kind')!r} not in {POLICY_KINDS}")
    if not isinstance(m.get("chunk_length"), int) or m["chunk_length"] < 1:
        raise ValueError(f"meta chunk_length must be an int >= 1, got {m.get('chunk_length')!r}")
    if m["kind"] == "gmm" and (not isinstance(m.get("num_modes"), int) or m["num_modes"] < 1):
        raise ValueError("gmm policies need meta num_modes (int >= 1)")
    derived = {"obs_dim": contract.obs_dim, "act_dim": contract.act_dim,
               "control_rate_hz": contract.control_rate_hz,
               "action_lower": list(contract.action.lower), "action_upper": list(contract.action.upper)}
    for key, value in derived.items():
        if m.setdefault(key, value) != value:
            raise ValueError(f"meta {key}={m[key]!r} disagrees with the contract ({value!r})")
    opsets = [o.version for o in model_proto.opset_import if o.domain in ("", "ai.onnx")]
    m.setdefault("opset", opsets[0] if opsets else None)
    m.setdefault("created", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    if "package_version" not in m:
        from ... import __version__
        m["package_version"] = __version__
    contract_json = contract.to_json()
    if not m.get("model_id"):
        h = hashlib.sha256(model_proto.graph.SerializeToString())
        h.update(contract_json.encode())
        h.update(json.dumps({k: v for k, v in m.items() if k != "created"}, sort_keys=True).encode())
        m["model_id"] = f"{m['kind']}-{h.hexdigest()[:12]}"
    props = model_proto.metadata_props
    keep = [(p.key, p.value) for p in props if p.key not in (CONTRACT_KEY, META_KEY)]
    del props[:]
    for key, value in keep + [(CONTRACT_KEY, contract_json),
                              (META_KEY, json.dumps(m, sort_keys=True))]:
        entry = props.add()
        entry.key, entry.value = key, value
    return model_proto


def _static(dim) -> Optional[int]:
    return dim if isinstance(dim, int) and dim > 0 else None


class OnnxPolicy:
    """An exported policy, validated against its embedded contract and ready for inference.

    Args:
        path: the ``.onnx`` file.
        threads: onnxruntime intra-op threads (1 is best for batch-1 control loops).
        seed: seed of the generator used by ``mode_select="sample"`` when no `rng` is passed.

    Attributes: ``contract`` (the model's `Contract`), ``meta`` (dict), ``kind``,
    ``chunk_length`` (K), ``obs_dim``, ``act_dim``, ``num_modes`` (1 for deterministic kinds),
    ``model_id``, ``path``.
    """

    def __init__(self, path: Union[str, Path], threads: int = 1, seed: Optional[int] = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise PolicyLoadError(f"policy file not found: {self.path}")
        if int(threads) < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(self.path), sess_options=opts,
                                                 providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise PolicyLoadError(f"{self.path}: not a loadable ONNX model: {e}") from None
        props = self._session.get_modelmeta().custom_metadata_map
        self.contract, self.meta = self._read_metadata(props)
        self.kind: str = self.meta["kind"]
        self.chunk_length: int = int(self.meta["chunk_length"])
        self.obs_dim: int = self.contract.obs_dim
        self.act_dim: int = self.contract.act_dim
        self.num_modes: int = int(self.meta.get("num_modes", 1)) if self.kind == "gmm" else 1
        self.model_id: str = str(self.meta["model_id"])
        self._output_names = self._check_signature()
        self._rng = np.random.default_rng(seed)
        self._check_runtime_shapes()

    # ---------------------------------------------------------------- loading
    def _fail(self, msg: str) -> PolicyLoadError:
        return PolicyLoadError(f"{self.path}: {msg}")

    def _read_metadata(self, props: Mapping[str, str]) -> Tuple[Contract, Dict[str, Any]]:
        missing = [k for k in (CONTRACT_KEY, META_KEY) if k not in props]
        if missing:
            raise self._fail(f"missing metadata {missing}; not a bc_policy export "
                             f"(use learning/export.py, which calls core.control.runtime.embed_metadata)")
        try:
            contract = Contract.from_json(props[CONTRACT_KEY])
        except (ContractError, ValueError) as e:
            raise self._fail(f"embedded contract refused: {e}") from None
        try:
            meta = json.loads(props[META_KEY])
        except ValueError as e:
            raise self._fail(f"{META_KEY} is not valid JSON: {e}") from None
        if not isinstance(meta, dict):
            raise self._fail(f"{META_KEY} must be a JSON object")
        if meta.get("format") != META_FORMAT:
            raise self._fail(f"meta format {meta.get('format')!r} is not supported "
                             f"(this package reads format {META_FORMAT})")
        absent = [k for k in REQUIRED_META if k not in meta]
        if absent:
            raise self._fail(f"meta lacks {absent}")
        if meta["kind"] not in POLICY_KINDS:
            raise self._fail(f"policy kind {meta['kind']!r} not supported {POLICY_KINDS}")
        if meta["kind"] == "gmm" and "num_modes" not in meta:
            raise self._fail("gmm policy meta lacks num_modes")
        for key, value in (("obs_dim", contract.obs_dim), ("act_dim", contract.act_dim)):
            if meta[key] != value:
                raise self._fail(f"meta {key}={meta[key]} but the embedded contract says {value}")
        rate = meta.get("control_rate_hz", contract.control_rate_hz)
        if not isinstance(rate, (int, float)) or abs(rate - contract.control_rate_hz) > 1e-9:
            raise self._fail(f"meta control_rate_hz={rate!r} but the embedded contract says "
                             f"{contract.control_rate_hz}")
        if not isinstance(meta["chunk_length"], int) or meta["chunk_length"] < 1:
            raise self._fail(f"meta chunk_length must be an int >= 1, got {meta['chunk_length']!r}")
        return contract, meta

    def _expected_outputs(self) -> Dict[str, Tuple[Optional[int], ...]]:
        k, a = self.chunk_length, self.act_dim
        if self.kind == "gmm":
            return {"means": (None, self.num_modes, k, a), "logits": (None, self.num_modes)}
        return {"actions": (None, k, a)}

    def _check_signature(self) -> List[str]:
        inputs = self._session.get_inputs()
        want = ["obs"] + [t.input_name for t in self.contract.images]
        if [i.name for i in inputs] != want:
            raise self._fail(f"expected inputs {want} (the contract's state vector and cameras), "
                             f"got {[i.name for i in inputs]}")
        x = inputs[0]
        if x.type != "tensor(float)" or len(x.shape) != 2 or _static(x.shape[1]) not in (None, self.obs_dim):
            raise self._fail(f"input 'obs' must be float32 (B, {self.obs_dim}), got {x.type} {x.shape}")
        for term, i in zip(self.contract.images, inputs[1:]):
            dims = [_static(d) for d in i.shape]
            if i.type != "tensor(uint8)" or len(dims) != 4 or any(
                    d is not None and d != s for d, s in zip(dims[1:], term.shape)):
                raise self._fail(f"input {i.name!r} must be uint8 (B, {', '.join(map(str, term.shape))}) "
                                 f"(camera {term.name!r}), got {i.type} {i.shape}")
        expected = self._expected_outputs()
        outputs = {o.name: o for o in self._session.get_outputs()}
        if set(outputs) != set(expected):
            raise self._fail(f"{self.kind} policy must have outputs {sorted(expected)}, got {sorted(outputs)}")
        for name, shape in expected.items():
            o = outputs[name]
            dims = [_static(d) for d in o.shape]
            ok = o.type == "tensor(float)" and len(dims) == len(shape) and all(
                d is None or s is None or d == s for d, s in zip(dims, shape))
            if not ok:
                raise self._fail(f"output {name!r} must be float32 {('B',) + shape[1:]} "
                                 f"(chunk_length={self.chunk_length}), got {o.type} {o.shape}")
        return list(expected)

    def _check_runtime_shapes(self) -> None:
        """One inference on zeros: catches chunk shapes the graph only fixes at run time."""
        try:
            outs = self._run(np.zeros((2, self.obs_dim), dtype=np.float32), self.blank_images(2))
        except Exception as e:
            raise self._fail(f"test inference failed: {e}") from None
        for (name, shape), out in zip(self._expected_outputs().items(), outs):
            want = (2,) + shape[1:]
            if out.shape != want:
                raise self._fail(f"output {name!r} has shape {out.shape} at run time, expected "
                                 f"{want} (chunk_length={self.chunk_length}, act_dim={self.act_dim})")

    # ---------------------------------------------------------------- inference
    def _run(self, x: np.ndarray, images: Optional[Mapping[str, np.ndarray]] = None) -> List[np.ndarray]:
        feeds = {"obs": x}
        if self.contract.images:
            if images is None:
                raise ValueError(f"this policy needs camera frames {[t.name for t in self.contract.images]}")
            from ..image import batch

            for t in self.contract.images:
                if t.name not in images:
                    raise ValueError(f"no frame for camera {t.name!r} (given: {sorted(images)})")
                frames = batch(t, images[t.name])
                if len(frames) != len(x):
                    raise ValueError(f"camera {t.name!r}: {len(frames)} frames for {len(x)} observations")
                feeds[t.input_name] = frames
        return self._session.run(self._output_names, feeds)

    def blank_images(self, batch: int = 1) -> Dict[str, np.ndarray]:
        """Zero frames for every camera (warm-up and shape checks); {} without cameras."""
        return {t.name: np.zeros((batch,) + t.shape, dtype=np.uint8) for t in self.contract.images}

    def _batch(self, obs) -> np.ndarray:
        x = np.asarray(obs, dtype=np.float32)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != self.obs_dim:
            raise ValueError(f"obs must be ({self.obs_dim},) or (B, {self.obs_dim}), got {np.shape(obs)}")
        return x

    def mixture(self, obs, images: Optional[Mapping[str, np.ndarray]] = None) -> Tuple[np.ndarray, np.ndarray]:
        """gmm only: ``(means (B, M, K, A), probabilities (B, M))`` as float64."""
        if self.kind != "gmm":
            raise ValueError(f"mixture() needs a gmm policy, this one is {self.kind!r}")
        means, logits = self._run(self._batch(obs), images)
        logits = logits.astype(np.float64)
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        return means.astype(np.float64), p / p.sum(axis=1, keepdims=True)

    def predict(self, obs, mode_select: str = "argmax", rng: Optional[np.random.Generator] = None,
                images: Optional[Mapping[str, np.ndarray]] = None):
        """Chunk(s) in raw units for one observation ``(obs_dim,)`` or a batch ``(B, obs_dim)``;
        `images` {camera: uint8 (h, w, 3) or (B, h, w, 3)} for a policy with cameras.

        Deterministic kinds return ``(B, K, A)`` float64. ``gmm`` returns ``(chunk (B, K, A),
        mode_index (B,))``: the component with the largest logit (``"argmax"``) or one drawn
        from softmax(logits) (``"sample"``, using `rng` or the policy's own generator).
        `predict_chunk` always returns just the array.
        """
        if self.kind != "gmm":
            (actions,) = self._run(self._batch(obs), images)
            return actions.astype(np.float64)
        if mode_select not in MODE_SELECTIONS:
            raise ValueError(f"mode_select must be one of {MODE_SELECTIONS}, got {mode_select!r}")
        means, probs = self.mixture(obs, images)
        if mode_select == "argmax":
            idx = probs.argmax(axis=1)
        else:
            u = (rng if rng is not None else self._rng).random(len(probs))
            idx = np.minimum((u[:, None] > np.cumsum(probs, axis=1)).sum(axis=1), self.num_modes - 1)
        return means[np.arange(len(idx)), idx], idx

    def predict_chunk(self, obs, mode_select: str = "argmax", rng: Optional[np.random.Generator] = None,
                      images: Optional[Mapping[str, np.ndarray]] = None) -> np.ndarray:
        """``(B, K, A)`` float64 for every kind (the gmm mode index is dropped)."""
        out = self.predict(obs, mode_select=mode_select, rng=rng, images=images)
        return out[0] if self.kind == "gmm" else out

    # ---------------------------------------------------------------- contract
    def check_contract(self, robot_contract: Contract) -> None:
        """Raise `PolicyContractMismatch` listing every difference that makes the model unusable."""
        diffs = self.contract.mismatches(robot_contract)
        if diffs:
            raise PolicyContractMismatch(
                f"model {self.model_id} ({self.path.name}, contract {self.contract.name!r}) does not "
                f"match robot contract {robot_contract.name!r}:\n  - " + "\n  - ".join(diffs), diffs)

    def describe(self) -> Dict[str, Any]:
        """Plain-dict summary (for the model-info topic and logs)."""
        return {"model_id": self.model_id, "path": str(self.path), "kind": self.kind,
                "chunk_length": self.chunk_length, "obs_dim": self.obs_dim, "act_dim": self.act_dim,
                "num_modes": self.num_modes, "contract": self.contract.name,
                "contract_fingerprint": self.contract.fingerprint(),
                "cameras": [t.to_dict() for t in self.contract.images],
                "control_rate_hz": self.contract.control_rate_hz}
