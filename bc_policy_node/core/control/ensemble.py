"""Chunk execution strategies shared by the policy node and the in-process evaluator (numpy only).

A policy predicts a chunk of K future actions ``(K, A)`` from one observation. An *executor*
turns the stream of chunks into one action per control tick. Every executor has the same
interface::

    ex.reset()                      # new episode
    if ex.needs_query(t):           # time to run the policy?
        ex.add(chunk, t_obs)        # chunk[0] is the action for tick t_obs
    a = ex.action(t)                # (A,) action for control tick t
    ex.last_contributors            # how many chunks contributed to that action (0 = hold)

Latency-aware alignment is built in: ``add(chunk, t_obs)`` indexes the chunk from the tick of
the observation it was computed from, and ``action(t)`` reads the entry for the *current*
tick, so the ``t - t_obs`` actions that fell due while inference ran are skipped
(``skipped_actions`` counts them). Synchronous callers pass ``t_obs == t`` and skip nothing.
Chunk start ticks must strictly increase between resets, and ``action(t)`` is only defined
for ``t`` at or after the newest chunk's start.

When no chunk covers tick ``t`` (the plan ran out) the executor holds the last action of the
newest chunk — the same "arm holds" convention as the chunk targets at episode ends — and
reports ``last_contributors == 0``. Calling ``action`` before any chunk raises
``NoChunkError``. Non-finite chunks are refused (``add`` returns False, ``rejected_nonfinite``).

Callers with asynchronous inference must not issue a second query while one is in flight:
``needs_query`` stays True until the answer is ``add``-ed.
"""
from __future__ import annotations

import inspect
import math
from collections import deque
from typing import Dict, Optional, Tuple, Type

import numpy as np


class NoChunkError(LookupError):
    """``action()`` was called before any chunk was added (since the last reset)."""


class ChunkExecutor:
    """Shared bookkeeping for all executors: shape checks, hold, counters, alignment."""

    def __init__(self) -> None:
        self._shape: Optional[Tuple[int, int]] = None
        self.reset()

    # ----------------------------------------------------------------- interface
    def reset(self) -> None:
        """Forget all chunks and counters (start of an episode)."""
        self._newest: Optional[np.ndarray] = None     # newest committed chunk
        self._newest_start: Optional[int] = None
        self._last_offered: Optional[int] = None      # start tick of the last chunk given to add()
        self._last_action_tick: Optional[int] = None
        self.last_contributors = 0
        self.chunks_added = 0
        self.skipped_actions = 0
        self.held_ticks = 0
        self.rejected_nonfinite = 0
        self.last_delay_ticks = 0

    def add(self, chunk: np.ndarray, t_index: int) -> bool:
        """Offer a chunk whose first action is for tick ``t_index``; True if it was taken."""
        chunk = self._check_chunk(chunk, t_index)
        if chunk is None:
            return False
        return self._add(chunk, int(t_index))

    def action(self, t_index: int) -> np.ndarray:
        """The (A,) action for tick ``t_index`` (a fresh array)."""
        t = int(t_index)
        if self._newest is None:
            raise NoChunkError("no chunk has been added yet: call add() before action()")
        if t < self._newest_start:
            raise ValueError(f"tick {t} is before the newest chunk's observation tick "
                             f"{self._newest_start}")
        a, n = self._action(t)
        if n == 0:
            a = self._newest[-1].copy()
            self.held_ticks += 1
        self.last_contributors = n
        self._last_action_tick = t if self._last_action_tick is None else max(t, self._last_action_tick)
        return a

    def action_with_count(self, t_index: int) -> Tuple[np.ndarray, int]:
        """``(action(t), number of chunks that contributed)``."""
        a = self.action(t_index)
        return a, self.last_contributors

    def needs_query(self, t_index: int) -> bool:
        """True if the policy should be queried with the observation of tick ``t_index``."""
        raise NotImplementedError

    def stats(self) -> Dict[str, int]:
        """Counters as a plain dict (for logs and evaluation reports)."""
        return {k: int(getattr(self, k)) for k in self._counter_names()}

    # ---------------------------------------------------------------- internals
    def _counter_names(self):
        return ("chunks_added", "skipped_actions", "held_ticks", "rejected_nonfinite")

    def _check_chunk(self, chunk, t_index) -> Optional[np.ndarray]:
        chunk = np.array(chunk, dtype=np.float64)  # a copy: callers may reuse their buffer
        if chunk.ndim != 2 or chunk.shape[0] < 1 or chunk.shape[1] < 1:
            raise ValueError(f"chunk must be (K, A), got shape {chunk.shape}")
        if self._shape is None:
            self._on_shape(*chunk.shape)
            self._shape = chunk.shape
        elif chunk.shape != self._shape:
            raise ValueError(f"chunk shape {chunk.shape} differs from earlier chunks {self._shape}")
        if self._last_offered is not None and int(t_index) <= self._last_offered:
            raise ValueError(f"chunk start ticks must strictly increase: got {t_index} after "
                             f"{self._last_offered} (call reset() for a new episode)")
        self._last_offered = int(t_index)
        if not np.isfinite(chunk).all():
            self.rejected_nonfinite += 1
            return None
        self.last_delay_ticks = self._due(int(t_index))
        return chunk

    def _due(self, start: int) -> int:
        """How many actions of a chunk starting at `start` are already due (ticks executed)."""
        return 0 if self._last_action_tick is None else max(0, self._last_action_tick + 1 - start)

    def _commit(self, chunk: np.ndarray, start: int) -> None:
        self._newest, self._newest_start = chunk, start
        self.chunks_added += 1
        self.skipped_actions += min(self._due(start), chunk.shape[0])

    def _on_shape(self, k: int, a: int) -> None:
        pass

    def _add(self, chunk: np.ndarray, start: int) -> bool:
        raise NotImplementedError

    def _action(self, t: int) -> Tuple[np.ndarray, int]:
        raise NotImplementedError


