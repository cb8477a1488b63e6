"""Rolling timing statistics of a control loop (preallocated ring buffers; numpy only)."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np


class LoopStats:
    """Rolling timing statistics of the control loop (preallocated ring buffers).

    Per tick: period (s, between tick starts on the node clock), compute time (s), obs->command
    latency (s) and observation age (s); per query: inference time (s). `summary()` gives
    percentiles in microseconds over the last `window` ticks and the achieved rate since the
    previous summary.
    """

    def __init__(self, nominal_period: float, missed_factor: float, window: int = 10000,
                 count_missed: bool = True):
        self.nominal = float(nominal_period)
        self.missed_threshold = float(missed_factor) * self.nominal
        self.count_missed = bool(count_missed)
        self._n = int(window)
        self._buf = np.zeros((4, self._n))     # period, compute, latency, age
        self._inf = np.zeros(self._n)
        self.reset()

    def reset(self) -> None:
        self.ticks = 0
        self.missed = 0
        self.queries = 0
        self._i = 0
        self._inf_i = 0
        self._last_start: Optional[float] = None
        self._rate_mark: Tuple[int, Optional[float]] = (0, None)
        self.last_age = float("nan")
        self.last_latency = float("nan")

    def pause(self) -> None:
        """The loop stops (deactivate): the gap until it restarts is not a period."""
        self._last_start = None

    def record(self, start: float, compute: float, latency: float, age: float, inference: float) -> None:
        last, self._last_start = self._last_start, start
        i = self._i % self._n
        b = self._buf
        if last is not None:
            period = start - last
            b[0, i] = period
            if self.count_missed and period > self.missed_threshold:
                self.missed += 1
        else:
            b[0, i] = self.nominal
        b[1, i] = compute
        b[2, i] = latency
        b[3, i] = age
        self.last_age = age
        self.last_latency = latency
        self._i += 1
        self.ticks += 1
        if inference == inference:  # not NaN
            self._inf[self._inf_i % self._n] = inference
            self._inf_i += 1
            self.queries += 1

    def summary(self, now: float) -> Dict[str, float]:
        n = min(self._i, self._n)
        out = {"ticks": self.ticks, "missed_ticks": self.missed, "queries": self.queries}
        ticks0, t0 = self._rate_mark
        out["achieved_rate_hz"] = ((self.ticks - ticks0) / (now - t0)
                                   if t0 is not None and now > t0 else 0.0)
        self._rate_mark = (self.ticks, now)
        nan = float("nan")
        if n:
            b = self._buf[:, :n]
            per, comp, lat = np.percentile(b[:3], (50, 99), axis=1).T * 1e6
            jitter = np.percentile(np.abs(b[0] - self.nominal), 99) * 1e6
            out.update(period_p50_us=per[0], period_p99_us=per[1], tick_time_p50_us=comp[0],
                       tick_time_p99_us=comp[1], obs_to_cmd_latency_p50_us=lat[0],
                       obs_to_cmd_latency_p99_us=lat[1], period_jitter_p99_us=float(jitter))
        m = min(self._inf_i, self._n)
        if m:
            p = np.percentile(self._inf[:m], (50, 99)) * 1e6
            out.update(inference_time_p50_us=p[0], inference_time_p99_us=p[1])
        for key in ("period_p50_us", "period_p99_us", "tick_time_p50_us", "tick_time_p99_us",
                    "obs_to_cmd_latency_p50_us", "obs_to_cmd_latency_p99_us", "period_jitter_p99_us",
                    "inference_time_p50_us", "inference_time_p99_us"):
            out[key] = float(out.get(key, nan))
        out["observation_age_s"] = float(self.last_age)
        return out
