"""Seeded pushes (core/sim/disturbance.py) in the in-process env, the DAgger pipeline and the bridge's parameters."""
import json

import numpy as np
import pytest

from bc_policy_node.core.sim.disturbance import Pushes
from bc_policy_node.core.sim.env import SimEnv
from bc_policy_node.pipeline.dagger_eval import expert_references

PUSHES = Pushes(magnitude=0.4, interval=30.0, count=3)


def test_schedule_is_a_function_of_the_seed_within_the_horizon():
    a, b = PUSHES.schedule(3, 200, 3), PUSHES.schedule(3, 200, 3)
    assert a.keys() == b.keys() and all(np.array_equal(a[t], b[t]) for t in a)
    assert PUSHES.schedule(4, 200, 3).keys() != a.keys()
    assert 1 <= len(a) <= PUSHES.count
    assert all(PUSHES.start <= t < 200 for t in a)
    assert all(np.linalg.norm(d) == pytest.approx(PUSHES.magnitude) for d in a.values())
    assert PUSHES.schedule(3, 20, 3).keys() <= {t for t in a if t < 20}      # short horizon: fewer pushes
    assert Pushes(count=0).schedule(3, 200, 3) == {}


def test_spec_errors_are_clear():
    assert Pushes.from_spec(None) is None and Pushes.from_spec({}) is None
    assert Pushes.from_spec({"magnitude": 0.2}) == Pushes(magnitude=0.2)
    with pytest.raises(ValueError, match="unknown push settings.*amplitude"):
        Pushes.from_spec({"amplitude": 0.2})
    for bad in ({"magnitude": -1.0}, {"interval": 0.0}, {"count": -1}, {"start": 0}):
        with pytest.raises(ValueError, match="invalid push settings"):
            Pushes.from_spec(bad)


def _hold_episode(env, seed, ticks):
    """Command the current position every tick; joint positions after each tick."""
    env.reset(seed)
    qs = []
    for _ in range(ticks):
        env.step(env.sim.qpos)
        qs.append(env.sim.qpos)
    return np.array(qs)


def test_a_push_displaces_the_arm_and_holds_the_displaced_pose():
    calm, pushed = SimEnv("planar3", "curved_reach"), SimEnv("planar3", "curved_reach", disturbance=PUSHES)
    q0 = _hold_episode(calm, 5, 120)
    q1 = _hold_episode(pushed, 5, 120)
    sched = PUSHES.schedule(5, pushed.horizon, 3)
    assert pushed.pushes_applied == sorted(sched) and calm.pushes_applied == []
    jumps = np.linalg.norm(np.diff(np.vstack([pushed.task.start_q, q1]), axis=0), axis=1)
    for t in sched:                                   # the tick-t state carries the push (clipped into the limits)
        assert jumps[t - 1] == pytest.approx(PUSHES.magnitude, rel=0.15)
    first = min(sched)
    np.testing.assert_array_equal(q0[:first - 1], q1[:first - 1])     # nothing changes before the first push
    quiet = [i for i in range(len(jumps)) if i + 1 not in sched]
    assert jumps[quiet].max() < 0.05                                   # and the arm stays where it was pushed


def test_the_displaced_pose_becomes_the_held_target():
    env = SimEnv("planar3", "curved_reach", disturbance=Pushes(magnitude=0.4, count=1))
    env.reset(5)
    target = env.sim.qpos
    for _ in range(env.horizon):                                      # bounded: the push is scheduled in it
        if env.pushes_applied:
            break
        env.step(target)
    else:
        pytest.fail("no push applied within the episode's horizon")
    np.testing.assert_allclose(env.last_command, env.sim.qpos)       # the servo does not snap back by itself
    assert np.linalg.norm(env.sim.qpos - target) > 0.3
    for _ in range(30):                                               # a controller brings it back
        env.step(target)
    assert np.linalg.norm(env.sim.qpos - target) < 0.02


def test_expert_references_are_cached_per_disturbance(tmp_path):
    cache = tmp_path / "refs.npz"
    calm = expert_references("planar3", "curved_reach", [1, 2], cache)
    pushed = expert_references("planar3", "curved_reach", [1, 2], cache, disturbance=PUSHES)
    assert any(len(calm[s].ee) != len(pushed[s].ee) or not np.allclose(calm[s].ee, pushed[s].ee) for s in (1, 2))
    again = expert_references("planar3", "curved_reach", [1, 2], cache, disturbance=PUSHES.to_dict())
    assert all(np.array_equal(again[s].ee, pushed[s].ee) for s in (1, 2))
    z = np.load(cache)
    assert json.loads(str(z["disturbance"])) == PUSHES.to_dict()       # the cache now holds the pushed paths


def test_bridge_parameters_build_the_pushes():
    from bc_policy_node.core.sim.bridge_params import BridgeParams

    assert BridgeParams().pushes() is None                                   # off by default
    assert BridgeParams(push_magnitude=0.4, push_interval_ticks=30.0, push_count=3).pushes() == PUSHES
    for bad in ({"push_magnitude": -0.1}, {"push_magnitude": 0.4, "push_count": -2},
                {"push_magnitude": float("nan")}):
        with pytest.raises(ValueError, match="push_magnitude/push_interval_ticks/push_count"):
            BridgeParams(**bad)


def test_command_line_pushes_reach_the_evaluation(capsys, monkeypatch):
    """`bc-policy eval --push-magnitude ...`: the parsed flags become the evaluation's pushes
    (calm without them); the summary says so."""
    from bc_policy_node.cli import build_parser
    from bc_policy_node.core.sim.env import MODELS_DIR
    from bc_policy_node.pipeline import evaluate

    model = str(MODELS_DIR / "policies" / "planar3_curved_reach.onnx")
    ap = build_parser()
    calm = ap.parse_args(["eval", model, "--episodes", "2"])
    assert Pushes.from_cli(calm) is None
    args = ap.parse_args(["eval", model, "--episodes", "2", "--push-magnitude", "0.4", "--push-interval", "30",
                          "--push-count", "3"])
    assert Pushes.from_cli(args) == PUSHES
    assert Pushes.from_cli(ap.parse_args(["dagger", "--push-magnitude", "0.4", "--push-interval", "30"])) == PUSHES
    seen = []
    real = evaluate.evaluate
    monkeypatch.setattr(evaluate, "evaluate", lambda *a, **kw: seen.append(real(*a, **kw)) or seen[-1])
    assert evaluate.main(args) == 0
    assert "pushes 0.4 rad" in capsys.readouterr().out
    results = seen[0]["results"] + seen[0]["experts"]
    assert all(r.meta["pushes"] == [t for t in sorted(PUSHES.schedule(r.seed, 200, 3)) if t < r.steps]
               for r in results) and any(r.meta["pushes"] for r in results)


def test_a_ros_dagger_folder_resumes_only_with_its_own_pushes(tmp_path):
    """Rounds made calm and rounds made pushed never mix: the loop refuses the folder before
    it starts anything."""
    from bc_policy_node.pipeline.dagger.loop import run_identity
    from bc_policy_node.pipeline.dagger.ros import RosCollector, ros_config, run_dagger_ros
    from bc_policy_node.pipeline.dagger.store import check_round_config

    calm = ros_config(robot="planar3", task="curved_reach", out_dir=str(tmp_path), progress=False)
    check_round_config(tmp_path, run_identity(calm, RosCollector(calm)))     # as a calm run leaves it
    with pytest.raises(ValueError, match=r"other settings \(\['disturbance'\]\)"):
        run_dagger_ros(calm.replace(disturbance=PUSHES))
    assert not (tmp_path / "round_00").exists()
