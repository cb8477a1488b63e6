"""Behaviour-cloning policies over action chunks (torch).

Every policy takes *raw* observations and returns *raw* actions: the dataset's normalization
statistics live in registered buffers, so the exported ONNX graph needs no side files.

- `ChunkMLP` (kinds ``mlp`` with K=1 and ``chunk_mlp``): obs -> (K, A) chunk.
- `ChunkGMM` (kind ``gmm``): obs -> M chunk means (K, A) with diagonal stds + mixing logits,
  trained by negative log-likelihood; the exported graph returns ``means`` and ``logits``
  only (sampling / mode selection happens in numpy at run time).
- `ChunkTransformer` (kind ``transformer``): small ACT-like model, observation features as
  tokens plus K learned query tokens, pre-LN self-attention, one action per query token.

With camera terms in the contract, every kind reads the same features: the normalized state
followed by `learning.vision.VisionEncoder`'s keypoints of each camera. ``forward(obs, *frames)``
takes one uint8 (B, h, w, 3) tensor per camera in contract order (the ONNX ``image_<name>``
inputs); ``loss(obs, target, mask, images)`` takes them as a tuple.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..core.contract import ImageTerm
from ..core.data.episodes import NormStats
from .config import ModelConfig
from .vision import VisionEncoder

_LOG_2PI = math.log(2.0 * math.pi)


class Normalizer(nn.Module):
    """Dataset normalization statistics as buffers (saved in the state_dict, exported as constants)."""

    def __init__(self, obs_dim: int, act_dim: int, stats: NormStats | None = None):
        super().__init__()
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))
        self.register_buffer("act_mean", torch.zeros(act_dim))
        self.register_buffer("act_std", torch.ones(act_dim))
        if stats is not None:
            for name in ("obs_mean", "obs_std", "act_mean", "act_std"):
                getattr(self, name).copy_(torch.as_tensor(np.asarray(getattr(stats, name)), dtype=torch.float32))

    def stats(self) -> NormStats:
        return NormStats(*(getattr(self, n).detach().double().numpy().copy()
                           for n in ("obs_mean", "obs_std", "act_mean", "act_std")))

    def obs(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.obs_mean) / self.obs_std

    def act(self, a: torch.Tensor) -> torch.Tensor:
        return (a - self.act_mean) / self.act_std

    def unact(self, a: torch.Tensor) -> torch.Tensor:
        return a * self.act_std + self.act_mean


class ResidualBlock(nn.Module):
    """Pre-LN residual MLP block: x + W2 act(W1 LN(x)); W2 starts at zero so deep stacks start as identity."""

    def __init__(self, width: int, layernorm: bool, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width) if layernorm else nn.Identity()
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(self.fc2(self.drop(F.gelu(self.fc1(self.norm(x))))))


def make_trunk(in_dim: int, cfg: ModelConfig) -> nn.Module:
    """Hidden layers shared by the MLP kinds; output has ``cfg.width`` features.

    residual=True: input projection, ``depth`` pre-LN residual blocks, final LayerNorm.
    residual=False: a plain stack of ``depth`` Linear(+LayerNorm)+GELU layers (default init),
    kept on purpose so a depth sweep can show why the residual form is the default.
    """
    layers = []
    if cfg.residual:
        layers.append(nn.Linear(in_dim, cfg.width))
        layers += [ResidualBlock(cfg.width, cfg.layernorm, cfg.dropout) for _ in range(cfg.depth)]
        if cfg.layernorm:
            layers.append(nn.LayerNorm(cfg.width))
        else:
            layers.append(nn.GELU())
    else:
        d = in_dim
        for _ in range(cfg.depth):
            layers.append(nn.Linear(d, cfg.width))
            if cfg.layernorm:
                layers.append(nn.LayerNorm(cfg.width))
            layers.append(nn.GELU())
            if cfg.dropout > 0:
                layers.append(nn.Dropout(cfg.dropout))
            d = cfg.width
    return nn.Sequential(*layers)


class ChunkPolicy(nn.Module):
    """Base class: normalization buffers, sizes and the loss interface.

    Subclasses implement ``forward(obs_raw, *frames)`` (the exported graph) and
    ``loss(obs_raw, target_raw, mask, images) -> scalar``; they read `features`, whose width is
    ``feature_dim``.
    """

    output_names: Tuple[str, ...] = ("actions",)

    def __init__(self, obs_dim: int, act_dim: int, cfg: ModelConfig, stats: NormStats | None = None,
                 cameras: Sequence[ImageTerm] = ()):
        super().__init__()
        self.cfg = cfg
        self.obs_dim, self.act_dim, self.chunk_length = obs_dim, act_dim, cfg.chunk_length
        self.norm = Normalizer(obs_dim, act_dim, stats)
        self.cameras = tuple(cameras)
        self.vision = VisionEncoder(self.cameras, cfg.vision_channels, cfg.vision_keypoints) if self.cameras else None
        self.feature_dim = obs_dim + (self.vision.out_dim if self.vision is not None else 0)
        self.relative = cfg.action_frame == "relative"
        if self.relative:   # set by build_model from the contract
            self.register_buffer("ref_index", torch.arange(act_dim))

    def reference(self, obs: torch.Tensor, ndim: int) -> torch.Tensor:
        """The measured joint positions of ``obs`` shaped to broadcast against (B, ..., A)."""
        ref = obs[:, self.ref_index]
        return ref.view(ref.shape[0], *([1] * (ndim - 2)), self.act_dim)

    def to_frame(self, actions: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """Raw absolute actions (B, ..., A) -> the frame the network predicts in."""
        return actions - self.reference(obs, actions.ndim) if self.relative else actions

    def from_frame(self, actions: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        return actions + self.reference(obs, actions.ndim) if self.relative else actions

    def features(self, obs: torch.Tensor, images: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """(B, feature_dim): the normalized state, then the camera keypoints (if any)."""
        x = self.norm.obs(obs)
        if self.vision is None:
            return x
        return torch.cat([x, self.vision(images)], dim=-1)


class _Deterministic(ChunkPolicy):
    """Shared loss of the kinds that output one chunk."""

    loss_kind = "l1"

    def predict_normalized(self, obs: torch.Tensor, images: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, obs: torch.Tensor, *images: torch.Tensor) -> torch.Tensor:
        """(B, obs_dim) raw (+ one uint8 frame batch per camera) -> (B, K, A) raw actions."""
        return self.from_frame(self.norm.unact(self.predict_normalized(obs, images)), obs)

    def loss(self, obs: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
             images: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        pred = self.predict_normalized(obs, images)
        tgt = self.norm.act(self.to_frame(target, obs))
        if self.loss_kind == "l1":
            err = (pred - tgt).abs()
        elif self.loss_kind == "mse":
            err = (pred - tgt) ** 2
        else:
            err = F.smooth_l1_loss(pred, tgt, reduction="none")
        m = mask.unsqueeze(-1)
        return (err * m).sum() / (m.sum() * self.act_dim).clamp_min(1.0)


class ChunkMLP(_Deterministic):
    """MLP from the normalized observation to K normalized actions (K=1: single-step policy)."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: ModelConfig, stats: NormStats | None = None,
                 cameras: Sequence[ImageTerm] = ()):
        super().__init__(obs_dim, act_dim, cfg, stats, cameras)
        self.trunk = make_trunk(self.feature_dim, cfg)
        self.head = nn.Linear(cfg.width, cfg.chunk_length * act_dim)

    def predict_normalized(self, obs: torch.Tensor, images: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        return self.head(self.trunk(self.features(obs, images))).view(-1, self.chunk_length, self.act_dim)


class ChunkGMM(ChunkPolicy):
    """Mixture density over whole chunks: M components, each a (K, A) mean with a diagonal std.

    ``forward`` returns (means (B, M, K, A) raw, logits (B, M) as log-probabilities).
    """

    output_names = ("means", "logits")

    def __init__(self, obs_dim: int, act_dim: int, cfg: ModelConfig, stats: NormStats | None = None,
                 cameras: Sequence[ImageTerm] = ()):
        super().__init__(obs_dim, act_dim, cfg, stats, cameras)
        self.num_modes = cfg.num_modes
        n = cfg.num_modes * cfg.chunk_length * act_dim
        self.trunk = make_trunk(self.feature_dim, cfg)
        self.mean_head = nn.Linear(cfg.width, n)
        self.std_head = nn.Linear(cfg.width, n)
        self.logit_head = nn.Linear(cfg.width, cfg.num_modes)
        # Spread the initial means so the components do not start identical.
        nn.init.normal_(self.mean_head.bias, std=0.5)

    def _heads(self, obs: torch.Tensor, images: Sequence[torch.Tensor] = ()):
        h = self.trunk(self.features(obs, images))
        shape = (-1, self.num_modes, self.chunk_length, self.act_dim)
        mean = self.mean_head(h).view(shape)
        std = F.softplus(self.std_head(h).view(shape)) + self.cfg.min_std
        logits = torch.log_softmax(self.logit_head(h), dim=-1)
        return mean, std, logits

    def forward(self, obs: torch.Tensor, *images: torch.Tensor):
        mean, _, logits = self._heads(obs, images)
        return self.from_frame(self.norm.unact(mean), obs), logits

    def loss(self, obs: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
             images: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """Negative log-likelihood per valid action dimension (masked targets are marginalized out)."""
        mean, std, logits = self._heads(obs, images)
        y = self.norm.act(self.to_frame(target, obs)).unsqueeze(1)                                 # (B, 1, K, A)
        logp = -0.5 * (((y - mean) / std) ** 2 + 2.0 * torch.log(std) + _LOG_2PI)
        logp = (logp * mask[:, None, :, None]).sum(dim=(2, 3))                 # (B, M)
        nll = -torch.logsumexp(logits + logp, dim=-1)                          # (B,)
        return nll.sum() / (mask.sum() * self.act_dim).clamp_min(1.0)


class _Attention(nn.Module):
    """Multi-head self-attention from plain matmuls (exports cleanly with the TorchScript exporter)."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dh = heads, d // heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.dh).permute(2, 0, 3, 1, 4).unbind(0)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.dh), dim=-1)
        y = (self.drop(att) @ v).transpose(1, 2).reshape(b, n, d)
        return self.out(y)


class _TransformerLayer(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = _Attention(d, heads, dropout)
        self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * d, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.drop(self.ff(self.ln2(x)))


class ChunkTransformer(_Deterministic):
    """Small ACT-like chunk policy (no CVAE): each feature (normalized observation value or
    camera keypoint coordinate) becomes a token (value * w_i + b_i), K learned query tokens
    follow, ``depth`` pre-LN layers of self-attention mix them, and query token k is read out
    as action k."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: ModelConfig, stats: NormStats | None = None,
                 cameras: Sequence[ImageTerm] = ()):
        super().__init__(obs_dim, act_dim, cfg, stats, cameras)
        d, n = cfg.width, self.feature_dim
        self.feat_w = nn.Parameter(torch.randn(n, d) * 0.02)
        self.feat_b = nn.Parameter(torch.randn(n, d) * 0.02)
        self.queries = nn.Parameter(torch.randn(cfg.chunk_length, d) * 0.02)
        self.layers = nn.ModuleList(_TransformerLayer(d, cfg.num_heads, cfg.dropout) for _ in range(cfg.depth))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, act_dim)

    def predict_normalized(self, obs: torch.Tensor, images: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        x = self.features(obs, images)
        tokens = x.unsqueeze(-1) * self.feat_w + self.feat_b                  # (B, obs_dim, d)
        q = self.queries.unsqueeze(0).expand(x.shape[0], -1, -1)
        h = torch.cat([tokens, q], dim=1)
        for layer in self.layers:
            h = layer(h)
        return self.head(self.ln(h[:, self.feature_dim:]))


_KINDS = {"mlp": ChunkMLP, "chunk_mlp": ChunkMLP, "gmm": ChunkGMM, "transformer": ChunkTransformer}


def build_model(cfg: ModelConfig, obs_dim: int, act_dim: int, stats: NormStats | None = None,
                loss: str = "l1", ref_index: Sequence[int] | None = None,
                cameras: Sequence[ImageTerm] = ()) -> ChunkPolicy:
    """The policy module for ``cfg.kind``; ``loss`` selects the regression loss of deterministic
    kinds; ``ref_index`` (`Contract.action_reference_index`) is required for a relative action frame;
    ``cameras`` (`Contract.images`) adds a camera encoder in front of the head."""
    model = _KINDS[cfg.kind](obs_dim, act_dim, cfg, stats, cameras)
    if model.relative:
        if ref_index is None or len(ref_index) != act_dim:
            raise ValueError(f"action_frame 'relative' needs the observation index of each of the "
                             f"{act_dim} action joints' positions, got {ref_index!r}")
        model.ref_index.copy_(torch.as_tensor(list(ref_index), dtype=torch.long))
    if isinstance(model, _Deterministic):
        model.loss_kind = loss
    return model


def reference_index(cfg: ModelConfig, contract) -> list | None:
    """`build_model`'s ``ref_index`` for ``cfg`` under ``contract`` (None for absolute actions)."""
    return contract.action_reference_index() if cfg.action_frame == "relative" else None


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
