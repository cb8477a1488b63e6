"""Training loop: data -> model -> epochs with validation/early stopping -> checkpoints.

`train()` is the only entry point. It validates the data before building anything, splits
by episode, trains with AdamW on normalized actions, evaluates the held-out episodes every
epoch, keeps the best weights, writes a checkpoint each epoch (resumable), a loss curve and
a history. Seeded and reproducible: same data + configs + seed give the same weights, and an
interrupted run resumed from its last checkpoint ends where the uninterrupted one would
(for ``lr_schedule: constant`` exactly; cosine too as long as max_epochs is unchanged).
"""
from __future__ import annotations

import dataclasses
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from ..core.contract import JOINT_POSITION, Contract
from ..core.data.episodes import Dataset, NormStats
from . import checkpoint as ckpt
from .config import ModelConfig, TrainConfig
from .data import ChunkData, build_chunks, check_dataset, load_dataset
from .models import ChunkPolicy, build_model, num_parameters, reference_index

HOLDOUT_ROWS = 1024
HOLDOUT_IMAGE_ROWS = 64   # frames kept for the parity check of a camera policy (uint8, small)
STD_FLOOR = 1e-3  # raw units; smaller normalization stds are replaced by 1
PLOT_EVERY = 10  # epochs between loss-curve refreshes (always drawn at the end)
# Train-config fields that may change when resuming (they do not change what was learned so far).
RESUMABLE_CHANGES = ("max_epochs", "max_steps", "patience", "min_delta", "threads")


class TrainError(RuntimeError):
    """Training cannot start, cannot resume, or diverged."""


@dataclass
class RunResult:
    """What a training run produced (also persisted in the run directory)."""

    run_dir: Path
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    epochs: int                      # epochs completed in total (including before a resume)
    steps: int                       # optimizer steps in total
    best_epoch: int
    best_val_loss: Optional[float]   # None without validation episodes
    final_train_loss: float
    stopped_early: bool
    train_seconds: float             # wall time of the optimizer loop in this call
    samples_per_second: float        # training throughput in this call (0 if nothing ran)
    num_parameters: int
    data_hash: str
    history: List[Dict[str, Any]] = field(default_factory=list)

    @property
    def best_weights(self) -> Path:
        return self.run_dir / ckpt.BEST_WEIGHTS


@dataclass
class _Split:
    train: ChunkData
    val: Optional[ChunkData]
    train_episodes: List[int]
    val_episodes: List[int]
    stats: NormStats                 # normalization statistics of the training episodes
    action_std: np.ndarray           # std of the (absolute) training actions, whatever the frame


@dataclass
class _LoopState:
    epoch: int = 0
    step: int = 0
    best_val: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False
    history: List[Dict[str, Any]] = field(default_factory=list)


def frame_for(model_cfg: ModelConfig, contract: Contract) -> ModelConfig:
    """A relative action frame is defined for joint-position actions (targets minus the measured
    joints); for any other action (Cartesian velocity, gripper) the default config's
    ``relative`` trains in the absolute frame, and the run's config says so."""
    if model_cfg.action_frame == "relative" and contract.action.kind != JOINT_POSITION:
        print(f"[train] action_frame relative needs joint_position actions; the {contract.action.kind} action "
              f"of contract {contract.name!r} trains in the absolute frame")
        return dataclasses.replace(model_cfg, action_frame="absolute")
    return model_cfg


# --------------------------------------------------------------------------- data
def _split(ds: Dataset, model_cfg: ModelConfig, train_cfg: TrainConfig) -> _Split:
    train_ds, val_ds = ds.split(train_cfg.val_fraction, seed=train_cfg.seed)
    ids = {id(e): i for i, e in enumerate(ds.episodes)}
    tr_idx = [ids[id(e)] for e in train_ds.episodes]
    va_idx = [ids[id(e)] for e in val_ds.episodes]
    train = build_chunks(train_ds, model_cfg.chunk_length, segment_on=train_cfg.segment_on)
    if len(train) == 0:
        raise TrainError("the training split has no labelled frames; lower val_fraction or add data")
    val = build_chunks(val_ds, model_cfg.chunk_length, segment_on=train_cfg.segment_on) if len(val_ds) else None
    if val is not None and len(val) == 0:
        val = None
    stats = _floored(train_ds.stats())
    action_std = stats.act_std
    if model_cfg.action_frame == "relative":
        stats = _floored(_relative_stats(stats, train, ds.contract.action_reference_index()))
    return _Split(train, val, tr_idx, va_idx, stats, action_std)


