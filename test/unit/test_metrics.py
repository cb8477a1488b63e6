"""Evaluation statistics against textbook values and simulated coverage."""
import json
import math

import numpy as np
import pytest

from bc_policy_node.core.eval.metrics import (
    deviation_summary, growth_exponent, mean_ci, path_deviation, success_summary, summarize,
    t_quantile, wilson_interval)


def test_t_quantile_matches_tables():
    for df, q975 in ((1, 12.7062), (3, 3.18245), (4, 2.77645), (10, 2.22814), (30, 2.04227)):
        assert t_quantile(0.975, df) == pytest.approx(q975, abs=1e-4)
    assert t_quantile(0.025, 3) == pytest.approx(-3.18245, abs=1e-4)
    assert t_quantile(0.995, 5) == pytest.approx(4.03214, abs=1e-4)


def test_wilson_interval_known_values_and_edges():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))
    assert wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(8, 10, 0.99)[0] < lo
    with pytest.raises(ValueError):
        wilson_interval(11, 10)
    s = success_summary([True, False, True, True])
    assert s["n"] == 4 and s["successes"] == 3 and s["rate"] == 0.75 and s["ci_low"] < 0.75 < s["ci_high"]
    json.dumps(s)


def test_wilson_coverage_simulated():
    rng = np.random.default_rng(0)
    p, n = 0.1, 30
    ks = rng.binomial(n, p, size=4000)
    covered = np.mean([lo <= p <= hi for lo, hi in (wilson_interval(int(k), n) for k in ks)])
    assert 0.92 <= covered <= 0.99


def test_mean_ci_methods():
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    t = mean_ci(x)
    half = 2.776445 * math.sqrt(2.5) / math.sqrt(5)
    assert t["mean"] == 3.0 and t["ci_low"] == pytest.approx(3 - half, abs=1e-5)
    z = mean_ci(x, method="normal")
    assert z["ci_high"] - z["ci_low"] == pytest.approx(2 * 1.959964 * math.sqrt(0.5), abs=1e-5)
    b = mean_ci(x, method="bootstrap", n_boot=4000, seed=3)
    assert 1.0 < b["ci_low"] < 3.0 < b["ci_high"] < 5.0
    assert b == mean_ci(x, method="bootstrap", n_boot=4000, seed=3)   # seeded
    assert math.isnan(mean_ci([1.0])["ci_low"]) and mean_ci([1.0])["mean"] == 1.0
    with pytest.raises(ValueError):
        mean_ci(x, method="jackknife")
    json.dumps(t)


def test_mean_ci_t_coverage_small_samples():
    rng = np.random.default_rng(1)
    hits = [(lambda r: r["ci_low"] <= 0.0 <= r["ci_high"])(mean_ci(rng.normal(size=4)))
            for _ in range(3000)]
    assert 0.93 <= np.mean(hits) <= 0.97   # a z interval would cover only ~0.88 at n=4


def test_path_deviation_by_index_and_time():
    a = np.zeros((10, 2))
    t, d = path_deviation(a, a + [3.0, 4.0])
    np.testing.assert_allclose(d, 5.0)
    assert len(path_deviation(a, np.zeros((7, 2)))[1]) == 7
    # Same straight line sampled at different times -> no deviation on the common interval.
    ta, tb = np.linspace(0.0, 1.0, 11), np.linspace(0.2, 2.0, 7)
    t, d = path_deviation(np.c_[ta, 2 * ta], np.c_[tb, 2 * tb], ta, tb)
    np.testing.assert_allclose(t, ta[2:])
    np.testing.assert_allclose(d, 0.0, atol=1e-12)
    t, d = path_deviation(np.c_[ta, 2 * ta], np.c_[tb, 2 * tb + 1.0], ta, tb)
    np.testing.assert_allclose(d, 1.0)
    s = deviation_summary(d)
    assert s["n"] == 9 and s["max"] == pytest.approx(1.0) and s["final"] == pytest.approx(1.0)
    assert deviation_summary([])["n"] == 0
    with pytest.raises(ValueError):
        path_deviation(a, np.zeros((10, 3)))
    with pytest.raises(ValueError):
        path_deviation(a, a, np.arange(10.0), None)


def test_growth_exponent_exact_and_noisy():
    T = np.array([5, 10, 20, 40, 80], dtype=float)
    fit = growth_exponent(T, 0.3 * T ** 2)
    assert fit["exponent"] == pytest.approx(2.0) and fit["prefactor"] == pytest.approx(0.3)
    assert fit["r2"] == pytest.approx(1.0) and fit["stderr"] == pytest.approx(0.0, abs=1e-9)
    rng = np.random.default_rng(2)
    TT = np.repeat(T, 20)
    err = 0.3 * TT ** 1.5 * np.exp(rng.normal(scale=0.3, size=TT.size))
    err[0] = 0.0                                       # cannot be logged: dropped, counted
    fit = growth_exponent(TT, err)
    assert fit["n_dropped"] == 1 and fit["n"] == TT.size - 1
    assert fit["ci_low"] < 1.5 < fit["ci_high"] and fit["ci_high"] - fit["ci_low"] < 0.3
    assert not (fit["ci_low"] < 2.0 < fit["ci_high"])   # distinguishes 1.5 from quadratic
    two = growth_exponent([1, 2], [1, 4])
    assert two["exponent"] == pytest.approx(2.0) and math.isnan(two["ci_low"])
    with pytest.raises(ValueError, match="two distinct"):
        growth_exponent([3, 3, 3], [1, 2, 3])
    json.dumps(fit)


def test_summarize():
    s = summarize([1.0, 2.0, 3.0, float("nan")])
    assert s["n"] == 3 and s["n_nonfinite"] == 1 and s["median"] == 2.0 and s["std"] == 1.0
    assert math.isnan(summarize([])["mean"])
