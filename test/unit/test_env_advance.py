"""SimEnv free-running additions (set_command/advance, set_task) used by the ROS bridge's free mode."""
import numpy as np
import pytest

from bc_policy_node.core.sim.disturbance import Pushes
from bc_policy_node.core.sim.env import SimEnv
from bc_policy_node.core.sim.tasks import TaskError


@pytest.mark.parametrize("task,pushes", [("curved_reach", None), ("bimodal", None),
                                         ("long_horizon", Pushes(magnitude=0.4, interval=30.0, count=3))])
def test_advance_in_pieces_is_bit_identical_to_step(task, pushes):
    """Also with pushes (core/sim/disturbance.py): the free-running bridge pushes at the same ticks."""
    a, b = SimEnv("planar3", task, disturbance=pushes), SimEnv("planar3", task, disturbance=pushes)
    expert = a.make_expert()
    msgs = a.reset(5)
    b.reset(5)
    while not a.done:
        act = expert.act_messages(msgs)
        msgs = a.step(act)
        b.set_command(act)
        ticks = b.advance(3) + b.advance(4) + b.advance(3)       # one control period, split
        assert ticks == 1 and b.substep_phase == 0
        assert np.array_equal(a.sim.qpos, b.sim.qpos) and np.array_equal(a.sim.qvel, b.sim.qvel)
        ta, tb = a.task_state, b.task_state
        assert (ta.step, ta.status, ta.phase) == (tb.step, tb.status, tb.phase)
    assert b.task_state.status == "success"
    assert a.pushes_applied == b.pushes_applied and len(a.pushes_applied) == (pushes.count if pushes else 0)


def test_after_the_episode_physics_runs_and_the_task_is_frozen():
    env = SimEnv("planar3", "curved_reach")
    env.reset(0, horizon=3)
    env.set_command(env.sim.qpos + 0.3)
    assert env.advance(35) == 3 and env.done and env.task_state.status == "timeout"
    t, q = env.sim.time, env.sim.qpos
    held = env.set_command(np.zeros(3))                 # ignored once done
    assert np.array_equal(held, env.last_command)
    assert env.advance(20) == 0 and env.task_state.step == 3
    assert env.sim.time == pytest.approx(t + 0.04) and not np.array_equal(env.sim.qpos, q)


def test_advance_reports_divergence_and_reset_recovers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                          # MuJoCo's warning log
    env = SimEnv("planar3", "curved_reach")
    env.reset(1)
    env.sim.data.qvel[:] = 1e7
    assert env.advance(4) == 1
    ts = env.task_state
    assert ts.status == "diverged" and ts.done and ts.step == 1 and ts.reason
    assert env.advance(10) == 0                          # nothing runs until reset
    env.reset(1)
    env.set_command(env.sim.qpos)
    assert env.advance(10) == 1 and env.task_state.status == "running"


def test_set_task_switches_or_leaves_the_env_unchanged():
    env = SimEnv("arm7", "curved_reach")
    with pytest.raises(TaskError, match="planar"):
        env.set_task("bimodal")                          # arm7 is not planar
    assert env.task_name == "curved_reach"
    env.reset(2)
    assert not env.done
    env.set_task("long_horizon", "short")
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(env.sim.qpos)
    ts = env.reset(2, "short")["/task_state"]
    assert ts.task == "long_horizon" and ts.variant == "short" and ts.num_phases == 4
    with pytest.raises(ValueError, match="NaN"):
        env.set_command([np.nan] * env.sim.n)