class TemporalEnsembler(ChunkExecutor):
    """ACT temporal ensembling (Zhao et al. 2023) over every chunk that covers the tick.

    The action for tick t is ``sum_i w_i a_i(t) / sum_i w_i`` over the stored chunks that
    predict tick t, with ``w_i = exp(-m * i)`` and ``i = 0`` the *oldest* such chunk
    (m > 0 favours old predictions, m = 0 is the plain mean, m < 0 favours new ones).

    Implementation: per-tick accumulators (numerator, denominator, count) on a timeline
    buffer of 2K ticks starting at tick ``_base``. Because the i-th contributor to a tick
    always arrives after the first i-1, its weight is known on arrival
    (``exp(-m * count[tick])``), so ``add`` is a few contiguous slice updates, O(K*A), and
    ``action`` is O(A) — no loop over the history. When a chunk would run past the buffer
    end, the window slides forward (one O(K*A) copy every >= K ticks); ticks before the
    newest chunk's start are never read again, so nothing needed is lost.

    Args:
        m: ensembling temperature (ACT uses 0.01).
        query_every: query the policy every this many ticks (1 = every tick, as in ACT).
    """

    def __init__(self, m: float = 0.01, query_every: int = 1):
        if not math.isfinite(m):
            raise ValueError(f"m must be finite, got {m}")
        if int(query_every) < 1:
            raise ValueError(f"query_every must be >= 1, got {query_every}")
        self.m = float(m)
        self.query_every = int(query_every)
        super().__init__()

    def reset(self) -> None:
        super().reset()
        if self._shape is not None:
            self._clear_accumulators()

    def _on_shape(self, k: int, a: int) -> None:
        self._num = np.zeros((2 * k, a))
        self._den = np.zeros(2 * k)
        self._count = np.zeros(2 * k, dtype=np.int64)
        self._weights = np.exp(-self.m * np.arange(k + 1))
        self._base: Optional[int] = None

    def _clear_accumulators(self) -> None:
        self._num.fill(0.0)
        self._den.fill(0.0)
        self._count.fill(0)
        self._base = None

    def _slide(self, start: int) -> None:
        """Make `start` the first tick of the buffer, keeping the accumulators of later ticks."""
        shift, n = start - self._base, len(self._den)
        if shift >= n:
            self._num.fill(0.0)
            self._den.fill(0.0)
            self._count.fill(0)
        else:
            for buf in (self._num, self._den, self._count):
                buf[:n - shift] = buf[shift:]
                buf[n - shift:] = 0
        self._base = start

    def _accumulate(self, chunk: np.ndarray, start: int) -> None:
        k = chunk.shape[0]
        if self._base is None:
            self._base = start
        elif start - self._base + k > len(self._den):
            self._slide(start)
        sl = slice(start - self._base, start - self._base + k)
        w = self._weights[self._count[sl]]
        self._num[sl] += w[:, None] * chunk
        self._den[sl] += w
        self._count[sl] += 1

    def _index(self, t: int) -> int:
        """Buffer index of tick t, or -1 if nothing accumulated there."""
        if self._base is None:
            return -1
        i = t - self._base
        return i if 0 <= i < len(self._den) and self._count[i] > 0 else -1

    def _add(self, chunk: np.ndarray, start: int) -> bool:
        self._accumulate(chunk, start)
        self._commit(chunk, start)
        return True

    def _action(self, t: int) -> Tuple[np.ndarray, int]:
        i = self._index(t)
        if i < 0:
            return None, 0
        return self._num[i] / self._den[i], int(self._count[i])

    def planned(self, t_index: int) -> Optional[np.ndarray]:
        """The current ensembled action for a future tick (None if nothing covers it)."""
        if self._shape is None:
            return None
        a, n = TemporalEnsembler._action(self, int(t_index))
        return None if n == 0 else a

    def needs_query(self, t_index: int) -> bool:
        return self._last_offered is None or int(t_index) - self._last_offered >= self.query_every