def _relative_stats(stats: NormStats, data: ChunkData, ref_index: List[int]) -> NormStats:
    """Action statistics of the chunk targets minus the measured joint positions (valid entries
    of every chunk offset pooled), for a relative action frame."""
    delta = (data.target - data.obs[:, ref_index].unsqueeze(1)).double().numpy()    # (N, K, A)
    valid = delta[data.mask.numpy() > 0]                                            # (n, A)
    return NormStats(stats.obs_mean, stats.obs_std, valid.mean(0), valid.std(0))


def _floored(stats: NormStats) -> NormStats:
    """Dimensions that (almost) never vary in the training data are not scaled (std -> 1), so an
    unseen value at run time cannot be amplified by 1/std."""
    fix = lambda s: np.where(s < STD_FLOOR, 1.0, s)  # noqa: E731
    return NormStats(stats.obs_mean, fix(stats.obs_std), stats.act_mean, fix(stats.act_std))


# --------------------------------------------------------------------------- loop
def _lr_factor(step: int, cfg: TrainConfig, total_steps: int) -> float:
    if cfg.lr_schedule == "constant":
        return 1.0
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    progress = min(step, total_steps) / max(total_steps, 1)
    return warm * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def _make_optimizer(model: ChunkPolicy, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)


@torch.no_grad()
def evaluate(model: ChunkPolicy, data: ChunkData, batch_size: int = 1024) -> float:
    """Mean loss of ``model`` over ``data`` (eval mode, no dropout)."""
    model.eval()
    total, n = 0.0, 0
    for obs, tgt, mask, frames in data.batches(batch_size, shuffle=False):
        total += float(model.loss(obs, tgt, mask, frames)) * len(obs)
        n += len(obs)
    return total / max(n, 1)


def _train_epoch(model: ChunkPolicy, opt: torch.optim.Optimizer, data: ChunkData, cfg: TrainConfig,
                 state: _LoopState, total_steps: int, bar) -> Dict[str, float]:
    model.train()
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + state.epoch)
    total, n, t0 = 0.0, 0, time.perf_counter()
    for obs, tgt, mask, frames in data.batches(cfg.batch_size, generator=gen, image_shift=cfg.image_shift):
        if cfg.max_steps is not None and state.step >= cfg.max_steps:
            break
        for g in opt.param_groups:
            g["lr"] = cfg.lr * _lr_factor(state.step, cfg, total_steps)
        loss = model.loss(obs, tgt, mask, frames)
        if not torch.isfinite(loss):
            raise TrainError(f"loss became {float(loss)} at epoch {state.epoch}, step {state.step}; "
                             f"lower train.lr or check the data")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        state.step += 1
        total += float(loss.detach()) * len(obs)
        n += len(obs)
        bar.update(1)
        if state.step % 10 == 0:
            bar.set_postfix(epoch=state.epoch, loss=f"{total / n:.4f}", refresh=False)
    seconds = time.perf_counter() - t0
    return {"train_loss": total / max(n, 1), "samples": n, "seconds": seconds,
            "lr": opt.param_groups[0]["lr"]}


def _end_epoch(state: _LoopState, record: Dict[str, Any], cfg: TrainConfig) -> bool:
    """Update best/patience bookkeeping; True if this epoch is the new best."""
    score = record["val_loss"] if record["val_loss"] is not None else record["train_loss"]
    improved = score < state.best_val - cfg.min_delta
    if improved:
        state.best_val, state.best_epoch, state.bad_epochs = score, state.epoch, 0
    else:
        state.bad_epochs += 1
        if cfg.patience and state.bad_epochs >= cfg.patience:
            state.stopped_early = True
    state.history.append(record)
    return improved


