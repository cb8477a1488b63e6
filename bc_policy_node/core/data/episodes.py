"""Episode arrays and the on-disk training dataset (numpy only).

A dataset directory holds `data.npz` (all frames, concatenated) and `meta.json` (the
contract, per-episode metadata, normalization stats, content hash); a contract with cameras
adds `images/<camera>.npy`, uint8 (N, h, w, 3) frames in the same order, which `Dataset.load`
memory-maps (a dataset of images is never read into memory whole, nor converted to float). The dataset builder
writes it from bags, the in-process collectors write it directly, the trainer reads it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..contract import Contract, ContractError
from ..types import json_default

DATASET_FORMAT = 1
IMAGES_DIR = "images"


class DatasetError(ValueError):
    """A dataset is missing, empty, malformed or does not match its contract."""


class FrameScratch:
    """Camera frames out of memory while a dataset is assembled (the builder, the LeRobot
    import): each array is a .npy in a scratch folder, memory-mapped and unlinked at once - the
    mapping keeps the data (the page cache, not the process, holds it) and the disk space is
    freed when the last mapping goes. `close()` removes the (empty) folder."""

    def __init__(self, near=None):
        import tempfile

        base = Path(near) if near is not None else None
        if base is not None:
            base.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix=".frames_scratch_", dir=base))
        self.count = 0

    def new(self, shape: Tuple[int, ...]) -> np.ndarray:
        """A zeroed uint8 array of `shape`, writable, backed by an unlinked scratch file."""
        path = self.folder / f"{self.count:06d}.npy"
        self.count += 1
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=tuple(shape))
        path.unlink()
        return arr

    def keep(self, frames: np.ndarray) -> np.ndarray:
        """`frames` (uint8) moved to a scratch file; memory-mapped arrays are returned as they are."""
        if isinstance(frames, np.memmap):
            return frames
        out = self.new(frames.shape)
        for a in range(0, len(frames), 256):
            out[a:a + 256] = frames[a:a + 256]
        return out

    def close(self) -> None:
        import os

        try:
            os.rmdir(self.folder)
        except OSError:
            pass


@dataclass
class Episode:
    """One episode at the contract's control rate: obs[t] was seen, act[t] was commanded."""

    obs: np.ndarray                      # (T, obs_dim)
    act: np.ndarray                      # (T, act_dim)
    t: np.ndarray                        # (T,) seconds since episode start
    meta: Dict[str, Any] = field(default_factory=dict)   # task, seed, source, success, ...
    labelled: Optional[np.ndarray] = None  # (T,) bool; False = no expert label (excluded from loss)
    # (T, K, act_dim) optional per-frame chunk labels: the expert's planned chunk FROM obs[t]
    # (DAgger with chunk labels). When present, training uses chunk_labels[t] as frame t's target
    # instead of act[t:t+K] (see learning.data); act[t] is then chunk_labels[t, 0].
    chunk_labels: Optional[np.ndarray] = None
    # {camera term name: uint8 (T, h, w, 3)} for contracts with cameras: images[c][t] was seen with obs[t]
    images: Optional[Dict[str, np.ndarray]] = None

    def __post_init__(self):
        self.obs = np.asarray(self.obs, dtype=np.float64)
        self.act = np.asarray(self.act, dtype=np.float64)
        self.t = np.asarray(self.t, dtype=np.float64)
        if self.labelled is None:
            self.labelled = np.ones(len(self.obs), dtype=bool)
        self.labelled = np.asarray(self.labelled, dtype=bool)
        n = len(self.obs)
        if not (self.act.shape[0] == self.t.shape[0] == self.labelled.shape[0] == n):
            raise DatasetError(f"episode arrays disagree in length: obs {self.obs.shape}, "
                               f"act {self.act.shape}, t {self.t.shape}")
        if self.chunk_labels is not None:
            self.chunk_labels = np.asarray(self.chunk_labels, dtype=np.float64)
            c = self.chunk_labels
            if c.ndim != 3 or c.shape[0] != n or c.shape[1] < 1 or (self.act.ndim == 2 and c.shape[2] != self.act.shape[1]):
                raise DatasetError(f"chunk_labels shape {c.shape} does not fit (T={n}, K, act_dim="
                                   f"{self.act.shape[1] if self.act.ndim == 2 else '?'})")
        if self.images is not None:
            for name, frames in self.images.items():
                if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[0] != n or frames.shape[3] != 3:
                    raise DatasetError(f"images[{name!r}] must be uint8 (T={n}, h, w, 3), got "
                                       f"{frames.dtype} {frames.shape}")

    @property
    def chunk_label_length(self) -> Optional[int]:
        """K of the per-frame chunk labels, None without them."""
        return None if self.chunk_labels is None else int(self.chunk_labels.shape[1])

    def __len__(self) -> int:
        return len(self.obs)


