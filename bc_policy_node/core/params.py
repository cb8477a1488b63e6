"""Node parameters as frozen dataclasses, documented without ROS (numpy-free, rclpy-free).

A node's parameters are one dataclass whose fields are made with `doc`: the text is the ROS
parameter's description, ``runtime=True`` marks a parameter that may be set while the node runs
(the node's ``on_set_parameters`` callback accepts exactly those). `nodes/common.py` declares
the fields as ROS parameters; `scripts/param_tables.py` renders them for config/*.yaml and
the README without importing rclpy.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Tuple


def doc(text: str, default: Any, runtime: bool = False) -> Any:
    """Field helper: ``rate_hz: float = doc("control rate (Hz)", 50.0)``."""
    if isinstance(default, list):
        default = tuple(default)
    return dataclasses.field(default=default, metadata={"doc": text, "runtime": bool(runtime)})


def runtime_names(cls) -> Tuple[str, ...]:
    """Names of the fields of dataclass `cls` declared with ``runtime=True``."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("runtime"))
