"""DAgger frame pairing: each observation frame waits for the expert's label and the policy's
answer, each with a wall-clock deadline, and a silent party is not waited for (no rclpy).

The dagger node owns the transport (the expert service call, the policy's command topic); this
module owns the rules, unit-tested without ROS:

- frames are acted on in order, the oldest first, once its label is in (or failed, or timed out)
  and the policy answered (or its deadline passed);
- the policy's commands are paired in order (FIFO): in lock-step the policy ticks once per
  observation stamp, so its n-th command answers the n-th frame;
- a party that misses `absent_after` deadlines in a row is *absent*: the policy is then not
  waited for at all and the expert at most `absent_wait_s`, until it answers again (the first
  answer of a returning policy is for a frame already acted on and is dropped).
"""
from __future__ import annotations

import collections
import math
import time
from typing import Callable, Deque, List, Optional

import numpy as np

from .arbiter import REASON_EXPERT_ERROR, REASON_EXPERT_TIMEOUT

PENDING = object()     # Frame.label while the expert has not answered
ANSWER_OK, ANSWER_LATE, ANSWER_ERROR = "ok", "late", "error"


class Frame:
    """One observation frame of the DAgger loop and what it waits for."""

    __slots__ = ("key", "stamp", "episode_id", "step", "task_seed", "mode", "done", "obs", "q",
                 "label", "label_chunk", "label_failure", "request", "expert_deadline", "policy",
                 "policy_deadline")

    def __init__(self, key, stamp: float, episode_id: int, step: int, task_seed: int, mode: int, done: bool,
                 obs: np.ndarray, q: np.ndarray):
        self.key, self.stamp, self.episode_id, self.step = key, stamp, episode_id, step
        self.task_seed, self.mode, self.done, self.obs, self.q = task_seed, mode, done, obs, q
        self.label = PENDING
        self.label_chunk: Optional[np.ndarray] = None   # (K, A) expert plan (label chunks)
        self.label_failure = ""
        self.request = None                  # the transport's handle of the expert query
        self.expert_deadline = math.inf
        self.policy: Optional[np.ndarray] = None
        self.policy_deadline = math.inf


class FramePairing:
    """Frames waiting for their expert label and policy answer (see the module docstring).

    `log(level, text)` receives the absence transitions ("info" / "warn"); `counts` counts
    policy_timeouts, policy_late, expert_timeouts, expert_errors, late_labels.
    """

    def __init__(self, absent_after: int, clock: Callable[[], float] = time.monotonic,
                 log: Callable[[str, str], None] = lambda level, text: None):
        self.absent_after = int(absent_after)
        self.clock, self.log = clock, log
        self.frames: Deque[Frame] = collections.deque()
        self.policy_fifo: Deque[np.ndarray] = collections.deque()
        self.policy_absent = self.expert_absent = False
        self.policy_misses = self.expert_misses = 0
        self.counts: collections.Counter = collections.Counter()

    # ------------------------------------------------------------------ intake
    def open(self, f: Frame, policy_wait_s: float, expert_wait_s: Optional[float], absent_wait_s: float) -> None:
        """Queue frame `f`. expert_wait_s: None = no expert query was made (the label, or its
        failure, is already set on `f`); else the deadline for the label (`absent_wait_s` at
        most while the expert is absent)."""
        now = self.clock()
        f.policy_deadline = now if self.policy_absent else now + policy_wait_s
        if expert_wait_s is not None:
            wait = min(expert_wait_s, absent_wait_s) if self.expert_absent else expert_wait_s
            f.expert_deadline = now + wait
        self.frames.append(f)

    def policy_answer(self, cmd: np.ndarray) -> bool:
        """The policy's next command; False when it was dropped (a returning policy's first
        answer is for a frame already acted on: pairing restarts from the next frame)."""
        if self.policy_absent:
            self.policy_absent, self.policy_misses = False, 0
            self.counts["policy_late"] += 1
            self.log("info", "policy answers again")
            return False
        self.policy_fifo.append(cmd)
        return True

    def expert_answer(self, f: Frame, plan: Optional[np.ndarray], error: str = "") -> str:
        """The expert's answer for frame `f`: its (K, A) plan (row 0 = the label) or None with
        `error`. Returns ANSWER_OK, ANSWER_LATE (after the frame's deadline: it only tells that
        the expert is alive) or ANSWER_ERROR (refused or non-finite: the frame is unlabelled)."""
        if f.label is not PENDING:
            self.counts["late_labels"] += 1
            if plan is not None and self.expert_absent:
                self._expert_back()
            return ANSWER_LATE
        if plan is not None and np.all(np.isfinite(plan)):
            f.label = np.asarray(plan[0], dtype=float).copy()
            f.label_chunk = plan if len(plan) > 1 else None
            self._expert_back()
            return ANSWER_OK
        f.label, f.label_failure = None, REASON_EXPERT_ERROR
        self.counts["expert_errors"] += 1
        return ANSWER_ERROR

    def _expert_back(self) -> None:
        if self.expert_absent:
            self.log("info", "expert answers again")
        self.expert_misses, self.expert_absent = 0, False

    # ------------------------------------------------------------------ release
    def pop_ready(self, on_expert_timeout: Callable[[Frame], None] = lambda f: None) -> List[Frame]:
        """The frames, oldest first, that may be acted on now; the rest wait (`waiting`)."""
        out: List[Frame] = []
        while self.frames:
            f = self.frames[0]
            now = self.clock()
            if f.policy is None and self.policy_fifo:
                f.policy = self.policy_fifo.popleft()
            policy_waiting = f.policy is None and now < f.policy_deadline
            if f.label is PENDING and now >= f.expert_deadline:
                self._expert_timed_out(f)
                on_expert_timeout(f)
            if f.label is PENDING or policy_waiting:
                break
            self.frames.popleft()
            if f.policy is None and not self.policy_absent:
                self.policy_misses += 1
                self.counts["policy_timeouts"] += 1
                if self.policy_misses >= self.absent_after:
                    self.policy_absent = True
                    self.policy_fifo.clear()
                    self.log("warn", f"policy silent for {self.policy_misses} frames: not waiting for it "
                                     "until it answers again")
            elif f.policy is not None:
                self.policy_misses = 0
            out.append(f)
        return out

    @property
    def waiting(self) -> bool:
        """A frame waits for an answer (the caller polls `pop_ready` until its deadlines)."""
        return bool(self.frames)

    def _expert_timed_out(self, f: Frame) -> None:
        f.label, f.label_failure = None, REASON_EXPERT_TIMEOUT
        self.counts["expert_timeouts"] += 1
        if not self.expert_absent:
            self.expert_misses += 1
            if self.expert_misses >= self.absent_after:
                self.expert_absent = True
                self.log("warn", f"expert silent for {self.expert_misses} frames: waiting at most one "
                                 "control period for it until it answers again")
