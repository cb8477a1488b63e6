"""Typed model and training configurations (data only, validated on construction).

A training YAML (``config/train/*.yaml``) has two sections::

    model:
      kind: chunk_mlp      # mlp | chunk_mlp | gmm | transformer
      depth: 3             # hidden blocks (transformer: layers)
      width: 256           # hidden units (transformer: d_model)
      chunk_length: 20     # K actions per prediction
    train:
      lr: 1.0e-3
      max_epochs: 100

Unknown keys are rejected so a typo never silently falls back to a default.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

MODEL_KINDS = ("mlp", "chunk_mlp", "gmm", "transformer")
DETERMINISTIC_KINDS = ("mlp", "chunk_mlp", "transformer")
ACTION_FRAMES = ("absolute", "relative")
LOSSES = ("l1", "mse", "smooth_l1")
LR_SCHEDULES = ("constant", "cosine")
DEFAULT_CHUNK_LENGTH = 20


class ConfigError(ValueError):
    """A model or training configuration is invalid."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


# Fields added after run format 1 was fixed: left out of `to_dict` while at their defaults, so
# the runs, resume checks and experiment caches keyed by the older dicts keep their identity.
_LATER_FIELDS = ("vision_channels", "vision_keypoints", "image_shift")


def _to_dict(cfg) -> Dict[str, Any]:
    later = {f.name: f.default for f in fields(cfg) if f.name in _LATER_FIELDS}
    return {k: v for k, v in asdict(cfg).items() if not (k in later and v == later[k])}