# --------------------------------------------------------------------------- run dir
def _run_config(ds: Dataset, model_cfg: ModelConfig, train_cfg: TrainConfig, split: _Split,
                model: ChunkPolicy) -> Dict[str, Any]:
    return {"format": ckpt.RUN_FORMAT, "model": model_cfg.to_dict(), "train": train_cfg.to_dict(),
            "contract": ds.contract.to_dict(), "norm": model.norm.stats().to_dict(),
            "action_std": np.asarray(split.action_std).tolist(),
            "data_hash": ds.content_hash(), "obs_dim": ds.contract.obs_dim, "act_dim": ds.contract.act_dim,
            "train_episodes": split.train_episodes, "val_episodes": split.val_episodes,
            "num_samples": {"train": len(split.train), "val": len(split.val) if split.val else 0},
            "num_parameters": num_parameters(model), "package_version": ckpt.package_version(),
            "torch_version": torch.__version__}


def _check_resume(run_dir: Path, new: Dict[str, Any]) -> None:
    old = ckpt.read_run_config(run_dir)
    if old["data_hash"] != new["data_hash"]:
        raise TrainError(f"cannot resume {run_dir}: it was trained on data {old['data_hash']}, "
                         f"this dataset is {new['data_hash']}")
    if old["model"] != new["model"]:
        raise TrainError(f"cannot resume {run_dir}: model config differs "
                         f"(run {old['model']} vs now {new['model']})")
    diff = {k for k in set(old["train"]) | set(new["train"])
            if old["train"].get(k) != new["train"].get(k)} - set(RESUMABLE_CHANGES)
    if diff:
        raise TrainError(f"cannot resume {run_dir}: train config fields {sorted(diff)} differ "
                         f"(only {list(RESUMABLE_CHANGES)} may change)")


def _save_epoch(run_dir: Path, model: ChunkPolicy, opt, state: _LoopState, improved: bool) -> None:
    if improved:
        ckpt.save_checkpoint(run_dir / ckpt.BEST_WEIGHTS, model.state_dict())
    ckpt.save_checkpoint(run_dir / ckpt.LAST_CHECKPOINT, {
        "model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": state.epoch,
        "step": state.step, "best_val": state.best_val, "best_epoch": state.best_epoch,
        "bad_epochs": state.bad_epochs, "stopped_early": state.stopped_early,
        "history": state.history, "torch_rng": torch.get_rng_state()})
    ckpt.write_json(run_dir / ckpt.HISTORY_FILE, state.history)


def _restore(run_dir: Path, model: ChunkPolicy, opt, cfg: TrainConfig) -> _LoopState:
    c = ckpt.load_checkpoint(run_dir / ckpt.LAST_CHECKPOINT)
    model.load_state_dict(c["model"])
    opt.load_state_dict(c["optimizer"])
    torch.set_rng_state(c["torch_rng"])
    return _LoopState(epoch=int(c["epoch"]), step=int(c["step"]), best_val=float(c["best_val"]),
                      best_epoch=int(c["best_epoch"]), bad_epochs=int(c["bad_epochs"]),
                      # re-judged with the (possibly changed) patience of this call
                      stopped_early=bool(cfg.patience and int(c["bad_epochs"]) >= cfg.patience),
                      history=list(c["history"]))


def _save_holdout(run_dir: Path, split: _Split, seed: int) -> None:
    """Held-out observations for the export parity check (and, with cameras, the frames of the
    first `HOLDOUT_IMAGE_ROWS` of them)."""
    data = split.val if split.val is not None else split.train
    rows = np.arange(len(data))
    if len(rows) > HOLDOUT_ROWS:
        rows = np.sort(np.random.default_rng(seed).choice(len(rows), HOLDOUT_ROWS, replace=False))
    np.save(run_dir / ckpt.HOLDOUT_FILE, data.obs.numpy()[rows])
    if data.images is not None:
        frames = data.images.gather(rows[:HOLDOUT_IMAGE_ROWS])
        np.savez(run_dir / ckpt.HOLDOUT_IMAGES_FILE, **{n: f.numpy() for n, f in zip(data.images.names, frames)})


@contextmanager
def _torch_settings(cfg: TrainConfig):
    """Threads, determinism and a private RNG stream for the duration of training."""
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(cfg.deterministic)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)


