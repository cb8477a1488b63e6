"""Run-directory layout, checkpoints (state_dicts only) and loading a trained policy.

A run directory holds::

    config.json          model + train config, contract, norm stats, data hash, split
    checkpoint_last.pt   weights + optimizer + loop state of the last finished epoch (resume)
    model_best.pt        weights of the best epoch (by validation loss)
    history.json         one record per epoch (losses, lr, timing)
    loss_curve.png       train / validation loss per epoch
    holdout_obs.npy      held-out observations for the export parity check
    holdout_images.npz   camera policies: uint8 frames of the first held-out observations

Checkpoints are plain dicts of tensors and numbers written with ``torch.save`` and read back
with ``torch.load(..., weights_only=True)``: no pickled classes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch

from ..core.contract import Contract
from ..core.data.episodes import NormStats
from .config import ModelConfig, TrainConfig
from .models import ChunkPolicy, build_model, reference_index

RUN_FORMAT = 1
CONFIG_FILE = "config.json"
LAST_CHECKPOINT = "checkpoint_last.pt"
BEST_WEIGHTS = "model_best.pt"
HISTORY_FILE = "history.json"
CURVE_FILE = "loss_curve.png"
HOLDOUT_FILE = "holdout_obs.npy"
HOLDOUT_IMAGES_FILE = "holdout_images.npz"


class RunError(RuntimeError):
    """A run directory is missing, incomplete or inconsistent with the requested training."""


def package_version() -> str:
    """The package version (``bc_policy_node.__version__``, read from package.xml)."""
    from .. import __version__

    return __version__


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)


def read_run_config(run_dir) -> Dict[str, Any]:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise RunError(f"{run_dir} is not a training run directory (no {CONFIG_FILE})")
    cfg = json.loads(path.read_text())
    if cfg.get("format") != RUN_FORMAT:
        raise RunError(f"{path}: run format {cfg.get('format')!r} not supported (expected {RUN_FORMAT})")
    return cfg


def configs_of_run(run_cfg: Dict[str, Any]) -> Tuple[ModelConfig, TrainConfig, Contract, NormStats]:
    return (ModelConfig.from_dict(run_cfg["model"]), TrainConfig.from_dict(run_cfg["train"]),
            Contract.from_dict(run_cfg["contract"]), NormStats.from_dict(run_cfg["norm"]))


def save_checkpoint(path: Path, state: Dict[str, Any]) -> None:
    """Atomically write a checkpoint dict (tensors, numbers, strings, lists, dicts only)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path) -> Dict[str, Any]:
    if not Path(path).is_file():
        raise RunError(f"checkpoint not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_policy(run_dir, which: str = "best") -> Tuple[ChunkPolicy, Dict[str, Any]]:
    """The trained policy of a run (eval mode) and the run's config.json contents.

    ``which``: ``best`` (model_best.pt) or ``last`` (checkpoint_last.pt).
    """
    run_cfg = read_run_config(run_dir)
    model_cfg, train_cfg, contract, stats = configs_of_run(run_cfg)
    if which == "best":
        state = load_checkpoint(Path(run_dir) / BEST_WEIGHTS)
    elif which == "last":
        state = load_checkpoint(Path(run_dir) / LAST_CHECKPOINT)["model"]
    else:
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    model = build_model(model_cfg, run_cfg["obs_dim"], run_cfg["act_dim"], stats, loss=train_cfg.loss,
                        ref_index=reference_index(model_cfg, contract), cameras=contract.images)
    model.load_state_dict(state)
    return model.eval(), run_cfg


def plot_history(history: List[Dict[str, Any]], path: Path, title: str = "") -> None:
    """Loss curve PNG (Agg canvas; never touches pyplot's global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], label="train")
    val = [(h["epoch"], h["val_loss"]) for h in history if h.get("val_loss") is not None]
    if val:
        ax.plot(*zip(*val), label="validation")
        best = min(val, key=lambda p: p[1])
        ax.scatter([best[0]], [best[1]], marker="*", s=80, color="k", zorder=3, label="best")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (normalized units)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(str(path))
