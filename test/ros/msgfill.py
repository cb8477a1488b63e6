"""Fill any ROS message with deterministic non-default values (used by round-trip tests)."""
import importlib
import random
import re

_INT = re.compile(r"^(u?)int(8|16|32|64)$")


def _scalar(t, rng):
    m = _INT.match(t)
    if m:
        bits = int(m.group(2)) - (0 if m.group(1) else 1)
        return rng.randrange(0, 2 ** min(bits, 31))
    if t in ("double", "float"):
        return rng.choice([0.5, -1.25, 3.0, 1e-3]) if t == "float" else rng.uniform(-1e3, 1e3)
    if t in ("boolean",):
        return True
    if t in ("octet", "byte"):
        return bytes([rng.randrange(256)])
    if t in ("char",):
        return rng.randrange(1, 127)
    if t.startswith("string") or t.startswith("wstring"):
        return "".join(rng.choice("abcxyz_/") for _ in range(rng.randrange(1, 12)))
    if "/" in t:
        pkg, name = t.split("/")
        cls = getattr(importlib.import_module(pkg + ".msg"), name)
        return fill(cls, rng)
    raise TypeError(f"unhandled field type {t}")


def fill(cls, rng=None):
    """An instance of `cls` with every field set to a non-default value."""
    rng = rng if isinstance(rng, random.Random) else random.Random(rng or 0)
    msg = cls()
    for name, t in cls.get_fields_and_field_types().items():
        m = re.match(r"^sequence<(.+?)(, \d+)?>$", t) or re.match(r"^(.+)\[(\d*)\]$", t)
        if m:
            inner = m.group(1)
            fixed = re.match(r"^(.+)\[(\d+)\]$", t)
            n = int(fixed.group(2)) if fixed else rng.randrange(1, 5)
            value = [_scalar(inner, rng) for _ in range(n)]
        else:
            value = _scalar(t, rng)
        if name == "stamp" and hasattr(value, "sec"):
            pass
        setattr(msg, name, value)
    return msg
