"""Safety filter: exact invariants under random abuse, holds, counters, command validation."""
import numpy as np
import pytest

from bc_policy_node.core.contract import Contract
from bc_policy_node.core.control.safety import (
    EVENT_JOINT_LIMIT, EVENT_NO_REFERENCE, EVENT_NONFINITE, EVENT_SHAPE, EVENT_STALE,
    EVENT_STEP_LIMIT, CommandValidator, SafetyFilter, SafetyLimits, validate_command)


def make_contract():
    return Contract.from_dict({
        "contract_version": 1, "name": "t", "robot": "planar3", "task": "reach",
        "control_rate_hz": 50.0, "chunk_length": 4, "stale_after_s": 0.1,
        "observation": [{"name": "q", "topic": "/joint_states", "type": "sensor_msgs/msg/JointState",
                         "field": "position", "joints": ["j1", "j2", "j3"]}],
        "action": {"kind": "joint_position", "topic": "/forward_position_controller/commands",
                   "type": "std_msgs/msg/Float64MultiArray", "joints": ["j1", "j2", "j3"],
                   "lower": [-3.0, -2.6, -2.6], "upper": [3.0, 2.6, 2.6], "max_step": 0.08}})


def assert_safe(cmd, ref, lim):
    lo, hi, st = (np.asarray(v) for v in (lim.lower, lim.upper, lim.max_step))
    assert cmd.shape == lo.shape and np.all(np.isfinite(cmd))
    assert np.all(cmd >= lo) and np.all(cmd <= hi), (cmd, lo, hi)
    assert np.all(np.abs(cmd - ref) <= st), (cmd, ref, st)


def random_proposal(rng, n, ref):
    kind = rng.integers(0, 10)
    if kind == 0:
        p = rng.normal(size=n) * 100.0
        p[rng.integers(0, n)] = rng.choice([np.nan, np.inf, -np.inf])
        return p
    if kind == 1:
        return rng.normal(size=n + rng.choice([-1, 1]))
    if kind == 2:
        return ref + rng.uniform(-1e-3, 1e-3, size=n)          # tiny steps near the reference
    return ref + rng.normal(size=n) * rng.choice([1e-3, 0.05, 1.0, 1e3])


def test_commands_never_violate_limits_or_step_bound_random_inputs():
    rng = np.random.default_rng(0)
    for trial in range(300):
        n = int(rng.integers(1, 8))
        lower = rng.uniform(-3, 0, size=n)
        upper = lower + rng.uniform(1e-3, 4, size=n)
        lim = SafetyLimits(tuple(lower), tuple(upper), tuple(rng.uniform(1e-4, 0.3, size=n)), 0.1)
        f = SafetyFilter(lim)
        current = rng.uniform(-6, 6, size=n)  # may start outside the limits
        ref = np.clip(current, lower, upper)
        for step in range(60):
            now = step * 0.02
            stamp = now - (rng.uniform(0, 0.3) if rng.random() < 0.1 else rng.uniform(0, 0.05))
            cmd, events = f.filter(random_proposal(rng, n, ref), now, stamp, current)
            assert_safe(cmd, ref, lim)
            ref = cmd
    assert f.ticks == 60 and f.counts[EVENT_STEP_LIMIT] > 0


def test_step_bound_is_exact_in_floating_point():
    # 0.1 + 0.2 = 0.30000000000000004, whose distance to 0.1 exceeds 0.2 by one ulp.
    f = SafetyFilter(SafetyLimits((-1.0,), (5.0,), (0.2,)))
    cmd, events = f.filter([1.0], 0.0, 0.0, [0.1])
    assert abs(cmd[0] - 0.1) <= 0.2 and events == (EVENT_STEP_LIMIT,)


def test_hypothesis_property_if_available():
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=300, deadline=None)
    @hypothesis.given(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=3, max_size=3),
                      st.lists(st.floats(-10, 10), min_size=3, max_size=3))
    def check(proposed, current):
        lim = SafetyLimits.from_contract(make_contract())
        f = SafetyFilter(lim)
        ref = np.clip(current, lim.lower, lim.upper)
        cmd, _ = f.filter(proposed, 1.0, 1.0, current)
        assert_safe(cmd, ref, lim)
        cmd2, _ = f.filter(np.asarray(proposed) * -1.0, 1.02, 1.02, current)
        assert_safe(cmd2, cmd, lim)

    check()


def test_stale_observation_holds_last_command_and_counts():
    f = SafetyFilter(make_contract())
    first, ev = f.filter([0.05, 0.0, 0.0], now=1.0, obs_stamp=0.99, current_position=[0.0, 0.0, 0.0])
    assert ev == ()
    np.testing.assert_array_equal(first, [0.05, 0.0, 0.0])
    held, ev = f.filter([0.07, 0.0, 0.0], now=1.5, obs_stamp=1.0)   # 0.5 s old > 0.1 s
    assert ev == (EVENT_STALE,)
    np.testing.assert_array_equal(held, first)
    held, ev = f.filter([0.07, 0.0, 0.0], now=1.5, obs_stamp=None)
    assert ev == (EVENT_STALE,) and f.counts[EVENT_STALE] == 2 and f.holds == 2


