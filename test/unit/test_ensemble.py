"""Chunk executors: closed-form checks against naive references, alignment, mode consistency."""
import math

import numpy as np
import pytest

from bc_policy_node.core.control.ensemble import (
    LatencyAwareExecutor, ModeConsistentEnsembler, NoChunkError, RecedingHorizon,
    TemporalEnsembler, make_executor)

K, A = 6, 3


def naive_ensemble(history, t, m):
    """Reference: every stored chunk covering t, weights exp(-m*i), i=0 the oldest."""
    preds = [c[t - s] for s, c in sorted(history, key=lambda p: p[0]) if s <= t < s + len(c)]
    if not preds:
        return None, 0
    w = np.exp(-m * np.arange(len(preds)))
    return (w[:, None] * np.array(preds)).sum(0) / w.sum(), len(preds)


@pytest.mark.parametrize("m", [0.0, 0.01, 0.5, -0.3])
@pytest.mark.parametrize("query_every", [1, 2, 5])
@pytest.mark.parametrize("max_delay", [0, 3])
def test_temporal_ensembling_matches_naive_reference(m, query_every, max_delay):
    rng = np.random.default_rng(7)
    ex = TemporalEnsembler(m=m, query_every=query_every)
    history, last_start, checked = [], -1, 0
    for t in range(80):
        if ex.needs_query(t):
            start = max(last_start + 1, t - int(rng.integers(0, max_delay + 1)))
            chunk = rng.normal(size=(K, A))
            assert ex.add(chunk, start)
            history.append((start, chunk))
            last_start = start
        got = ex.action(t)
        want, n = naive_ensemble(history, t, m)
        assert ex.last_contributors == n
        if n:
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
            checked += 1
    assert checked > 60
    if query_every == 1 and max_delay == 0:
        assert ex.last_contributors == K  # steady state: every tick sees K chunks


def test_temporal_ensembling_closed_form_weights():
    ex = TemporalEnsembler(m=0.5)
    for s, value in enumerate([1.0, 2.0, 4.0]):
        ex.add(np.full((K, A), value), s)
    w = np.exp(-0.5 * np.arange(3))
    expected = (w * [1.0, 2.0, 4.0]).sum() / w.sum()
    np.testing.assert_allclose(ex.action(2), np.full(A, expected))
    assert ex.last_contributors == 3
    assert expected < 7.0 / 3.0  # m > 0: the oldest chunk dominates


def test_m_zero_is_plain_mean():
    rng = np.random.default_rng(1)
    chunks = [rng.normal(size=(K, A)) for _ in range(4)]
    ex = TemporalEnsembler(m=0.0)
    for s, c in enumerate(chunks):
        ex.add(c, s)
    np.testing.assert_allclose(ex.action(3), np.mean([c[3 - s] for s, c in enumerate(chunks)], axis=0))
    np.testing.assert_allclose(ex.action(5), np.mean([c[5 - s] for s, c in enumerate(chunks)], axis=0))


def test_receding_horizon_replans_every_n_and_plays_the_chunk():
    n = 4
    ex = RecedingHorizon(n_execute=n)
    queries, rng = [], np.random.default_rng(2)
    for t in range(17):
        if ex.needs_query(t):
            chunk = rng.normal(size=(K, A))
            ex.add(chunk, t)
            queries.append((t, chunk))
        start, chunk = queries[-1]
        np.testing.assert_array_equal(ex.action(t), chunk[t - start])
        assert ex.last_contributors == 1
    assert [q[0] for q in queries] == [0, 4, 8, 12, 16]
    with pytest.raises(ValueError, match="exceeds the chunk length"):
        RecedingHorizon(n_execute=K + 1).add(np.zeros((K, A)), 0)


@pytest.mark.parametrize("mode", ["temporal_ensembling", "receding_horizon", "latency_aware",
                                  "mode_consistent"])
def test_latency_aware_alignment_skips_due_actions(mode):
    """Chunk from the observation of tick 10 arrives after tick 12 was executed."""
    ex = make_executor(mode)
    chunk0 = np.zeros((K, A))
    ex.add(chunk0, 8)
    for t in range(8, 13):
        ex.action(t)
    chunk = np.arange(K * A, dtype=float).reshape(K, A) * 1e-3  # close to chunk0: accepted
    assert ex.add(chunk, 10)
    if mode in ("receding_horizon", "latency_aware"):
        np.testing.assert_array_equal(ex.action(13), chunk[3])
    else:
        np.testing.assert_allclose(ex.action(13), naive_ensemble([(8, chunk0), (10, chunk)], 13, 0.01)[0])
    assert ex.skipped_actions == 3
    assert ex.last_delay_ticks == 3


def test_plan_runs_out_holds_last_action_and_errors():
    ex = TemporalEnsembler()
    with pytest.raises(NoChunkError):
        ex.action(0)
    chunk = np.random.default_rng(3).normal(size=(K, A))
    ex.add(chunk, 0)
    np.testing.assert_array_equal(ex.action(K + 3), chunk[-1])
    assert ex.last_contributors == 0 and ex.held_ticks == 1
    with pytest.raises(ValueError, match="strictly increase"):
        ex.add(chunk, 0)
    with pytest.raises(ValueError, match="shape"):
        ex.add(np.zeros((K + 1, A)), 5)
    ex.reset()
    with pytest.raises(NoChunkError):
        ex.action(0)
    ex.add(chunk, 0)  # after reset, ticks may start over
    np.testing.assert_allclose(ex.action(0), chunk[0])


