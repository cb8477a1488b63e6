"""Chunk targets from a `core.data.episodes.Dataset`, held in memory as torch tensors.

For frame t of an episode of length T, target k (k = 0..K-1) is ``act[t+k]``. Past the end
of the episode the target is the last action (the arm holds) with ``mask = 0``, so it does
not enter the loss (ACT's ``is_pad``). Frames with ``labelled = False`` are never samples,
and as chunk targets of an earlier frame they are masked out too (their value is replaced
by the previous valid target so the tensors stay finite).

Episodes with per-frame chunk labels (`Episode.chunk_labels`, (T, K', act_dim), K' >= K: the
expert's planned chunk from each state, DAgger with chunk labels) use them instead: frame t's
target is ``chunk_labels[t, :K]`` with mask 1 for all K (labelled frames only). Episodes
without them keep the rule above, so both kinds can be mixed in one dataset.

Camera frames stay where the dataset keeps them (memory-mapped uint8 for a loaded dataset):
`ChunkData.images` (`learning.vision.ImageRows`) only records which episode frame each sample
sees, and every batch copies its own frames out (optionally randomly shifted).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import numpy as np
import torch

from ..core.contract import Contract, ContractError
from ..core.data.episodes import Dataset, DatasetError
from .vision import ImageRows


@dataclass
class ChunkData:
    """All training samples of a dataset split, one row per labelled frame.

    Attributes:
        obs: (N, obs_dim) float32 raw observations.
        target: (N, K, act_dim) float32 raw action targets.
        mask: (N, K) float32, 1 where the target enters the loss.
        episode: (N,) int64 index of the episode each sample comes from.
        images: the camera frames of each sample (None for a contract without cameras).
    """

    obs: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor
    episode: torch.Tensor
    images: Optional[ImageRows] = None

    def __len__(self) -> int:
        return int(self.obs.shape[0])

    @property
    def chunk_length(self) -> int:
        return int(self.target.shape[1])

    def batches(self, batch_size: int, generator: Optional[torch.Generator] = None,
                shuffle: bool = True, drop_last: bool = False, image_shift: int = 0
                ) -> Iterator[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Tuple[torch.Tensor, ...]]]:
        """Yield (obs, target, mask, frames) minibatches by index arrays; ``frames`` holds one
        uint8 (B, h, w, 3) tensor per camera (empty without cameras), shifted by up to
        ``image_shift`` pixels (random offsets drawn from ``generator``'s stream)."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        stop = n - n % batch_size if (drop_last and n >= batch_size) else n
        rng = None
        if self.images is not None and image_shift > 0:
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) if generator is not None else None
            rng = np.random.default_rng(seed)
        for i in range(0, stop, batch_size):
            idx = order[i:i + batch_size]
            frames = self.images.gather(idx.numpy(), image_shift, rng) if self.images is not None else ()
            yield self.obs[idx], self.target[idx], self.mask[idx], frames