@pytest.mark.parametrize("bad, kind", [([np.nan, 0.0, 0.0], EVENT_NONFINITE),
                                       ([0.0, np.inf, 0.0], EVENT_NONFINITE),
                                       ([0.0, 0.0], EVENT_SHAPE),
                                       ("abc", EVENT_SHAPE)])
def test_malformed_output_is_rejected_and_held(bad, kind):
    f = SafetyFilter(make_contract())
    good, _ = f.filter([0.01, 0.02, 0.03], 0.0, 0.0, [0.0, 0.0, 0.0])
    cmd, ev = f.filter(bad, 0.02, 0.02)
    assert ev == (kind,)
    np.testing.assert_array_equal(cmd, good)
    assert f.counts[kind] == 1 and f.stats()["holds"] == 1


def test_joint_limit_and_step_clamps():
    f = SafetyFilter(make_contract())
    cmd, ev = f.filter([2.99, 0.0, 0.0], 0.0, 0.0, [2.98, 0.0, 0.0])
    np.testing.assert_allclose(cmd, [2.99, 0.0, 0.0])
    cmd, ev = f.filter([9.0, 0.0, 0.0], 0.02, 0.02)           # beyond upper limit 3.0
    assert ev == (EVENT_JOINT_LIMIT,)
    np.testing.assert_allclose(cmd, [3.0, 0.0, 0.0])
    cmd, ev = f.filter([3.0, 1.0, -1.0], 0.04, 0.04)          # 1 rad jump, max 0.08/tick
    assert ev == (EVENT_STEP_LIMIT,)
    np.testing.assert_allclose(cmd, [3.0, 0.08, -0.08])
    assert f.counts[EVENT_JOINT_LIMIT] == 1 and f.counts[EVENT_STEP_LIMIT] == 1


def test_first_command_is_relative_to_clipped_current_position():
    f = SafetyFilter(make_contract())
    cmd, ev = f.filter([0.0, 0.0, 0.0], 0.0, 0.0, [3.5, 0.0, 0.0])   # robot outside its limits
    np.testing.assert_allclose(cmd, [3.0 - 0.08, 0.0, 0.0])
    assert ev == (EVENT_STEP_LIMIT,)


def test_no_reference_returns_none():
    f = SafetyFilter(make_contract())
    assert f.filter([0.0, 0.0, 0.0], 0.0, 0.0, None) == (None, (EVENT_NO_REFERENCE,))
    assert f.filter([0.0, 0.0, 0.0], 0.0, 0.0, [np.nan, 0, 0])[0] is None
    assert f.hold() is None
    f.filter([0.0, 0.0, 0.0], 0.0, 0.0, [0.0, 0.0, 0.0])
    f.reset()
    assert f.last_command is None


def test_limits_validation():
    with pytest.raises(ValueError):
        SafetyLimits((1.0,), (0.0,), (0.1,))
    with pytest.raises(ValueError):
        SafetyLimits((0.0,), (1.0,), (0.0,))
    with pytest.raises(ValueError):
        SafetyLimits((0.0, 0.0), (1.0,), (0.1,))
    lim = SafetyLimits.from_contract(make_contract())
    assert lim.max_step == (0.08, 0.08, 0.08) and lim.stale_after_s == 0.1


def test_validate_command():
    lo, hi = [-1.0, -1.0], [1.0, 1.0]
    cmd, reason = validate_command([0.5, -0.5], 2, lo, hi)
    np.testing.assert_array_equal(cmd, [0.5, -0.5])
    assert reason == ""
    cmd, reason = validate_command([0.5], 2, lo, hi)
    assert cmd is None and reason.startswith("wrong_length")
    cmd, reason = validate_command([0.5, float("nan")], 2, lo, hi)
    assert cmd is None and reason.startswith("nonfinite") and "[1]" in reason
    cmd, reason = validate_command([2.0, -0.5], 2, lo, hi)
    np.testing.assert_array_equal(cmd, [1.0, -0.5])
    assert reason.startswith("clamped") and "[0]" in reason
    assert validate_command(["x", 1], 2)[0] is None

    v = CommandValidator.from_contract(make_contract())
    v([0.0, 0.0, 0.0])
    v([9.0, 0.0, 0.0])
    v([0.0, 0.0])
    v([np.inf, 0.0, 0.0])
    assert v.counts == {"accepted": 1, "clamped": 1, "rejected": 2}
    assert v.last_reason.startswith("nonfinite")