def test_chunk_is_copied_on_add():
    ex = RecedingHorizon(n_execute=2)
    buf = np.zeros((K, A))
    ex.add(buf, 0)
    buf[:] = 99.0  # the caller reuses its output buffer
    np.testing.assert_array_equal(ex.action(1), np.zeros(A))


def test_nonfinite_chunk_is_refused():
    ex = TemporalEnsembler()
    good = np.zeros((K, A))
    ex.add(good, 0)
    bad = good.copy()
    bad[2, 1] = np.nan
    assert not ex.add(bad, 1)
    assert ex.rejected_nonfinite == 1
    assert np.all(np.isfinite(ex.action(3))) and ex.last_contributors == 1


def test_mode_consistent_rejects_outlier_that_plain_ensembling_averages():
    plan = np.zeros((K, A))
    outlier = np.ones((K, A))  # the other mode: RMS distance 1.0 rad
    te = TemporalEnsembler(m=0.0)
    mc = ModeConsistentEnsembler(m=0.0, threshold=0.3)
    for ex in (te, mc):
        ex.add(plan, 0)
        ex.action(0)
    assert te.add(outlier, 1)
    np.testing.assert_allclose(te.action(1), np.full(A, 0.5))  # blended: between the modes
    assert not mc.add(outlier, 1)
    assert mc.rejections == 1 and math.isclose(mc.last_distance, 1.0)
    np.testing.assert_allclose(mc.action(1), np.zeros(A))      # stays on the committed mode
    assert mc.last_contributors == 1
    # A chunk close to the plan is averaged in exactly like plain ensembling would.
    near = np.full((K, A), 0.1)
    assert mc.add(near, 2)
    np.testing.assert_allclose(mc.action(2), np.full(A, 0.05))
    # The committed plan covers ticks up to K (near starts at 2 -> ends at K+1); afterwards
    # the newest chunk (pending outlier is older than `near`, so it was dropped) carries on.
    np.testing.assert_allclose(mc.action(K + 1), np.full(A, 0.1))


def test_mode_consistent_adopts_newest_chunk_when_plan_runs_out():
    mc = ModeConsistentEnsembler(m=0.0, threshold=0.3)
    mc.add(np.zeros((K, A)), 0)
    for t in range(3):
        mc.action(t)
    other = np.ones((K, A))
    assert not mc.add(other, 3)
    for t in range(3, K):
        np.testing.assert_allclose(mc.action(t), np.zeros(A))
    np.testing.assert_allclose(mc.action(K), other[K - 3])      # committed plan ran out
    assert mc.adoptions == 2 and mc.rejections == 1              # first chunk + pending
    # A chunk that shares no future tick with the plan is adopted directly.
    assert mc.add(np.full((K, A), 5.0), 2 * K + 3)
    assert mc.adoptions == 3
    assert mc.stats()["rejections"] == 1


def test_mode_consistent_scale_measures_normalized_distance():
    mc = ModeConsistentEnsembler(m=0.0, threshold=0.5, scale=np.full(A, 10.0))
    mc.add(np.zeros((K, A)), 0)
    assert mc.add(np.ones((K, A)), 1)            # 1 rad = 0.1 std units < 0.5
    assert math.isclose(mc.last_distance, 0.1)


def test_latency_aware_executor_never_starves_with_slow_inference():
    """Async loop: a query answered `delay` ticks later; plain RH runs out, latency-aware not."""
    delay, n = 2, K - 1  # one request in flight: needs K >= 2 * delay

    def run(ex, ticks=200):
        rng, inflight = np.random.default_rng(4), None
        ex.starved_after_warmup = 0
        for t in range(ticks):
            if inflight is not None and t >= inflight[0] + delay:
                ex.add(inflight[1], inflight[0])
                inflight = None
            if inflight is None and ex.needs_query(t):
                inflight = (t, rng.normal(size=(K, A)))
                if t == 0:
                    ex.add(inflight[1], 0)
                    inflight = None
            ex.action(t)
            ex.starved_after_warmup += int(t >= 2 * K and ex.last_contributors == 0)
        return ex

    plain = run(RecedingHorizon(n_execute=n))
    aware = run(LatencyAwareExecutor(n_execute=n))
    assert plain.starved_after_warmup > 0
    assert aware.starved_after_warmup == 0
    # With the latency known up front it never starves, not even during the first chunk.
    assert run(LatencyAwareExecutor(n_execute=n, latency_ticks=delay)).held_ticks == 0
    assert aware.latency_estimate == delay
    assert aware.skipped_actions > 0


def test_factory_modes_and_errors():
    assert isinstance(make_executor("temporal_ensembling", m=0.1), TemporalEnsembler)
    assert isinstance(make_executor("receding_horizon", n_execute=3), RecedingHorizon)
    assert isinstance(make_executor("latency_aware", n_execute=3, latency_ticks=2), LatencyAwareExecutor)
    assert isinstance(make_executor("mode_consistent", threshold=0.2), ModeConsistentEnsembler)
    with pytest.raises(ValueError, match="unknown chunk execution mode"):
        make_executor("ensemble")
    with pytest.raises(ValueError, match="does not take"):
        make_executor("receding_horizon", m=0.1)
    with pytest.raises(ValueError):
        make_executor("temporal_ensembling", query_every=0)
