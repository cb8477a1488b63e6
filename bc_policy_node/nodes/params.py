"""Declare a node's parameters from a frozen dataclass, load them once, validate at startup."""
from __future__ import annotations

import dataclasses
from typing import Type, TypeVar

from rcl_interfaces.msg import ParameterDescriptor

from ..core.params import doc, runtime_names  # noqa: F401  (re-exported for the nodes)

T = TypeVar("T")


def declare_and_load(node, cls: Type[T]) -> T:
    """Declare every field of dataclass `cls` as a parameter (default = the field default,
    description = the field's `metadata['doc']`) and return a validated frozen instance.

    The dataclass's `__post_init__` raises ValueError on bad values; the node lets it propagate
    so a misconfigured node fails at start with the parameter's name in the message.
    """
    values = {}
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if isinstance(default, tuple):
            default = list(default)
        # float fields also accept integers (`real_time_factor:=4`); rclpy's static typing would
        # refuse them, so they are declared dynamically typed and converted here.
        is_float = isinstance(default, float)
        desc = ParameterDescriptor(description=f.metadata.get("doc", ""), dynamic_typing=is_float)
        value = node.declare_parameter(f.name, default, desc).value
        if is_float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        values[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)
