"""Evaluation statistics with honest uncertainty (numpy + stdlib only, no scipy).

Every helper returns plain Python floats/ints (JSON-ready dicts), so evaluation reports and
benchmark files can be written with ``json.dump`` directly.

- `wilson_interval`, `success_summary`: success rates with Wilson score intervals.
- `mean_ci`: confidence interval of a mean (Student t, normal, or percentile bootstrap).
- `path_deviation`, `deviation_summary`: distance between two trajectories over time.
- `growth_exponent`: fit ``error ~ c * T**alpha`` by log-log least squares, with a t-based CI
  on ``alpha`` (compounding-error studies: alpha ~ 2 for quadratic growth in the horizon).
- `summarize`: descriptive statistics of a sample.
"""
from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np


def normal_quantile(p: float) -> float:
    """Inverse standard normal CDF."""
    return NormalDist().inv_cdf(p)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (Lentz's method)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                   -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbt = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(lbt) * _betacf(a, b, x) / a
    return 1.0 - math.exp(lbt) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """CDF of Student's t distribution with `df` degrees of freedom."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Inverse CDF of Student's t (bisection; accurate to ~1e-10)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p == 0.5:
        return 0.0
    lo, hi = -1.0, 1.0
    while t_cdf(lo, df) > p:
        lo *= 2.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, abs(mid)):
            break
    return 0.5 * (lo + hi)


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> Tuple[float, float]:
    """Wilson score interval for a binomial proportion; ``(0, 1)`` when ``n == 0``."""
    _check_confidence(confidence)
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    z = normal_quantile(0.5 + confidence / 2.0)
    p = successes / n
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, center - half)
    hi = 1.0 if successes == n else min(1.0, center + half)
    return lo, hi


def success_summary(outcomes: Sequence[bool], confidence: float = 0.95) -> Dict[str, Any]:
    """``{n, successes, rate, ci_low, ci_high, confidence}`` for a list of episode outcomes."""
    arr = np.asarray(outcomes, dtype=bool).reshape(-1)
    n, k = int(arr.size), int(arr.sum())
    lo, hi = wilson_interval(k, n, confidence)
    return {"n": n, "successes": k, "rate": (k / n) if n else float("nan"),
            "ci_low": lo, "ci_high": hi, "confidence": confidence}


def mean_ci(values: Sequence[float], confidence: float = 0.95, method: str = "t",
            n_boot: int = 2000, seed: Optional[int] = 0) -> Dict[str, Any]:
    """Mean with a confidence interval.

    method: ``"t"`` (Student t, the default), ``"normal"`` (z interval) or ``"bootstrap"``
    (percentile bootstrap with `n_boot` resamples, seeded). The interval is NaN for fewer than
    two values. Returns ``{n, mean, std, ci_low, ci_high, confidence, method}``.
    """
    _check_confidence(confidence)
    if method not in ("t", "normal", "bootstrap"):
        raise ValueError(f"method must be 't', 'normal' or 'bootstrap', got {method!r}")
    x = np.asarray(values, dtype=float).reshape(-1)
    n = int(x.size)
    out = {"n": n, "mean": float(x.mean()) if n else float("nan"),
           "std": float(x.std(ddof=1)) if n > 1 else float("nan"),
           "ci_low": float("nan"), "ci_high": float("nan"), "confidence": confidence, "method": method}
    if n < 2:
        return out
    if method == "bootstrap":
        rng = np.random.default_rng(seed)
        means = x[rng.integers(0, n, size=(int(n_boot), n))].mean(axis=1)
        alpha = (1.0 - confidence) / 2.0
        out["ci_low"], out["ci_high"] = (float(v) for v in np.quantile(means, [alpha, 1.0 - alpha]))
        return out
    q = 0.5 + confidence / 2.0
    crit = t_quantile(q, n - 1) if method == "t" else normal_quantile(q)
    half = crit * out["std"] / math.sqrt(n)
    out["ci_low"], out["ci_high"] = out["mean"] - half, out["mean"] + half
    return out


def path_deviation(a, b, t_a=None, t_b=None) -> Tuple[np.ndarray, np.ndarray]:
    """Euclidean distance between two trajectories over time.

    `a` (Na, d) and `b` (Nb, d) (1-D inputs are treated as d = 1). With sample times `t_a` and
    `t_b` (increasing, seconds) `b` is linearly interpolated onto the times of `a` inside the
    interval both cover; without times the samples are compared index by index over the shorter
    length. Returns ``(times, deviation)``, both (N,).
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    a = a[:, None] if a.ndim == 1 else a
    b = b[:, None] if b.ndim == 1 else b
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"trajectories must be (N, d) with equal d, got {a.shape} and {b.shape}")
    if (t_a is None) != (t_b is None):
        raise ValueError("give both t_a and t_b, or neither")
    if t_a is None:
        n = min(len(a), len(b))
        return np.arange(n, dtype=float), np.linalg.norm(a[:n] - b[:n], axis=1)
    t_a = np.asarray(t_a, dtype=float)
    t_b = np.asarray(t_b, dtype=float)
    if t_a.shape != (len(a),) or t_b.shape != (len(b),):
        raise ValueError("t_a/t_b must have one time per sample")
    if np.any(np.diff(t_a) <= 0) or np.any(np.diff(t_b) <= 0):
        raise ValueError("sample times must be strictly increasing")
    keep = (t_a >= t_b[0]) & (t_a <= t_b[-1])
    t = t_a[keep]
    b_on_a = np.stack([np.interp(t, t_b, b[:, j]) for j in range(b.shape[1])], axis=1)
    return t, np.linalg.norm(a[keep] - b_on_a, axis=1)


