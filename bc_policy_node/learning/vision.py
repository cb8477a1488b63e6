"""Camera encoders (torch) and the image side of the training batches (numpy).

`VisionEncoder` turns the contract's camera frames - uint8 (B, h, w, 3), exactly what the ONNX
graph's ``image_<name>`` inputs take - into a feature vector that the policy heads read next to
the normalized state. One small CNN per camera, trained from scratch (no pretrained weights can be
downloaded here, and Diffusion Policy reports from-scratch encoders matching pretrained ones in
sim): a 5x5 stride-2 convolution, a 3x3 stride-2 and a 3x3 one, each followed by GroupNorm
(BatchNorm's running statistics would differ between training and a batch-1 control loop) and
ReLU, then a 1x1 convolution to ``vision_keypoints`` maps read out by a spatial softmax: the
expected (x, y) image position of each map, in [-1, 1]. Keypoints keep *where* things are (a goal
marker, the gripper), which is what a reaching or manipulation policy needs from the picture, at a
fraction of the parameters of a flattened feature map. The uint8 -> float conversion and the
normalization are part of the graph, so the node feeds decoded frames as they are.

Augmentation (`random_shift`, DrQ's random shift): every training frame is padded by
``image_shift`` pixels (edge values) and cropped back at a random offset (each camera of a sample
draws its own). Applied to uint8 batches in numpy, never inside the exported graph.

`ImageRows` gathers a batch's frames from the dataset's per-episode arrays - memory-mapped
uint8 files for a loaded dataset - so a dataset of images is never held as float, nor whole.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..core.contract import ImageTerm

PIXEL_MEAN, PIXEL_STD = 0.5, 0.25     # after scaling to [0, 1]
GROUPS = 8


class SpatialSoftmax(nn.Module):
    """(B, C, H, W) maps -> (B, 2C) expected (x, y) positions in [-1, 1] (x to the right, y down)."""

    def __init__(self, height: int, width: int):
        super().__init__()
        ys, xs = torch.meshgrid(torch.linspace(-1.0, 1.0, height), torch.linspace(-1.0, 1.0, width),
                                indexing="ij")
        self.register_buffer("pos", torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1))   # (HW, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        att = torch.softmax(x.flatten(2), dim=-1)           # (B, C, HW)
        return (att @ self.pos).flatten(1)                   # (B, 2C)


def _block(c_in: int, c_out: int, k: int, stride: int) -> List[nn.Module]:
    return [nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2), nn.GroupNorm(min(GROUPS, c_out), c_out),
            nn.ReLU()]


class CameraEncoder(nn.Module):
    """One camera: uint8 (B, h, w, 3) -> (B, 2 * keypoints)."""

    def __init__(self, term: ImageTerm, channels: int, keypoints: int):
        super().__init__()
        self.shape = term.shape
        self.net = nn.Sequential(*_block(3, channels, 5, 2), *_block(channels, channels, 3, 2),
                                 *_block(channels, channels, 3, 1), nn.Conv2d(channels, keypoints, 1))
        with torch.no_grad():
            h, w = self.net(torch.zeros(1, 3, *term.shape[:2])).shape[-2:]
        self.softmax = SpatialSoftmax(int(h), int(w))
        self.out_dim = 2 * keypoints

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.permute(0, 3, 1, 2).float() * (1.0 / 255.0)
        return self.softmax(self.net((x - PIXEL_MEAN) / PIXEL_STD))


class VisionEncoder(nn.Module):
    """All cameras of a contract, in contract order -> concatenated keypoint features."""

    def __init__(self, cameras: Sequence[ImageTerm], channels: int, keypoints: int):
        super().__init__()
        if not cameras:
            raise ValueError("VisionEncoder needs at least one camera term")
        self.names = [t.name for t in cameras]
        self.encoders = nn.ModuleList(CameraEncoder(t, channels, keypoints) for t in cameras)
        self.out_dim = sum(e.out_dim for e in self.encoders)

    def forward(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(images) != len(self.encoders):
            raise ValueError(f"expected frames of cameras {self.names}, got {len(images)} image tensors")
        return torch.cat([enc(x) for enc, x in zip(self.encoders, images)], dim=-1)


def random_shift(frames: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (B, h, w, C) -> the same frames shifted by up to ``pad`` pixels each way (edge padding)."""
    if pad <= 0:
        return frames
    b, h, w, _ = frames.shape
    padded = np.pad(frames, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    dy = rng.integers(0, 2 * pad + 1, size=b)
    dx = rng.integers(0, 2 * pad + 1, size=b)
    rows = (dy[:, None] + np.arange(h))[:, :, None]        # (B, h, 1)
    cols = (dx[:, None] + np.arange(w))[:, None, :]        # (B, 1, w)
    return padded[np.arange(b)[:, None, None], rows, cols]


class ImageRows:
    """Where each training sample's frames live: camera -> per-episode uint8 arrays, and per
    sample (episode position in those lists, frame index). `gather` copies one batch out."""

    def __init__(self, names: Sequence[str], sources: Dict[str, List[np.ndarray]], rows: np.ndarray):
        self.names = list(names)
        self.sources = sources
        self.rows = np.asarray(rows, dtype=np.int64).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self.rows)

    def gather(self, idx: np.ndarray, shift: int = 0, rng: Optional[np.random.Generator] = None
               ) -> Tuple[torch.Tensor, ...]:
        out = []
        rows = self.rows[np.asarray(idx, dtype=np.int64)]
        for name in self.names:
            eps = self.sources[name]
            frames = np.stack([eps[e][f] for e, f in rows]) if len(rows) else np.zeros((0,) + eps[0].shape[1:], np.uint8)
            if shift > 0:
                frames = random_shift(frames, shift, rng if rng is not None else np.random.default_rng())
            out.append(torch.from_numpy(np.ascontiguousarray(frames)))
        return tuple(out)
