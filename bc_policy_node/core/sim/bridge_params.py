"""The MuJoCo bridge's settings and its rclpy-free helpers (the node is `nodes/mujoco_bridge.py`).

Owns `BridgeParams` (every node parameter with its documentation, validated at start-up), the
command counters reported on /diagnostics, the command rate limiter (`RateLimiter`, token
bucket) and the publish-period statistics (`PeriodStats`). Plain Python: the README's parameter
table and the tests read them without ROS.
"""
from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from ..params import doc
from .disturbance import Pushes

NODE_NAME = "mujoco_bridge"
MODES = ("free", "lockstep")

# Command counters reported on /diagnostics (see the bad-input table in MujocoBridge's docstring).
ACCEPTED = "accepted"
CLAMPED = "clamped"
REJ_LENGTH = "rejected_wrong_length"
REJ_NONFINITE = "rejected_nonfinite"
REJ_MALFORMED = "rejected_malformed"
REJ_UNKNOWN_JOINT = "rejected_unknown_joint"
REJ_JOINT_SET = "rejected_joint_set"
REJ_NO_POINTS = "rejected_no_points"
RATE_LIMITED = "rate_limited"
IGNORED = "ignored_not_running"
COUNTERS = (ACCEPTED, CLAMPED, REJ_LENGTH, REJ_NONFINITE, REJ_MALFORMED, REJ_UNKNOWN_JOINT,
            REJ_JOINT_SET, REJ_NO_POINTS, RATE_LIMITED, IGNORED)
SWITCH_INTERVAL_S = 0.0005  # s; GIL hand-over interval of the bridge process (CPython default 0.005)
RATE_BURST_S = 0.1          # s of max_command_rate_hz the rate limiter lets through at once