class ModeConsistentEnsembler(TemporalEnsembler):
    """Temporal ensembling that refuses to average across modes of a multimodal policy.

    A new chunk is compared with the committed (ensembled) plan on the ticks both still cover
    that are not yet executed. The distance is the root-mean-square over those (tick, joint)
    entries of ``(chunk - plan) / scale``: with ``scale=None`` it is in raw action units
    (rad for joint positions); pass ``scale`` (A,) — e.g. the action std from the model's
    normalization stats — to measure it in normalized units. A chunk farther than
    ``threshold`` is rejected (``rejections``) and remembered as *pending*; it is not averaged
    in. When the committed plan runs out (no committed chunk covers the current tick, or a new
    chunk shares no future tick with it) the newest chunk is adopted as the new plan
    (``adoptions``).

    Args:
        m: temporal-ensembling temperature among accepted chunks.
        threshold: maximum RMS distance (see above) for a chunk to be averaged in.
        scale: optional (A,) per-joint divisor for the distance.
        query_every: query period in ticks.
    """

    def __init__(self, m: float = 0.01, threshold: float = 0.1, scale=None, query_every: int = 1):
        if not (math.isfinite(threshold) and threshold >= 0):
            raise ValueError(f"threshold must be finite and >= 0, got {threshold}")
        self.threshold = float(threshold)
        self.scale = None if scale is None else np.asarray(scale, dtype=np.float64)
        if self.scale is not None and not np.all(self.scale > 0):
            raise ValueError("scale must be > 0 for every joint")
        super().__init__(m=m, query_every=query_every)

    def reset(self) -> None:
        super().reset()
        self._pending: Optional[Tuple[np.ndarray, int]] = None
        self.rejections = 0
        self.adoptions = 0
        self.last_distance = float("nan")

    def _counter_names(self):
        return super()._counter_names() + ("rejections", "adoptions")

    def _adopt(self, chunk: np.ndarray, start: int) -> None:
        self._clear_accumulators()
        self._accumulate(chunk, start)
        self._commit(chunk, start)
        self._pending = None
        self.adoptions += 1

    def _add(self, chunk: np.ndarray, start: int) -> bool:
        k = chunk.shape[0]
        first = start if self._last_action_tick is None else max(start, self._last_action_tick + 1)
        end = -1 if self._newest is None else min(start + k - 1, self._newest_start + k - 1)
        if first > end:                      # nothing committed left to compare with
            self.last_distance = float("nan")
            self._adopt(chunk, start)
            return True
        sl = slice(first - self._base, end + 1 - self._base)
        plan = self._num[sl] / self._den[sl][:, None]
        diff = chunk[first - start:end + 1 - start] - plan
        if self.scale is not None:
            diff = diff / self.scale
        self.last_distance = float(np.sqrt(np.mean(diff * diff)))
        if self.last_distance > self.threshold:
            self.rejections += 1
            self._pending = (chunk, start)
            return False
        self._pending = None
        self._accumulate(chunk, start)
        self._commit(chunk, start)
        return True

    def _action(self, t: int) -> Tuple[np.ndarray, int]:
        a, n = super()._action(t)
        if n == 0 and self._pending is not None:
            chunk, start = self._pending
            if start <= t < start + chunk.shape[0]:
                self._adopt(chunk, start)
                a, n = super()._action(t)
        return a, n