# --------------------------------------------------------------------------- entry point
def train(data, model_cfg: Optional[ModelConfig], train_cfg: Optional[TrainConfig], run_dir,
          resume: bool = False, progress: bool = True, *, contract: Optional[Contract] = None) -> RunResult:
    """Train a policy on ``data`` (a `Dataset` or a dataset directory) into ``run_dir``.

    ``model_cfg`` / ``train_cfg`` of None mean the defaults (chunk_mlp, K=20). ``progress``
    shows a tqdm bar (steps, running loss, validation loss).

    Raises `DatasetError` / `ContractError` before any training for an empty dataset, NaN/inf
    in the data, a chunk length longer than every episode, or a dataset whose contract does
    not match ``contract``. ``resume=True`` continues from ``run_dir/checkpoint_last.pt`` (or
    starts fresh if there is none); without it an existing run in ``run_dir`` is an error.
    """
    from tqdm.auto import tqdm

    model_cfg = model_cfg or ModelConfig()
    train_cfg = train_cfg or TrainConfig()
    ds = load_dataset(data)
    model_cfg = frame_for(model_cfg, ds.contract)
    check_dataset(ds, model_cfg.chunk_length, contract)
    run_dir = Path(run_dir)
    has_run = (run_dir / ckpt.LAST_CHECKPOINT).is_file()
    if has_run and not resume:
        raise TrainError(f"{run_dir} already holds a run; pass resume=True or choose a new run_dir")

    with _torch_settings(train_cfg):
        split = _split(ds, model_cfg, train_cfg)
        model = build_model(model_cfg, ds.contract.obs_dim, ds.contract.act_dim, split.stats,
                            loss=train_cfg.loss, ref_index=reference_index(model_cfg, ds.contract),
                            cameras=ds.contract.images)
        opt = _make_optimizer(model, train_cfg)
        run_cfg = _run_config(ds, model_cfg, train_cfg, split, model)
        if has_run:
            _check_resume(run_dir, run_cfg)
            state = _restore(run_dir, model, opt, train_cfg)
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            state = _LoopState()
            _save_holdout(run_dir, split, train_cfg.seed)
        ckpt.write_json(run_dir / ckpt.CONFIG_FILE, run_cfg)

        steps_per_epoch = math.ceil(len(split.train) / train_cfg.batch_size)
        total = train_cfg.max_epochs * steps_per_epoch
        if train_cfg.max_steps is not None:
            total = min(total, train_cfg.max_steps)
        title = f"{model_cfg.kind} K={model_cfg.chunk_length} (data {run_cfg['data_hash']})"
        seconds, samples = 0.0, 0
        with tqdm(total=total, initial=min(state.step, total), disable=not progress, unit="step",
                  desc=f"train {model_cfg.kind}", dynamic_ncols=True) as bar:
            while (state.epoch < train_cfg.max_epochs and not state.stopped_early
                   and (train_cfg.max_steps is None or state.step < train_cfg.max_steps)):
                state.epoch += 1
                rec = _train_epoch(model, opt, split.train, train_cfg, state, total, bar)
                seconds, samples = seconds + rec["seconds"], samples + rec["samples"]
                rec.update(epoch=state.epoch, step=state.step,
                           val_loss=evaluate(model, split.val) if split.val is not None else None)
                improved = _end_epoch(state, rec, train_cfg)
                _save_epoch(run_dir, model, opt, state, improved)
                if state.epoch % PLOT_EVERY == 0:
                    ckpt.plot_history(state.history, run_dir / ckpt.CURVE_FILE, title)
                bar.set_postfix(epoch=state.epoch, loss=f"{rec['train_loss']:.4f}",
                                val=f"{rec['val_loss']:.4f}" if rec["val_loss"] is not None else "-")
    if not state.history:
        raise TrainError(f"no epoch was trained in {run_dir} (max_epochs/max_steps already reached?)")
    ckpt.plot_history(state.history, run_dir / ckpt.CURVE_FILE, title)
    return RunResult(run_dir=run_dir, model_cfg=model_cfg, train_cfg=train_cfg, epochs=state.epoch,
                     steps=state.step, best_epoch=state.best_epoch,
                     best_val_loss=state.best_val if split.val is not None else None,
                     final_train_loss=state.history[-1]["train_loss"], stopped_early=state.stopped_early,
                     train_seconds=seconds, samples_per_second=samples / seconds if seconds > 0 else 0.0,
                     num_parameters=num_parameters(model), data_hash=run_cfg["data_hash"],
                     history=list(state.history))
