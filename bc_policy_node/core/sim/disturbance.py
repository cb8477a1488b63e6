"""Seeded pushes that knock the simulated arm off its path mid-episode (numpy only).

Demonstrations are usually recorded in calm conditions; a deployed arm gets bumped. A push
displaces the arm by a random joint offset and leaves it there, holding the displaced pose
(as a compliant arm that was shoved, or a collision-reaction stop): only the controller can
bring it back, from a state the demonstrations may never have shown. This is what makes
behavioral cloning's covariate shift visible on noise-free tasks, and what DAgger's
on-policy labels are for.

The schedule depends on the episode seed only (never on the trajectory): the policy and the
expert at the same seed get the same pushes at the same ticks, so deviations compare like
for like. `SimEnv(disturbance=Pushes(...))` applies them after the physics of a tick.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Mapping, Optional

import numpy as np

_STREAM = 0x9E57   # keeps the push stream independent of the task's reset stream


@dataclass(frozen=True)
class Pushes:
    """Pushes at random ticks: the first gap is drawn from [start, start + interval], later
    gaps from [interval / 2, 3 interval / 2] (mean `interval`); at most `count` per episode.
    Each displaces the joints by a random direction of norm `magnitude` (rad / m), clipped
    `margin` inside the joint limits.
    """

    magnitude: float = 0.3
    interval: float = 80.0
    count: int = 3
    start: int = 10
    margin: float = 0.05

    def __post_init__(self):
        if not (self.magnitude >= 0 and self.interval > 0 and self.count >= 0 and self.start >= 1):
            raise ValueError(f"invalid push settings {self} (magnitude >= 0, interval > 0, count >= 0, "
                             f"start >= 1)")

    def schedule(self, seed: int, horizon: int, n_joints: int) -> Dict[int, np.ndarray]:
        """{tick: joint offset} of episode `seed` (ticks in [start, horizon))."""
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, _STREAM])
        out: Dict[int, np.ndarray] = {}
        t = self.start + rng.uniform(0.0, self.interval)
        for _ in range(self.count):
            if t >= horizon:
                break
            d = rng.normal(size=n_joints)
            out[int(t)] = self.magnitude * d / max(np.linalg.norm(d), 1e-12)
            t += rng.uniform(0.5, 1.5) * self.interval
        return out

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_spec(cls, spec: Optional[Mapping[str, Any]]) -> Optional["Pushes"]:
        """None/empty -> no disturbance; otherwise the fields above (unknown keys are an error)."""
        if not spec:
            return None
        if isinstance(spec, Pushes):
            return spec
        unknown = set(spec) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown push settings {sorted(unknown)} (known: {sorted(cls.__dataclass_fields__)})")
        return cls(**dict(spec))

    @classmethod
    def from_cli(cls, args) -> Optional["Pushes"]:
        """From the command line's --push-magnitude / --push-interval / --push-count (magnitude 0 = calm)."""
        magnitude = float(getattr(args, "push_magnitude", 0.0) or 0.0)
        if magnitude == 0:
            return None
        return cls(magnitude=magnitude, interval=float(args.push_interval), count=int(args.push_count))