def _from_mapping(cls, d: Optional[Mapping[str, Any]]):
    d = dict(d or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown keys {unknown} (known: {sorted(known)})")
    return cls(**d)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a behaviour-cloning policy.

    Attributes:
        kind: ``mlp`` (single step, K=1), ``chunk_mlp`` (K future actions, the default),
            ``gmm`` (mixture density over whole chunks) or ``transformer`` (small ACT-like
            chunk decoder; never the default).
        depth: number of hidden blocks (MLP kinds) or transformer layers.
        width: hidden units per block (MLP kinds) or d_model (transformer, <= 256).
        residual: pre-LN residual blocks (True) or a plain Linear/activation stack (False).
        layernorm: LayerNorm inside the blocks (and before the head of residual nets).
        chunk_length: K, actions predicted per observation. None = 1 for ``mlp``, 20 otherwise.
        num_modes: M mixture components (``gmm`` only; ignored otherwise).
        dropout: dropout probability inside the hidden blocks.
        num_heads: attention heads (``transformer`` only).
        min_std: lower bound of the GMM standard deviations, in normalized action units.
        action_frame: ``absolute`` (the network outputs joint targets) or ``relative`` (it
            outputs targets minus the measured joint positions of the observation, normalized by
            the statistics of those offsets; the exported graph adds the positions back, so the
            ONNX output and deployment are unchanged). Relative targets keep their precision
            near the goal, where absolute ones are small differences of large numbers.
        vision_channels: convolution channels of each camera's encoder (`learning.vision`;
            used only when the contract has image terms).
        vision_keypoints: spatial-softmax keypoints per camera (2 features each).
    """

    kind: str = "chunk_mlp"
    depth: int = 3
    width: int = 256
    residual: bool = True
    layernorm: bool = True
    chunk_length: Optional[int] = None
    num_modes: int = 5
    dropout: float = 0.0
    num_heads: int = 4
    min_std: float = 0.01
    action_frame: str = "absolute"
    vision_channels: int = 32
    vision_keypoints: int = 32

    def __post_init__(self):
        _check(self.kind in MODEL_KINDS, f"model.kind {self.kind!r} not in {MODEL_KINDS}")
        if self.chunk_length is None:
            object.__setattr__(self, "chunk_length", 1 if self.kind == "mlp" else DEFAULT_CHUNK_LENGTH)
        for name in ("depth", "width", "chunk_length", "num_modes", "num_heads", "vision_channels",
                     "vision_keypoints"):
            v = getattr(self, name)
            _check(isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                   f"model.{name} must be an integer >= 1, got {v!r}")
        for name in ("residual", "layernorm"):
            _check(isinstance(getattr(self, name), bool), f"model.{name} must be true/false")
        _check(self.kind != "mlp" or self.chunk_length == 1,
               f"model.kind 'mlp' is the single-step policy (chunk_length 1); got "
               f"chunk_length {self.chunk_length} - use kind 'chunk_mlp'")
        _check(0.0 <= self.dropout < 1.0, f"model.dropout must be in [0, 1), got {self.dropout}")
        _check(self.min_std > 0 and math.isfinite(self.min_std), "model.min_std must be > 0")
        _check(self.action_frame in ACTION_FRAMES,
               f"model.action_frame {self.action_frame!r} not in {ACTION_FRAMES}")
        if self.kind == "transformer":
            _check(self.width <= 256, f"transformer width (d_model) must be <= 256, got {self.width}")
            _check(self.depth <= 6, f"transformer depth must be <= 6 layers, got {self.depth}")
            _check(self.width % self.num_heads == 0,
                   f"transformer width {self.width} must be divisible by num_heads {self.num_heads}")

    @property
    def deterministic(self) -> bool:
        return self.kind in DETERMINISTIC_KINDS

    def to_dict(self) -> Dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, d: Optional[Mapping[str, Any]]) -> "ModelConfig":
        return _from_mapping(cls, d)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings.

    Attributes:
        lr: peak AdamW learning rate.
        batch_size: samples (frames) per step.
        max_epochs: upper bound on passes over the training split.
        max_steps: optional upper bound on optimizer steps (None = no bound).
        weight_decay: AdamW weight decay.
        val_fraction: fraction of *episodes* held out for validation (0 = no validation;
            model selection then uses the training loss).
        patience: epochs without validation improvement before stopping (0 = never stop early).
        min_delta: improvement smaller than this does not reset the patience counter.
        seed: seeds the split, the initialization, the shuffling and dropout.
        threads: torch intra-op threads while training.
        loss: regression loss of deterministic kinds on normalized actions (gmm uses NLL).
        lr_schedule: ``cosine`` (with warmup, over max_epochs) or ``constant``.
        warmup_steps: linear warmup steps of the cosine schedule.
        grad_clip: max gradient norm (0 = no clipping).
        deterministic: ``torch.use_deterministic_algorithms`` while training.
        segment_on: observation term whose change starts a new sub-task (e.g. ``phase``, the
            active waypoint): chunk targets stop at it and hold the last action before it, so a
            chunk never averages "arrive here" with "already on the way to the next one".
            Ignored for contracts that do not observe the term; None = off.
        image_shift: random-shift augmentation of camera frames, in pixels each way (0 = off;
            `learning.vision.random_shift`). Only for contracts with image terms.
    """

    lr: float = 1e-3
    batch_size: int = 256
    max_epochs: int = 100
    max_steps: Optional[int] = None
    weight_decay: float = 1e-4
    val_fraction: float = 0.1
    patience: int = 15
    min_delta: float = 1e-5
    seed: int = 0
    threads: int = 1
    loss: str = "l1"
    lr_schedule: str = "cosine"
    warmup_steps: int = 100
    grad_clip: float = 1.0
    deterministic: bool = True
    segment_on: Optional[str] = None
    image_shift: int = 2

    def __post_init__(self):
        _check(self.lr > 0 and math.isfinite(self.lr), f"train.lr must be > 0, got {self.lr}")
        for name in ("batch_size", "max_epochs", "threads"):
            v = getattr(self, name)
            _check(isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                   f"train.{name} must be an integer >= 1, got {v!r}")
        _check(self.max_steps is None or (isinstance(self.max_steps, int) and self.max_steps >= 1),
               f"train.max_steps must be None or >= 1, got {self.max_steps!r}")
        for name in ("patience", "warmup_steps", "seed", "image_shift"):
            v = getattr(self, name)
            _check(isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                   f"train.{name} must be an integer >= 0, got {v!r}")
        _check(self.weight_decay >= 0, "train.weight_decay must be >= 0")
        _check(0.0 <= self.val_fraction < 1.0, f"train.val_fraction must be in [0, 1), got {self.val_fraction}")
        _check(self.min_delta >= 0, "train.min_delta must be >= 0")
        _check(self.loss in LOSSES, f"train.loss {self.loss!r} not in {LOSSES}")
        _check(self.lr_schedule in LR_SCHEDULES, f"train.lr_schedule {self.lr_schedule!r} not in {LR_SCHEDULES}")
        _check(self.grad_clip >= 0, "train.grad_clip must be >= 0")
        _check(isinstance(self.deterministic, bool), "train.deterministic must be true/false")

    def to_dict(self) -> Dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, d: Optional[Mapping[str, Any]]) -> "TrainConfig":
        return _from_mapping(cls, d)


def configs_from_dict(d: Optional[Mapping[str, Any]]) -> Tuple[ModelConfig, TrainConfig]:
    """``{model: {...}, train: {...}}`` -> (ModelConfig, TrainConfig); missing sections use defaults."""
    d = dict(d or {})
    unknown = sorted(set(d) - {"model", "train"})
    if unknown:
        raise ConfigError(f"unknown top-level keys {unknown} (expected 'model' and 'train')")
    return ModelConfig.from_dict(d.get("model")), TrainConfig.from_dict(d.get("train"))


def load_configs(path) -> Tuple[ModelConfig, TrainConfig]:
    """Read a training YAML (see module docstring)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"training config not found: {path}")
    with path.open() as f:
        data = yaml.safe_load(f)
    try:
        return configs_from_dict(data)
    except (ConfigError, TypeError) as e:
        raise ConfigError(f"{path}: {e}") from None
