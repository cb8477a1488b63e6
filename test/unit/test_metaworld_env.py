"""Meta-World tasks behind core/sim/metaworld_env.py: discovery, seeding, checked actions, exact
state copies, scripted experts. Skipped where metaworld is not installed (pip install metaworld==3.1.1)."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("metaworld")

from bc_policy_node.core.sim import metaworld_env as mwe  # noqa: E402
from bc_policy_node.core.sim.metaworld_env import (  # noqa: E402
    MetaWorldEnv, MetaWorldState, UnknownTaskError, available_tasks)

ROOT = Path(__file__).resolve().parents[2]
MT10 = ["reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
        "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3"]


@pytest.fixture(scope="module")
def push():
    return MetaWorldEnv("push-v3")


def _random_actions(n, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, size=(n, 4)).astype(np.float32)


# ---------------------------------------------------------------- discovery

def test_available_tasks_cover_mt10_and_more():
    tasks = available_tasks()
    assert set(MT10) <= set(tasks)
    assert len(tasks) > 40
    assert tasks == sorted(set(tasks))


def test_discovered_policies_agree_with_metaworlds_own_map():
    """metaworld ships ENV_POLICY_MAP; the discovery must not need it but must agree with it."""
    import metaworld.policies as mp
    own = getattr(mp, "ENV_POLICY_MAP", None)
    if own is None:
        pytest.skip("this metaworld has no ENV_POLICY_MAP to compare with")
    _, matched = mwe._discover()
    assert {k: v for k, v in matched.items()} == {k: v for k, v in own.items() if k in matched}
    assert set(own) <= set(matched)


def test_matching_by_normalised_names_handles_irregular_names():
    """No table: words of the task or of the env class, equal or up to prefixes."""
    class SawyerPegInsertionSideEnvV3: pass          # noqa: E701
    class SawyerNutAssemblyEnvV3: pass               # noqa: E701
    class SawyerSweepIntoGoalEnvV3: pass             # noqa: E701
    class SawyerFutureThingEnvV3: pass               # noqa: E701
    class SawyerOrphanEnvV3: pass                    # noqa: E701
    class SawyerPegInsertionSideV3Policy: pass       # noqa: E701
    class SawyerAssemblyV3Policy: pass               # noqa: E701
    class SawyerSweepIntoV3Policy: pass              # noqa: E701
    class SawyerSweepV3Policy: pass                  # noqa: E701
    class SawyerFutureThingsV3Policy: pass           # noqa: E701
    class SawyerOrphanV2Policy: pass                 # noqa: E701
    registry = {"peg-insert-side-v3": SawyerPegInsertionSideEnvV3, "assembly-v3": SawyerNutAssemblyEnvV3,
                "sweep-into-v3": SawyerSweepIntoGoalEnvV3, "future-thing-v3": SawyerFutureThingEnvV3,
                "orphan-v3": SawyerOrphanEnvV3}
    policies = {c.__name__: c for c in (SawyerPegInsertionSideV3Policy, SawyerAssemblyV3Policy,
                                        SawyerSweepIntoV3Policy, SawyerSweepV3Policy,
                                        SawyerFutureThingsV3Policy, SawyerOrphanV2Policy)}
    got = mwe._match_policies(registry, policies)
    assert got == {"peg-insert-side-v3": SawyerPegInsertionSideV3Policy, "assembly-v3": SawyerAssemblyV3Policy,
                   "sweep-into-v3": SawyerSweepIntoV3Policy, "future-thing-v3": SawyerFutureThingsV3Policy}


def test_name_forms():
    assert MetaWorldEnv("metaworld/pick-place-v3").task == "pick-place-v3"
    assert mwe.resolve_task("pick-place") == "pick-place-v3"
    assert mwe.resolve_task("Pick_Place-v3") == "pick-place-v3"


def test_unknown_task_lists_close_matches():
    with pytest.raises(UnknownTaskError) as ei:
        MetaWorldEnv("pick-plce-v3")
    msg = str(ei.value)
    assert "Did you mean" in msg and "pick-place-v3" in msg.split("Available")[0]
    assert "window-close-v3" in msg  # the available list
    assert isinstance(ei.value, ValueError)


def test_module_without_metaworld_imports_and_says_how_to_install():
    code = ("import sys; sys.modules['metaworld'] = None\n"
            "import bc_policy_node.core.sim.metaworld_env as m\n"
            "try:\n    m.MetaWorldEnv('reach-v3')\nexcept m.MetaWorldUnavailable as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pip install metaworld" in out.stdout


# ---------------------------------------------------------------- seeding

def test_same_seed_same_actions_identical_obs():
    a, b = MetaWorldEnv("pick-place-v3"), MetaWorldEnv("pick-place-v3")
    b.reset(7)
    for act in _random_actions(10, 1):  # history before the reset must not matter
        b.step(act)
    oa, ob = a.reset(3), b.reset(3)
    assert np.array_equal(oa, ob)
    ta, tb = [oa], [ob]
    for act in _random_actions(40):
        ta.append(a.step(act)[0])
        tb.append(b.step(act)[0])
    assert np.array_equal(np.array(ta), np.array(tb))


@pytest.mark.parametrize("task", ["reach-v3", "push-v3", "pick-place-v3"])
def test_different_seeds_different_goals(task):
    env = MetaWorldEnv(task)
    goals = []
    for s in range(5):
        env.reset(s)
        goals.append(env.goal())
    assert len({tuple(g) for g in goals}) == 5
    assert all(np.any(g != 0) for g in goals)  # the goal is observable


def test_reset_rejects_bad_seed(push):
    for bad in (-1, 1.5, None, True):
        with pytest.raises(ValueError):
            push.reset(bad)


# ---------------------------------------------------------------- state copies

def _roll(env, expert, n):
    out, obs = [], env.observation()
    for _ in range(n):
        obs, ok, _ = env.step(expert(obs))
        out.append(np.r_[obs, ok, env.last_reward, env.steps])
    return np.array(out)


@pytest.mark.parametrize("task", ["push-v3", "pick-place-v3"])
def test_set_state_reproduces_the_continuation_exactly(task):
    env = MetaWorldEnv(task)
    expert = env.expert()
    obs = env.reset(2)
    for _ in range(20):
        obs, _, _ = env.step(expert(obs))
    state = env.get_state()
    assert isinstance(state, MetaWorldState)
    first = _roll(env, expert, 15)
    env.set_state(state)
    assert env.steps == 20
    again = _roll(env, expert, 15)
    assert np.array_equal(first, again)
    # from another episode (other seed, other goal) back to the copy; the copy is reusable
    env.reset(5)
    _roll(env, expert, 5)
    env.set_state(state)
    assert np.array_equal(first, _roll(env, expert, 15))


def test_state_of_another_task_is_refused(push):
    push.reset(0)
    other = MetaWorldEnv("reach-v3")
    other.reset(0)
    with pytest.raises(ValueError, match="reach-v3"):
        push.set_state(other.get_state())


# ---------------------------------------------------------------- experts

@pytest.mark.parametrize("task", ["reach-v3", "push-v3"])
def test_expert_succeeds(task):
    env = MetaWorldEnv(task)
    results = [env.rollout_expert(s) for s in range(5)]
    assert sum(r["success"] for r in results) >= 4, [(r["success"], r["steps"]) for r in results]
    r = results[0]
    assert r["obs"].shape == (r["steps"], 39) and r["act"].shape == (r["steps"], 4)
    assert np.all(np.abs(r["act"]) <= 1.0)


# ---------------------------------------------------------------- actions and accessors

@pytest.mark.parametrize("bad, words", [([np.nan, 0, 0, 0], "finite"), ([0, 0, np.inf, 0], "finite"),
                                        ([0.1, 0.2, 0.3], "shape"), ([[0, 0, 0, 0]], "shape"),
                                        (["a", 0, 0, 0], "numbers")])
def test_bad_actions_raise_and_do_not_advance(push, bad, words):
    obs = push.reset(1)
    push.step([0.1, 0.0, 0.0, 0.0])
    obs = push.observation()
    before = push.get_state()
    with pytest.raises(ValueError, match=words):
        push.step(bad)
    assert push.steps == 1 and np.array_equal(push.observation(), obs)
    assert np.array_equal(push.get_state().physics, before.physics)


def test_actions_are_clipped_to_the_action_space(push):
    push.reset(0)
    s = push.get_state()
    big = push.step([5.0, -3.0, 2.0, 9.0])[0]
    push.set_state(s)
    unit = push.step([1.0, -1.0, 1.0, 1.0])[0]
    assert np.array_equal(big, unit)


def test_step_before_reset_and_after_horizon():
    env = MetaWorldEnv("reach-v3")
    with pytest.raises(RuntimeError, match="reset"):
        env.step([0, 0, 0, 0])
    env.reset(0)
    assert env.horizon == 500
    done = False
    for _ in range(env.horizon):
        _, _, done = env.step([0, 0, 0, 0])
    assert done and env.done
    with pytest.raises(RuntimeError, match="reset"):
        env.step([0, 0, 0, 0])


def test_observation_parts():
    env = MetaWorldEnv("reach-v3")
    obs = env.reset(4)
    assert obs.shape == (39,)
    assert np.array_equal(env.ee_position(), obs[0:3])
    assert env.gripper_opening() == obs[3]
    objs = env.object_positions()
    assert objs.shape == (2, 3)
    assert np.array_equal(objs[0], obs[4:7]) and np.all(objs[1] == 0)  # reach has one object
    assert np.array_equal(env.goal(), obs[36:39])
    two = MetaWorldEnv("stick-pull-v3")
    o = two.reset(0)
    assert np.array_equal(two.object_positions()[1], o[11:14]) and np.any(o[11:14] != 0)