def time_deviation_matrix(paths: Sequence[np.ndarray], ref: Sequence[np.ndarray],
                          horizon: Optional[int] = None) -> np.ndarray:
    """(n, T) |paths[i][t] - ref[i][t]| with both padded by their last sample up to T
    (= horizon, default the longest path)."""
    T = horizon or max(max(len(p) for p in paths), max(len(r) for r in ref))
    out = np.empty((len(paths), T))
    for i, (p, r) in enumerate(zip(paths, ref)):
        out[i] = np.linalg.norm(pad_last(p, T) - pad_last(r, T), axis=1)
    return out


def path_distance_matrix(paths: Sequence[np.ndarray], ref: Sequence[np.ndarray],
                         horizon: Optional[int] = None) -> np.ndarray:
    """(n, T) distance from paths[i][t] to the nearest sample of ref[i] (timing-free: how far the
    policy is from anywhere on the expert's path); paths padded by their last sample up to T."""
    T = horizon or max(len(p) for p in paths)
    out = np.empty((len(paths), T))
    for i, (p, r) in enumerate(zip(paths, ref)):
        p = pad_last(p, T)
        r = np.asarray(r, dtype=float)
        d2 = ((p[:, None, :] - r[None, :, :]) ** 2).sum(-1)
        out[i] = np.sqrt(d2.min(axis=1))
    return out


def pad_last(x: np.ndarray, T: int) -> np.ndarray:
    """First T rows of x, repeating the last row if x is shorter."""
    x = np.asarray(x, dtype=float)
    if len(x) >= T:
        return x[:T]
    return np.concatenate([x, np.repeat(x[-1:], T - len(x), axis=0)])


def deviation_summary(deviation: Sequence[float]) -> Dict[str, Any]:
    """``{n, mean, rms, max, final}`` of a deviation series (NaN when empty)."""
    d = np.asarray(deviation, dtype=float).reshape(-1)
    if d.size == 0:
        return {"n": 0, "mean": float("nan"), "rms": float("nan"), "max": float("nan"), "final": float("nan")}
    return {"n": int(d.size), "mean": float(d.mean()), "rms": float(np.sqrt(np.mean(d * d))),
            "max": float(d.max()), "final": float(d[-1])}


def growth_exponent(horizons: Sequence[float], errors: Sequence[float],
                    confidence: float = 0.95) -> Dict[str, Any]:
    """Fit ``error = c * T**alpha`` by least squares on ``log error = alpha log T + log c``.

    Repeated horizons (several episodes per T) are fine. Pairs with non-positive or
    non-finite T or error cannot be logged and are dropped (counted in ``n_dropped``).
    The CI on alpha uses the OLS standard error and Student t with n - 2 degrees of freedom
    (NaN with only two points). Returns ``{exponent, ci_low, ci_high, stderr, intercept,
    prefactor, r2, n, n_dropped, confidence}``.
    """
    _check_confidence(confidence)
    T = np.asarray(horizons, dtype=float).reshape(-1)
    e = np.asarray(errors, dtype=float).reshape(-1)
    if T.shape != e.shape:
        raise ValueError(f"horizons and errors differ in length: {T.shape} vs {e.shape}")
    ok = np.isfinite(T) & np.isfinite(e) & (T > 0) & (e > 0)
    x, y = np.log(T[ok]), np.log(e[ok])
    n = int(x.size)
    if n < 2 or np.ptp(x) == 0:
        raise ValueError(f"need at least two distinct positive horizons with positive errors (have {n})")
    xm, ym = x.mean(), y.mean()
    sxx = float(np.sum((x - xm) ** 2))
    slope = float(np.sum((x - xm) * (y - ym)) / sxx)
    intercept = float(ym - slope * xm)
    resid = y - (intercept + slope * x)
    ss_tot = float(np.sum((y - ym) ** 2))
    r2 = 1.0 - float(resid @ resid) / ss_tot if ss_tot > 0 else 1.0
    out = {"exponent": slope, "ci_low": float("nan"), "ci_high": float("nan"),
           "stderr": float("nan"), "intercept": intercept, "prefactor": math.exp(intercept),
           "r2": r2, "n": n, "n_dropped": int((~ok).sum()), "confidence": confidence}
    if n > 2:
        se = math.sqrt(float(resid @ resid) / (n - 2) / sxx)
        half = t_quantile(0.5 + confidence / 2.0, n - 2) * se
        out.update(stderr=se, ci_low=slope - half, ci_high=slope + half)
    return out


def summarize(values: Sequence[float]) -> Dict[str, Any]:
    """``{n, mean, std, median, min, max, p05, p95}`` of the finite values (+ ``n_nonfinite``)."""
    x = np.asarray(values, dtype=float).reshape(-1)
    fin = x[np.isfinite(x)]
    out: Dict[str, Any] = {"n": int(fin.size), "n_nonfinite": int(x.size - fin.size)}
    if fin.size == 0:
        out.update({k: float("nan") for k in ("mean", "std", "median", "min", "max", "p05", "p95")})
        return out
    p05, p50, p95 = np.quantile(fin, [0.05, 0.5, 0.95])
    out.update(mean=float(fin.mean()), std=float(fin.std(ddof=1)) if fin.size > 1 else 0.0,
               median=float(p50), min=float(fin.min()), max=float(fin.max()),
               p05=float(p05), p95=float(p95))
    return out