class RecedingHorizon(ChunkExecutor):
    """Execute the first ``n_execute`` actions of a chunk, then re-plan from a fresh one.

    The chunk is aligned to its observation tick, so with an inference delay of L ticks its
    first L actions are skipped and ``needs_query`` fires ``n_execute`` ticks after the
    observation; choose K >= n_execute + L or the plan runs out and the arm holds.

    Args:
        n_execute: actions per chunk before re-planning; None = half the chunk (at least 1),
            fixed when the first chunk arrives. More than K raises ValueError.
    """

    def __init__(self, n_execute: Optional[int] = None):
        if n_execute is not None and int(n_execute) < 1:
            raise ValueError(f"n_execute must be >= 1, got {n_execute}")
        self._n_requested = None if n_execute is None else int(n_execute)
        self.n_execute = self._n_requested
        super().__init__()

    def _on_shape(self, k: int, a: int) -> None:
        if self._n_requested is None:
            self.n_execute = max(1, k // 2)
        elif self._n_requested > k:
            raise ValueError(f"n_execute={self._n_requested} exceeds the chunk length K={k}")

    def _add(self, chunk: np.ndarray, start: int) -> bool:
        self._commit(chunk, start)
        return True

    def _action(self, t: int) -> Tuple[np.ndarray, int]:
        off = t - self._newest_start
        if off < self._newest.shape[0]:
            return self._newest[off].copy(), 1
        return None, 0

    def needs_query(self, t_index: int) -> bool:
        return self._newest_start is None or int(t_index) - self._last_offered >= self.n_execute


class LatencyAwareExecutor(RecedingHorizon):
    """Receding horizon that schedules queries around the measured inference latency.

    Besides the regular re-plan every ``n_execute`` ticks, a query is requested as soon as the
    current plan has no more than ``latency + margin_ticks`` actions left, where ``latency`` is
    the larger of ``latency_ticks`` and the largest delay (observation tick -> arrival tick)
    among the last ``window`` chunks. The next chunk therefore arrives before the plan runs
    out, and its already-due actions are skipped by the usual alignment.

    Args:
        n_execute: regular re-plan period in ticks (None = half the chunk).
        latency_ticks: prior estimate of the inference delay in ticks.
        margin_ticks: extra ticks of slack.
        window: number of recent chunks whose delay is remembered.
    """

    def __init__(self, n_execute: Optional[int] = None, latency_ticks: int = 0, margin_ticks: int = 1,
                 window: int = 16):
        if int(latency_ticks) < 0 or int(margin_ticks) < 0 or int(window) < 1:
            raise ValueError("latency_ticks and margin_ticks must be >= 0, window >= 1")
        self.latency_ticks = int(latency_ticks)
        self.margin_ticks = int(margin_ticks)
        self._window = int(window)
        super().__init__(n_execute=n_execute)

    def reset(self) -> None:
        super().reset()
        self._delays: deque = deque(maxlen=self._window)

    @property
    def latency_estimate(self) -> int:
        """Ticks of inference delay the query schedule plans for."""
        return max([self.latency_ticks, *self._delays])

    def _add(self, chunk: np.ndarray, start: int) -> bool:
        self._delays.append(self.last_delay_ticks)
        return super()._add(chunk, start)

    def needs_query(self, t_index: int) -> bool:
        if super().needs_query(t_index):
            return True
        remaining = self._newest_start + self._newest.shape[0] - 1 - int(t_index)
        return remaining <= self.latency_estimate + self.margin_ticks


EXECUTORS: Dict[str, Type[ChunkExecutor]] = {
    "temporal_ensembling": TemporalEnsembler,
    "receding_horizon": RecedingHorizon,
    "latency_aware": LatencyAwareExecutor,
    "mode_consistent": ModeConsistentEnsembler,
}


def make_executor(mode: str, **params) -> ChunkExecutor:
    """Build an executor by name; unknown modes or parameters raise ValueError listing options."""
    try:
        cls = EXECUTORS[mode]
    except KeyError:
        raise ValueError(f"unknown chunk execution mode {mode!r}; choose from {sorted(EXECUTORS)}") from None
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"mode {mode!r} does not take {unknown}; it accepts {accepted}")
    return cls(**params)
