"""Camera frames -> the uint8 (h, w, 3) RGB arrays a policy takes (numpy + Pillow; no rclpy).

One decoder for every consumer: the policy node on live messages, the dataset builder on
recorded ones, the in-process evaluator on `core.types.ImageData`. Messages are read by field
name, so rclpy messages, rosbags-deserialized ones and the core twins all work.

Raw `sensor_msgs/Image`: encodings rgb8, bgr8 (channels swapped), mono8 (replicated to 3
channels), rgba8/bgra8 (alpha dropped); `step` may pad rows. `sensor_msgs/CompressedImage`:
whatever Pillow opens (JPEG, PNG), converted to RGB. The frame must have the term's
height x width; the term's crop is then cut out. Every refusal is an `ImageError` (a
`ContractError`) that names the topic, the term and what was expected.
"""
from __future__ import annotations

import io
from typing import Any

import numpy as np

from .contract import ContractError, ImageTerm

_CHANNELS = {"rgb8": 3, "bgr8": 3, "mono8": 1, "rgba8": 4, "bgra8": 4}


class ImageError(ContractError):
    """A frame that does not fit its image term (encoding, size, corrupt data)."""


def _as_bytes(data: Any) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if isinstance(data, np.ndarray):
        return data.astype(np.uint8, copy=False).tobytes()
    return bytes(data)   # array.array('B') from rclpy, lists


def decode_raw(term: ImageTerm, msg: Any) -> np.ndarray:
    """A raw sensor_msgs/Image -> uint8 (height, width, 3) RGB (before the crop)."""
    enc = str(msg.encoding).lower()
    where = f"{term.topic} (image term {term.name!r})"
    if enc not in _CHANNELS:
        raise ImageError(f"{where}: encoding {msg.encoding!r} not supported; expected one of {sorted(_CHANNELS)}")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if (h, w) != (term.height, term.width):
        raise ImageError(f"{where}: frame is {w}x{h}, the contract expects {term.width}x{term.height}")
    c = _CHANNELS[enc]
    buf = np.frombuffer(_as_bytes(msg.data), dtype=np.uint8)
    if step < w * c or buf.size < step * h:
        raise ImageError(f"{where}: {buf.size} bytes with step {step} cannot hold a {w}x{h} {enc} frame "
                         f"({w * c} bytes per row)")
    img = buf[:step * h].reshape(h, step)[:, :w * c].reshape(h, w, c)
    if enc == "mono8":
        return np.repeat(img, 3, axis=2)
    if enc in ("bgr8", "bgra8"):
        return np.ascontiguousarray(img[:, :, 2::-1])
    return np.ascontiguousarray(img[:, :, :3])


def decode_compressed(term: ImageTerm, msg: Any) -> np.ndarray:
    """A sensor_msgs/CompressedImage (JPEG, PNG, ...) -> uint8 (height, width, 3) RGB."""
    from PIL import Image, UnidentifiedImageError

    where = f"{term.topic} (image term {term.name!r})"
    try:
        with Image.open(io.BytesIO(_as_bytes(msg.data))) as im:
            img = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ImageError(f"{where}: cannot decode the {msg.format!r} frame: {e}") from None
    if img.shape[:2] != (term.height, term.width):
        raise ImageError(f"{where}: frame is {img.shape[1]}x{img.shape[0]}, the contract expects "
                         f"{term.width}x{term.height}")
    return img


def crop(term: ImageTerm, img: np.ndarray) -> np.ndarray:
    if term.crop is None:
        return img
    top, left, h, w = term.crop
    return np.ascontiguousarray(img[top:top + h, left:left + w])


def decode(term: ImageTerm, msg: Any) -> np.ndarray:
    """The frame in `msg` as the policy sees it: uint8 ``term.shape``, cropped."""
    if hasattr(msg, "encoding"):
        img = decode_raw(term, msg)
    elif hasattr(msg, "format"):
        img = decode_compressed(term, msg)
    else:
        raise ImageError(f"{term.topic} (image term {term.name!r}): a {type(msg).__name__} is neither a "
                         f"sensor_msgs/Image nor a CompressedImage")
    return crop(term, img)


def batch(term: ImageTerm, frames: Any) -> np.ndarray:
    """(h, w, 3) or (B, h, w, 3) uint8 -> (B, h, w, 3) uint8; ValueError on another shape."""
    x = np.asarray(frames)
    if x.ndim == 3:
        x = x[None]
    if x.dtype != np.uint8 or x.shape[1:] != term.shape:
        raise ValueError(f"image {term.name!r} must be uint8 {term.shape} or (B, {', '.join(map(str, term.shape))}), "
                         f"got {x.dtype} {np.shape(frames)}")
    return x