@dataclass(frozen=True)
class BridgeParams:
    robot: str = doc("Shipped robot model (planar3 | arm7); its MJCF is models/<robot>.xml; sawyer for "
                     "metaworld/<name> tasks", "planar3")
    mjcf: str = doc("MJCF file of the scene; '' = the shipped model of `robot`", "")
    task: str = doc("Task of the first episode: curved_reach | bimodal | long_horizon, or metaworld/<name> "
                    "(robot sawyer; any Meta-World v3 task with a scripted policy; nodes/metaworld_backend.py)",
                    "curved_reach")
    variant: str = doc("Task variant of the first episode ('' = default)", "")
    seed: int = doc("Seed of the first episode (auto_reset)", 0)
    mode: str = doc("free: physics at real time x real_time_factor; lockstep: one control period "
                    "per received command (docs/design.md, lock-step protocol)", "free")
    real_time_factor: float = doc("free mode: simulated seconds per wall-clock second", 1.0)
    control_rate_hz: float = doc("Control rate (Hz): task ticks, /task_state rate, lock-step period "
                                 "(Meta-World tasks: their own 80 Hz, this is not used)", 50.0)
    joint_state_rate_hz: float = doc("free mode: /joint_states rate in simulated time (Hz); "
                                     "capped by the physics rate 1/timestep", 500.0)
    controller: str = doc("Controller name: commands on /<controller>/commands and "
                          "/<controller>/joint_trajectory", "forward_position_controller")
    publish_clock: bool = doc("Publish /clock (sim time)", True)
    clock_rate_hz: float = doc("free mode: /clock rate in simulated time (Hz; also at every control "
                               "boundary); each rclpy node with use_sim_time pays ~0.1 ms per /clock", 100.0)
    auto_reset: bool = doc("Start an episode (task, variant, seed) at start-up", True)
    max_command_rate_hz: float = doc("Commands above this wall-clock rate (burst: 0.1 s worth) are "
                                     "dropped and counted as rate_limited", 10000.0)
    diagnostics_rate_hz: float = doc("Rate of /diagnostics (Hz, wall clock)", 1.0)
    push_magnitude: float = doc("Disturbance test: push the arm by a random joint offset of this norm "
                                "(rad) at seeded ticks and hold it there (core/sim/disturbance.py); 0 = off", 0.0)
    push_interval_ticks: float = doc("Mean control ticks between pushes", 80.0)
    push_count: int = doc("Pushes per episode at most", 3)
    cameras: Tuple[str, ...] = doc(
        "MJCF cameras to render and publish, each '<name>[:<W>x<H>][@<rate_hz>]' (size default 96x96; "
        "rate in Hz of sim time, 0 or omitted = every control tick): /camera/<name>/image_raw, "
        "/camera/<name>/image_raw/compressed, /camera/<name>/camera_info; [] = no rendering "
        "(core/sim/camera.py; sets MUJOCO_GL=egl if unset)", ())
    camera_jpeg_quality: int = doc("JPEG quality (1-95) of /camera/<name>/image_raw/compressed", 90)

    def __post_init__(self):
        if self.cameras is None:       # an empty list given as a parameter override has no type
            object.__setattr__(self, "cameras", ())
        if not all(isinstance(c, str) for c in self.cameras):
            raise ValueError(f"parameter cameras must be a list of strings, got {list(self.cameras)!r}")
        try:
            self.camera_specs()
        except ValueError as e:
            raise ValueError(f"parameter cameras: {e}") from None
        if not 1 <= self.camera_jpeg_quality <= 95:
            raise ValueError(f"parameter camera_jpeg_quality must be 1..95, got {self.camera_jpeg_quality}")
        if self.mode not in MODES:
            raise ValueError(f"parameter mode must be one of {MODES}, got {self.mode!r}")
        for name in ("real_time_factor", "control_rate_hz", "joint_state_rate_hz", "clock_rate_hz",
                     "max_command_rate_hz", "diagnostics_rate_hz"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"parameter {name} must be a finite number > 0, got {v}")
        if self.joint_state_rate_hz < self.control_rate_hz:
            raise ValueError(f"parameter joint_state_rate_hz ({self.joint_state_rate_hz}) must be >= "
                             f"control_rate_hz ({self.control_rate_hz})")
        if not self.controller or "/" in self.controller.strip("/"):
            raise ValueError(f"parameter controller must be a plain name, got {self.controller!r}")
        if not (0 <= self.seed < 2 ** 32):
            raise ValueError(f"parameter seed must fit uint32, got {self.seed}")
        try:
            self.pushes()
        except ValueError as e:
            raise ValueError(f"parameters push_magnitude/push_interval_ticks/push_count: {e}") from None

    def camera_specs(self):
        """The `cameras` entries as `core.sim.camera.CameraSpec`s (ValueError on a bad one)."""
        from .camera import parse_camera_specs   # mujoco: only imported by the nodes that render

        return parse_camera_specs(self.cameras)

    def pushes(self) -> Optional[Pushes]:
        if not (math.isfinite(self.push_magnitude) and math.isfinite(self.push_interval_ticks)):
            raise ValueError("must be finite")
        if self.push_magnitude == 0:
            return None
        return Pushes(magnitude=self.push_magnitude, interval=self.push_interval_ticks, count=self.push_count)


class RateLimiter:
    """Token bucket: `rate` tokens/s, at most `burst` stored (wall clock)."""

    def __init__(self, rate: float, burst: float):
        self.rate, self.burst = float(rate), max(1.0, float(burst))
        self.tokens = self.burst
        self.t = time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class PeriodStats:
    """Wall-clock intervals of a periodic publisher vs the nominal period (last `n` intervals)."""

    def __init__(self, n: int = 5000):
        self.last: Optional[float] = None
        self.err = deque(maxlen=n)
        self.count = 0
        self.stalls = 0        # intervals longer than 1.5x nominal

    def record(self, now: float, nominal: float) -> None:
        if self.last is not None:
            e = (now - self.last) - nominal
            self.err.append(e)
            if e > 0.5 * nominal:
                self.stalls += 1
        self.last = now
        self.count += 1

    def reset(self) -> None:
        self.last = None

    def p99_abs_us(self) -> float:
        if not self.err:
            return float("nan")
        return float(np.percentile(np.abs(np.fromiter(self.err, float)), 99) * 1e6)
