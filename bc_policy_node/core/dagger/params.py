"""The DAgger arbiter's parameters (one frozen dataclass, validated at construction; no rclpy).

The dagger node declares them as ROS parameters (`nodes/params.declare_and_load`); the
in-process round loop builds the same dataclass (`DaggerParams.in_process`), so both paths run
one arbiter (`core.dagger.arbiter.DaggerArbiter`) with the same defaults.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

from ..params import doc

VARIANTS = ("classic", "human_gated", "robot_gated")
UNCERTAINTY_SOURCES = ("auto", "ensemble", "chunk")


@dataclass(frozen=True)
class DaggerParams:
    """Parameters of the dagger node (declared in one block, validated at startup)."""

    contract: str = doc("The robot's contract YAML: observation topics, action joints, limits and "
                        "per-tick step bound", "")
    variant: str = doc("classic (beta gate) | human_gated (~/intervention) | robot_gated "
                       "(uncertainty gate)", "classic")
    beta: float = doc("classic: probability that the expert acts at a step (the DAgger loop sets "
                       "it per round)", 0.5, runtime=True)
    seed: int = doc("Seed of the beta gate; reseeded per episode from (seed, episode seed)", 0)
    controller: str = doc("ros2_control controller: executed commands go to /<controller>/commands",
                          "forward_position_controller")
    policy_command_topic: str = doc("Where the policy node's commands arrive (its command topic "
                                    "remapped here)", "/dagger/policy_command")
    policy_chunk_topic: str = doc("The policy node's stamped chunks (robot_gated, chunk "
                                  "disagreement)", "/policy/action_chunk")
    expert_service: str = doc("bc_msgs/QueryExpert service of the expert node", "/expert/query")
    task_state_topic: str = doc("bc_msgs/TaskState topic (episode id, step, done, latent mode)",
                                "/task_state")
    expert_timeout_periods: float = doc("Wall-clock wait for the expert label, in control periods; "
                                        "then the frame is unlabelled and the loop goes on", 10.0,
                                        runtime=True)
    policy_timeout_periods: float = doc("Wall-clock wait for the policy's command, in control "
                                        "periods; then the expert label acts (or the command holds)", 50.0,
                                        runtime=True)
    absent_after: int = doc("Consecutive timeouts after which a party is no longer waited for "
                            "(until it answers again)", 3)
    teleop_timeout_periods: float = doc("human_gated: a ~/teleop_command older than this (control "
                                        "periods, wall clock) is ignored and the expert label acts", 5.0)
    uncertainty_source: str = doc("robot_gated: ensemble (ensemble_models) | chunk (disagreement of "
                                  "the policy's successive chunks) | auto (ensemble if models given)",
                                  "auto")
    ensemble_models: Tuple[str, ...] = doc("robot_gated: ONNX policies of the ensemble (>= 2); [''] = none "
                                           "(a string array needs one element to be typed)", ("",))
    uncertainty_threshold: float = doc("robot_gated: the expert takes over above this score (spread / "
                                       "uncertainty_scale: action stds for an ensemble, rad for chunk "
                                       "disagreement unless a scale is given)", 0.5)
    uncertainty_scale: float = doc("rad; divides the spread (0 = the ensemble's training action std "
                                   "from its metadata; chunk source: no scaling)", 0.0)
    uncertainty_horizon: int = doc("robot_gated: chunk actions (ticks ahead) compared", 5)
    chunk_window: int = doc("robot_gated, chunk source: how many successive chunks are compared", 5)
    query_budget: int = doc("robot_gated: expert-acted ticks per episode at most", 100)
    release: float = doc("robot_gated: give control back below release * threshold", 0.7)
    min_expert_ticks: int = doc("robot_gated: ticks the expert keeps control at least", 5)
    status_rate_hz: float = doc("Hz; rate of ~/status (JSON counters)", 1.0)
    label_chunk_length: int = doc("0 or 1 = label with the expert's single action; K > 1 = ask the "
                                  "expert for its K-step planned chunk from the observation: the "
                                  "first action acts (= the single-action label), FrameTag."
                                  "expert_action carries the whole chunk (K x act_dim, row-major)", 0)

    def __post_init__(self):
        object.__setattr__(self, "ensemble_models", tuple(str(m) for m in self.ensemble_models if str(m)))
        if self.variant not in VARIANTS:
            raise ValueError(f"variant {self.variant!r} unknown; choose from {VARIANTS}")
        if self.uncertainty_source not in UNCERTAINTY_SOURCES:
            raise ValueError(f"uncertainty_source {self.uncertainty_source!r} unknown; choose from "
                             f"{UNCERTAINTY_SOURCES}")
        if not self.controller or "/" in self.controller.strip("/"):
            raise ValueError(f"controller must be a controller name, got {self.controller!r}")
        if self.uncertainty_source == "ensemble" and len(self.ensemble_models) < 2:
            raise ValueError("uncertainty_source ensemble needs >= 2 ensemble_models")
        checks = (("beta", 0.0 <= self.beta <= 1.0, "in [0, 1]"),
                  ("expert_timeout_periods", math.isfinite(self.expert_timeout_periods)
                   and self.expert_timeout_periods > 0, "> 0"),
                  ("policy_timeout_periods", math.isfinite(self.policy_timeout_periods)
                   and self.policy_timeout_periods > 0, "> 0"),
                  ("teleop_timeout_periods", self.teleop_timeout_periods > 0, "> 0"),
                  ("absent_after", self.absent_after >= 1, ">= 1"),
                  ("uncertainty_threshold", self.uncertainty_threshold > 0, "> 0"),
                  ("uncertainty_scale", math.isfinite(self.uncertainty_scale) and self.uncertainty_scale >= 0,
                   ">= 0 (0 = automatic)"),
                  ("uncertainty_horizon", self.uncertainty_horizon >= 1, ">= 1"),
                  ("chunk_window", self.chunk_window >= 2, ">= 2"),
                  ("query_budget", self.query_budget >= 0, ">= 0"),
                  ("release", 0 < self.release <= 1, "in (0, 1]"),
                  ("min_expert_ticks", self.min_expert_ticks >= 1, ">= 1"),
                  ("status_rate_hz", self.status_rate_hz > 0, "> 0"),
                  ("label_chunk_length", self.label_chunk_length >= 0, ">= 0 (0 = single action)"))
        for name, ok, what in checks:
            if not ok:
                raise ValueError(f"parameter {name} must be {what}, got {getattr(self, name)!r}")

    @classmethod
    def in_process(cls, variant: str, **values) -> "DaggerParams":
        """The in-process round loop's arbiter settings: the node's defaults, `values` on top
        (the ensemble, if any, is given to the arbiter as an object, not as model paths)."""
        return cls(variant=variant, **values)

    def label_chunk(self) -> int:
        """K of the expert's chunk labels (1 = single action)."""
        return max(1, int(self.label_chunk_length))

    def command_topic(self) -> str:
        return "/" + self.controller.strip("/") + "/commands"

    def resolved_uncertainty_source(self, has_ensemble: bool = False) -> str:
        """robot_gated: where the uncertainty comes from ("" for the other variants); `auto` =
        the ensemble if models are given (as paths, or as an ensemble object: `has_ensemble`)."""
        if self.variant != "robot_gated":
            return ""
        if self.uncertainty_source != "auto":
            return self.uncertainty_source
        return "ensemble" if has_ensemble or len(self.ensemble_models) >= 2 else "chunk"
