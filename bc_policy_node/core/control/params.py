"""The policy node's parameters (one frozen dataclass, validated at construction; no rclpy).

Also the in-process evaluator's execution settings: `PolicyParams.for_execution` maps the
experiments' executor keywords (``m``, ``threshold``, ``query_every``, ``n_execute``) onto the
same fields, so what is evaluated in process is what the node runs (same defaults, one place).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from ..params import doc
from .ensemble import EXECUTORS
from .runtime import MODE_SELECTIONS

COMMAND_INTERFACES = ("forward", "trajectory", "vector")


@dataclass(frozen=True)
class PolicyParams:
    """Parameters of the policy node (declared in one block, validated at startup)."""

    model_path: str = doc("Exported ONNX policy (bc_policy metadata inside). Setting it at run time "
                          "hot-swaps the model (refused models are reverted)", "", runtime=True)
    contract: str = doc("The robot's contract YAML (config/contracts/<robot>_<task>.yaml), or "
                        "metaworld/<task> for a Meta-World task's generated one; the model's "
                        "embedded contract must match it", "")
    execution_mode: str = doc("Chunk execution: temporal_ensembling | receding_horizon | "
                              "latency_aware | mode_consistent", "temporal_ensembling")
    autostart: bool = doc("Configure and activate at startup", False)
    controller: str = doc("ros2_control controller name: commands go to /<controller>/commands "
                          "(forward) or /<controller>/joint_trajectory (trajectory)",
                          "forward_position_controller")
    command_interface: str = doc("forward: std_msgs/Float64MultiArray | trajectory: "
                                 "trajectory_msgs/JointTrajectory (one point, dt ahead) | vector: the "
                                 "whole action (every part, contract order) as one Float64MultiArray on "
                                 "/<controller>/commands (the dagger node's policy input)", "forward")
    m: float = doc("Temporal ensembling weight exp(-m*i), i = 0 the oldest chunk (1/chunk)", 0.01)
    query_every: int = doc("temporal_ensembling / mode_consistent: ticks between policy queries", 1)
    n_execute: int = doc("receding_horizon / latency_aware: actions executed per chunk (0 = K/2)", 0)
    mode_threshold: float = doc("mode_consistent: RMS distance (rad) above which a chunk is not "
                                "averaged with the plan (0.15 = the in-process evaluator's default, "
                                "PolicyParams.for_execution)", 0.15)
    mode_select: str = doc("gmm policies: argmax | sample (mixture component per query)", "argmax")
    seed: int = doc("Seed of the random generator of mode_select: sample (re-seeded at every "
                    "activation, so a run is reproducible)", 0)
    threads: int = doc("onnxruntime intra-op threads (1 is best for batch-1 control)", 1)
    status_rate_hz: float = doc("Rate of ~/status and /diagnostics (Hz)", 1.0)
    stale_after_s: float = doc("Observation age (s) that makes the policy hold; 0 = the contract's "
                               "stale_after_s", 0.0)
    lockstep: bool = doc("Tick once per new observation stamp (sim bridge in lock-step) instead of "
                         "on a timer at the contract rate", False)
    missed_tick_factor: float = doc("A tick is missed when its period exceeds this times the "
                                    "nominal period", 1.5)
    stats_window: int = doc("Ticks in the rolling window of the timing percentiles", 10000)
    reset_on_change: str = doc("'<topic>:<field>' of an observation topic of the contract: when the "
                               "field's value changes (a new episode) the loop starts a new plan at "
                               "the measured position; '' = off. A topic the contract does not observe "
                               "is ignored with a warning at configure", "/task_state:episode_id")
    reset_jump_rad: float = doc("Start a new plan at the measured position when it differs from the "
                                "last command by more than this (rad) on some joint; 0 = off", 0.5)

    def __post_init__(self):
        if self.execution_mode not in EXECUTORS:
            raise ValueError(f"execution_mode {self.execution_mode!r} unknown; choose from {sorted(EXECUTORS)}")
        if self.command_interface not in COMMAND_INTERFACES:
            raise ValueError(f"command_interface {self.command_interface!r} unknown; choose from {COMMAND_INTERFACES}")
        if self.mode_select not in MODE_SELECTIONS:
            raise ValueError(f"mode_select {self.mode_select!r} unknown; choose from {MODE_SELECTIONS}")
        if not self.controller or "/" in self.controller.strip("/"):
            raise ValueError(f"controller must be a controller name, got {self.controller!r}")
        for name in ("autostart", "lockstep"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        checks = (("m", math.isfinite(self.m), "finite"),
                  ("query_every", self.query_every >= 1, ">= 1"),
                  ("n_execute", self.n_execute >= 0, ">= 0 (0 = half the chunk)"),
                  ("mode_threshold", math.isfinite(self.mode_threshold) and self.mode_threshold >= 0, ">= 0"),
                  ("threads", self.threads >= 1, ">= 1"),
                  ("seed", isinstance(self.seed, int) and self.seed >= 0, "an integer >= 0"),
                  ("status_rate_hz", math.isfinite(self.status_rate_hz) and self.status_rate_hz > 0, "> 0"),
                  ("stale_after_s", math.isfinite(self.stale_after_s) and self.stale_after_s >= 0,
                   ">= 0 (0 = from the contract)"),
                  ("missed_tick_factor", math.isfinite(self.missed_tick_factor) and self.missed_tick_factor > 1,
                   "> 1"),
                  ("stats_window", self.stats_window >= 100, ">= 100"),
                  ("reset_jump_rad", math.isfinite(self.reset_jump_rad) and self.reset_jump_rad >= 0,
                   ">= 0 (0 = off)"))
        for name, ok, what in checks:
            if not ok:
                raise ValueError(f"parameter {name} must be {what}, got {getattr(self, name)!r}")
        self.reset_marker()

    def reset_marker(self) -> Optional[Tuple[str, Tuple[str, ...]]]:
        """``reset_on_change`` parsed: ``(topic, field path)`` or None when off."""
        spec = self.reset_on_change
        if not isinstance(spec, str):
            raise ValueError(f"parameter reset_on_change must be a string, got {spec!r}")
        if not spec:
            return None
        topic, sep, field = spec.rpartition(":")
        parts = tuple(field.split("."))
        if not sep or not topic.startswith("/") or not all(p.isidentifier() for p in parts):
            raise ValueError(f"parameter reset_on_change must be '' or '/<topic>:<field>' (e.g. "
                             f"'/task_state:episode_id'), got {spec!r}")
        return topic, parts

    def executor_kwargs(self) -> Dict[str, object]:
        mode = self.execution_mode
        if mode == "temporal_ensembling":
            return {"m": self.m, "query_every": self.query_every}
        if mode == "mode_consistent":
            return {"m": self.m, "threshold": self.mode_threshold, "query_every": self.query_every}
        return {"n_execute": self.n_execute or None}

    def command_topic(self) -> str:
        base = "/" + self.controller.strip("/")
        return base + ("/joint_trajectory" if self.command_interface == "trajectory" else "/commands")

    @classmethod
    def for_execution(cls, execution_mode: str = "temporal_ensembling", mode_select: str = "argmax",
                      seed: int = 0, reset_jump_rad: Optional[float] = None, **exec_kwargs) -> "PolicyParams":
        """Parameters from the in-process evaluator's executor keywords (unknown ones raise)."""
        names = {"m": "m", "threshold": "mode_threshold", "query_every": "query_every", "n_execute": "n_execute"}
        bad = sorted(set(exec_kwargs) - set(names))
        if bad:
            raise ValueError(f"unknown execution parameter(s) {bad}; known: {sorted(names)}")
        kw = {names[k]: (0 if k == "n_execute" and v is None else v) for k, v in exec_kwargs.items()}
        if reset_jump_rad is not None:
            kw["reset_jump_rad"] = float(reset_jump_rad)
        return cls(execution_mode=execution_mode, mode_select=mode_select, seed=int(seed), **kw)