@dataclass
class NormStats:
    obs_mean: np.ndarray
    obs_std: np.ndarray
    act_mean: np.ndarray
    act_std: np.ndarray

    def to_dict(self) -> Dict[str, List[float]]:
        return {k: np.asarray(getattr(self, k)).tolist()
                for k in ("obs_mean", "obs_std", "act_mean", "act_std")}

    @classmethod
    def from_dict(cls, d: Dict[str, Sequence[float]]) -> "NormStats":
        return cls(**{k: np.asarray(d[k], dtype=np.float64)
                      for k in ("obs_mean", "obs_std", "act_mean", "act_std")})


class Dataset:
    """A list of episodes that share one contract."""

    def __init__(self, contract: Contract, episodes: Sequence[Episode]):
        self.contract = contract
        self.episodes: List[Episode] = list(episodes)
        for i, ep in enumerate(self.episodes):
            if ep.obs.ndim != 2 or ep.obs.shape[1] != contract.obs_dim:
                raise DatasetError(f"episode {i}: obs shape {ep.obs.shape} does not match contract "
                                   f"{contract.name!r} obs_dim {contract.obs_dim}")
            if ep.act.ndim != 2 or ep.act.shape[1] != contract.act_dim:
                raise DatasetError(f"episode {i}: act shape {ep.act.shape} does not match contract "
                                   f"{contract.name!r} act_dim {contract.act_dim}")
        for i, ep in enumerate(self.episodes):
            if not contract.images:
                if ep.images:
                    raise DatasetError(f"episode {i} has images {sorted(ep.images)} but contract "
                                       f"{contract.name!r} has no cameras")
                continue
            got = {} if ep.images is None else ep.images
            for term in contract.images:
                frames = got.get(term.name)
                if frames is None:
                    raise DatasetError(f"episode {i}: no frames for camera {term.name!r} of contract "
                                       f"{contract.name!r} (it has {sorted(got)})")
                if frames.shape[1:] != term.shape:
                    raise DatasetError(f"episode {i}: camera {term.name!r} frames are {frames.shape[1:]}, "
                                       f"the contract expects {term.shape}")
        ks = {ep.chunk_label_length for ep in self.episodes if ep.chunk_labels is not None}
        if len(ks) > 1:
            raise DatasetError(f"episodes carry chunk labels of different lengths K {sorted(ks)}")

    @property
    def chunk_label_length(self) -> Optional[int]:
        """K of the episodes' chunk labels (None when no episode has them)."""
        ks = [ep.chunk_label_length for ep in self.episodes if ep.chunk_labels is not None]
        return ks[0] if ks else None

    def __len__(self) -> int:
        return len(self.episodes)

    @property
    def num_frames(self) -> int:
        return sum(len(e) for e in self.episodes)

    def check_trainable(self) -> None:
        """Clear errors for data that must not reach a training loop."""
        if not self.episodes or self.num_frames == 0:
            raise DatasetError("dataset is empty: no episodes with frames")
        for i, ep in enumerate(self.episodes):
            if not (np.all(np.isfinite(ep.obs)) and np.all(np.isfinite(ep.act[ep.labelled]))
                    and (ep.chunk_labels is None or np.all(np.isfinite(ep.chunk_labels[ep.labelled])))):
                raise DatasetError(f"episode {i} ({ep.meta.get('episode_id', '?')}) contains NaN/inf")

    def stats(self, eps: float = 1e-6) -> NormStats:
        obs = np.concatenate([e.obs for e in self.episodes])
        act = np.concatenate([e.act[e.labelled] for e in self.episodes])
        if not len(act):     # no labelled frame (e.g. a gated DAgger round the expert never took over)
            dim = self.contract.act_dim
            return NormStats(obs.mean(0), np.maximum(obs.std(0), eps), np.zeros(dim), np.ones(dim))
        return NormStats(obs.mean(0), np.maximum(obs.std(0), eps),
                         act.mean(0), np.maximum(act.std(0), eps))

    def split(self, val_fraction: float, seed: int = 0) -> Tuple["Dataset", "Dataset"]:
        """Split by whole episodes (never frames of one episode on both sides)."""
        n = len(self.episodes)
        order = np.random.default_rng(seed).permutation(n)
        n_val = int(round(val_fraction * n)) if n > 1 else 0
        n_val = min(max(n_val, 1 if val_fraction > 0 and n > 1 else 0), n - 1)
        val = set(order[:n_val].tolist())
        return (Dataset(self.contract, [e for i, e in enumerate(self.episodes) if i not in val]),
                Dataset(self.contract, [e for i, e in enumerate(self.episodes) if i in val]))

    def content_hash(self) -> str:
        h = hashlib.sha256(self.contract.fingerprint().encode())
        for e in self.episodes:
            for a in (e.obs, e.act, e.labelled):
                h.update(np.ascontiguousarray(a).tobytes())
            if e.chunk_labels is not None:   # absent -> same hash as before chunk labels existed
                h.update(b"chunk_labels")
                h.update(np.ascontiguousarray(e.chunk_labels).tobytes())
            for name in sorted(e.images or {}):
                h.update(name.encode())
                frames = e.images[name]   # type: ignore[index]
                for a in range(0, len(frames), 256):   # memory-mapped frames: hash in blocks
                    h.update(np.ascontiguousarray(frames[a:a + 256]).tobytes())
        return h.hexdigest()[:16]

    def merged(self, other: "Dataset") -> "Dataset":
        if other.contract.fingerprint() != self.contract.fingerprint():
            raise DatasetError("cannot merge datasets with different contracts: "
                               + "; ".join(self.contract.mismatches(other.contract)))
        return Dataset(self.contract, self.episodes + other.episodes)

    # ---------------------------------------------------------------------- io
    def save(self, directory) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        lengths = np.array([len(e) for e in self.episodes], dtype=np.int64)
        cat = lambda name, dim: (np.concatenate([getattr(e, name) for e in self.episodes])  # noqa: E731
                                 if self.episodes else np.zeros((0,) + dim))
        tmp = d / "data.tmp.npz"
        extra = {}
        has = np.array([e.chunk_labels is not None for e in self.episodes], dtype=bool)
        if has.any():   # only written when present: older readers/datasets are unaffected
            extra["chunk_labels"] = np.concatenate([e.chunk_labels for e in self.episodes if e.chunk_labels is not None])
            extra["chunk_label_episodes"] = has
        np.savez(tmp, obs=cat("obs", (self.contract.obs_dim,)), act=cat("act", (self.contract.act_dim,)),
                 t=cat("t", ()), labelled=cat("labelled", ()).astype(bool), lengths=lengths, **extra)
        tmp.replace(d / "data.npz")
        if self.contract.images:
            self._save_images(d / IMAGES_DIR)
        meta = {"format": DATASET_FORMAT, "contract": self.contract.to_dict(),
                "episodes": [e.meta for e in self.episodes], "hash": self.content_hash(),
                "num_frames": self.num_frames}
        if self.episodes:
            meta["stats"] = self.stats().to_dict()
        (d / "meta.json").write_text(json.dumps(meta, indent=1, default=json_default))
        return d

    def _save_images(self, folder: Path) -> None:
        """One uint8 .npy per camera, written episode by episode (memory stays one episode)."""
        folder.mkdir(exist_ok=True)
        n = self.num_frames
        for term in self.contract.images:
            tmp = folder / f"{term.name}.tmp.npy"
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n,) + term.shape)
            pos = 0
            for e in self.episodes:
                frames = e.images[term.name]   # type: ignore[index]
                for a in range(0, len(frames), 256):
                    block = frames[a:a + 256]
                    out[pos:pos + len(block)] = block
                    pos += len(block)
            out.flush()
            del out
            tmp.replace(folder / f"{term.name}.npy")

    @classmethod
    def load(cls, directory) -> "Dataset":
        d = Path(directory)
        if not (d / "meta.json").is_file() or not (d / "data.npz").is_file():
            raise DatasetError(f"no dataset at {d} (expected meta.json and data.npz)")
        meta = json.loads((d / "meta.json").read_text())
        if meta.get("format") != DATASET_FORMAT:
            raise DatasetError(f"{d}: dataset format {meta.get('format')!r} not supported")
        try:
            contract = Contract.from_dict(meta["contract"])
        except ContractError as e:
            raise DatasetError(f"{d}: bad contract: {e}") from None
        z = np.load(d / "data.npz")
        bounds = np.concatenate([[0], np.cumsum(z["lengths"])])
        images = {}
        for term in contract.images:
            f = d / IMAGES_DIR / f"{term.name}.npy"
            if not f.is_file():
                raise DatasetError(f"{d}: camera {term.name!r} of the contract has no frames ({f} is missing)")
            images[term.name] = np.load(f, mmap_mode="r")
            if images[term.name].shape != (int(bounds[-1]),) + term.shape:
                raise DatasetError(f"{f}: shape {images[term.name].shape}, expected "
                                   f"{(int(bounds[-1]),) + term.shape}")
        eps = [Episode(z["obs"][a:b], z["act"][a:b], z["t"][a:b], dict(m), z["labelled"][a:b],
                       images={k: v[a:b] for k, v in images.items()} if images else None)
               for a, b, m in zip(bounds[:-1], bounds[1:], meta["episodes"])]
        if "chunk_labels" in z.files:
            has = z["chunk_label_episodes"].astype(bool)
            cl, pos = z["chunk_labels"], 0
            if len(has) != len(eps):
                raise DatasetError(f"{d}: chunk_label_episodes has {len(has)} entries for {len(eps)} episodes")
            for ep, h in zip(eps, has):
                if h:
                    ep.chunk_labels = cl[pos:pos + len(ep)].astype(np.float64)
                    pos += len(ep)
            if pos != len(cl):
                raise DatasetError(f"{d}: chunk_labels has {len(cl)} frames, episodes need {pos}")
            return cls(contract, [Episode(e.obs, e.act, e.t, e.meta, e.labelled, e.chunk_labels, e.images)
                                  for e in eps])
        return cls(contract, eps)