def episode_chunks(act: np.ndarray, labelled: np.ndarray, k: int, segment: Optional[np.ndarray] = None
                   ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chunk targets of one episode.

    Returns (frames, target, mask): ``frames`` (N,) indices of the labelled frames,
    ``target`` (N, k, act_dim) and ``mask`` (N, k) bool.

    ``segment`` (T,) optional sub-task ids (e.g. the active waypoint): a chunk does not cross
    into the next segment. Its targets past the segment's last frame repeat that frame's
    action and stay in the loss (the policy learns to arrive and hold; the next observation
    names the next sub-task). Past the end of the episode they are masked out, as always.
    """
    t_len = len(act)
    frames = np.flatnonzero(labelled)
    steps = np.arange(k)
    raw = frames[:, None] + steps[None, :]                 # (N, k) unclipped indices
    idx = np.minimum(raw, t_len - 1)
    if segment is not None:
        seg = np.asarray(segment)
        last = np.flatnonzero(np.r_[seg[1:] != seg[:-1], True])           # last frame of each run
        end = last[np.searchsorted(last, frames)]                          # (N,) end of each frame's run
        idx = np.minimum(idx, end[:, None])
    lab = labelled[idx]
    mask = (raw < t_len) & lab
    # Unlabelled future frames may hold anything (even NaN): forward-fill from the previous
    # labelled target of the same chunk (k=0 is always labelled). Past the end this keeps the
    # last action when the last frame is labelled, as the design requires.
    src = np.maximum.accumulate(np.where(lab, steps[None, :], 0), axis=1)
    idx = np.take_along_axis(idx, src, axis=1)
    return frames, act[idx], mask


def segment_ids(obs: np.ndarray) -> np.ndarray:
    """(T,) run ids of an observation slice (T, d): a new id wherever a value changes."""
    obs = np.asarray(obs)
    change = np.any(obs[1:] != obs[:-1], axis=tuple(range(1, obs.ndim))) if len(obs) > 1 else np.zeros(0, bool)
    return np.r_[0, np.cumsum(change)]


def episode_chunk_labels(chunk_labels: np.ndarray, labelled: np.ndarray, k: int
                         ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chunk targets of one episode that carries per-frame chunk labels (T, K', act_dim).

    Same return as `episode_chunks`: target = chunk_labels[t, :k], mask all True.
    """
    if chunk_labels.shape[1] < k:
        raise DatasetError(f"episode chunk labels have K={chunk_labels.shape[1]} < chunk_length {k}")
    frames = np.flatnonzero(labelled)
    return frames, chunk_labels[frames, :k], np.ones((len(frames), k), dtype=bool)


def check_dataset(ds: Dataset, chunk_length: int, contract: Optional[Contract] = None) -> None:
    """Raise a clear error for data that must not reach the training loop.

    Checks: contract match (when ``contract`` is given), empty dataset, no labelled frames,
    NaN/inf in observations or labelled actions, chunk length longer than every episode.
    """
    if contract is not None:
        # Read as: a model trained on this dataset ("model") used with `contract` ("robot").
        diffs = ds.contract.mismatches(contract)
        if contract.obs_dim != ds.contract.obs_dim or contract.act_dim != ds.contract.act_dim:
            diffs.append(f"dims: dataset obs {ds.contract.obs_dim}/act {ds.contract.act_dim}, "
                         f"contract obs {contract.obs_dim}/act {contract.act_dim}")
        if diffs:
            raise ContractError(f"dataset (contract {ds.contract.name!r}) does not fit contract "
                                f"{contract.name!r}: " + "; ".join(diffs))
    ds.check_trainable()  # empty, NaN/inf
    if sum(int(e.labelled.sum()) for e in ds.episodes) == 0:
        raise DatasetError("dataset has no labelled frames to train on")
    k_lab = ds.chunk_label_length
    if k_lab is not None and k_lab < chunk_length:
        raise DatasetError(f"episodes carry chunk labels of length {k_lab} < chunk_length {chunk_length}")
    longest = max(len(e) for e in ds.episodes)
    if chunk_length > longest:
        raise DatasetError(f"chunk_length {chunk_length} is longer than every episode "
                           f"(longest has {longest} frames); use a shorter chunk or longer episodes")


def build_chunks(ds: Dataset, chunk_length: int, episode_offset: int = 0,
                 segment_on: Optional[str] = None) -> ChunkData:
    """Stack the chunk targets of every labelled frame of ``ds`` into tensors.

    ``segment_on``: an observation term (e.g. ``phase``) whose changes end a chunk's targets
    (`episode_chunks`); ignored when the contract does not observe it."""
    if len(ds) == 0:
        raise DatasetError("cannot build training samples from an empty dataset")
    sl = ds.contract.slices().get(segment_on) if segment_on else None
    obs, tgt, msk, epi, rows = [], [], [], [], []
    for i, ep in enumerate(ds.episodes):
        if ep.chunk_labels is not None:
            frames, target, mask = episode_chunk_labels(ep.chunk_labels, ep.labelled, chunk_length)
        else:
            seg = segment_ids(ep.obs[:, sl]) if sl is not None else None
            frames, target, mask = episode_chunks(ep.act, ep.labelled, chunk_length, seg)
        obs.append(ep.obs[frames])
        tgt.append(target)
        msk.append(mask)
        epi.append(np.full(len(frames), i + episode_offset, dtype=np.int64))
        rows.append(np.stack([np.full(len(frames), i), frames], axis=1))
    images = None
    if ds.contract.images:
        names = [t.name for t in ds.contract.images]
        images = ImageRows(names, {n: [ep.images[n] for ep in ds.episodes] for n in names},  # type: ignore[index]
                           np.concatenate(rows))
    return ChunkData(obs=torch.from_numpy(np.concatenate(obs).astype(np.float32)),
                     target=torch.from_numpy(np.concatenate(tgt).astype(np.float32)),
                     mask=torch.from_numpy(np.concatenate(msk).astype(np.float32)),
                     episode=torch.from_numpy(np.concatenate(epi)), images=images)


def load_dataset(source) -> Dataset:
    """A `Dataset` as is, or loaded from a dataset directory."""
    if isinstance(source, Dataset):
        return source
    return Dataset.load(source)
