"""ArmSim and SimEnv: model discovery, errors, kinematics, commands, divergence, collisions."""
import numpy as np
import pytest

from bc_policy_node.core.sim.env import MODELS_DIR, SimEnv
from bc_policy_node.core.sim.sim import ArmSim, SimDiverged, SimError

PLANAR = MODELS_DIR / "planar3.xml"
ARM7 = MODELS_DIR / "arm7.xml"


@pytest.fixture(scope="module")
def planar():
    return ArmSim(PLANAR)


@pytest.fixture(scope="module")
def arm7():
    return ArmSim(ARM7)


# ---------------------------------------------------------------------- discovery
def test_joints_and_limits_come_from_the_model(planar, arm7):
    assert planar.joint_names == ("j1", "j2", "j3")
    assert arm7.joint_names == tuple(f"joint{i}" for i in range(1, 8))
    np.testing.assert_allclose(planar.lower, [-3.0, -2.6, -2.6])
    np.testing.assert_allclose(planar.upper, [3.0, 2.6, 2.6])
    assert arm7.lower[3] == pytest.approx(0.0698) and arm7.upper[5] == pytest.approx(3.7525)
    assert planar.planar and planar.task_dim == 2
    assert not arm7.planar and arm7.task_dim == 3
    # home keyframe is inside the limits and is where reset() puts the robot
    for s in (planar, arm7):
        s.reset()
        np.testing.assert_allclose(s.qpos, s.home_q)
        assert np.all(s.home_q > s.lower) and np.all(s.home_q < s.upper)


GENERIC = """
<mujoco>
  <compiler angle="radian"/>
  <worldbody>
    <body name="slider">
      <joint name="rail" type="slide" axis="1 0 0" range="-0.5 0.5"/>
      <geom type="box" size="0.05 0.05 0.05" mass="1"/>
      <body name="arm" pos="0 0 0.1">
        <joint name="pivot" type="hinge" axis="0 1 0" range="-1 1"/>
        <joint name="passive" type="hinge" axis="1 0 0"/>
        <geom type="capsule" fromto="0 0 0 0 0 0.3" size="0.02" mass="0.5"/>
        <site name="{site}" pos="0 0 0.3"/>
      </body>
    </body>
  </worldbody>
  <actuator>
    <position joint="rail" kp="500" kv="5" ctrlrange="-0.4 0.4"/>
    <position joint="pivot" kp="50" kv="1"/>
    <motor joint="passive" gear="1"/>
  </actuator>
</mujoco>
"""


def test_generic_model_discovers_only_position_servoed_joints(tmp_path):
    path = tmp_path / "generic.xml"
    path.write_text(GENERIC.format(site="ee"))
    sim = ArmSim(path)
    assert sim.joint_names == ("rail", "pivot")          # the motor-driven joint is not a robot joint
    np.testing.assert_allclose(sim.lower, [-0.5, -1.0])
    assert sim.ctrl_upper[0] == pytest.approx(0.4) and sim.ctrl_upper[1] == np.inf  # no ctrlrange
    applied = sim.set_command([9.0, 0.5])
    assert applied[0] == pytest.approx(0.4)              # clipped to the rail's ctrlrange
    assert not sim.planar
    assert len(sim.obstacle_geoms) == 0 and not sim.in_collision()


def test_missing_and_invalid_mjcf_name_the_file(tmp_path):
    missing = tmp_path / "nope.xml"
    with pytest.raises(SimError, match="nope.xml"):
        ArmSim(missing)
    bad = tmp_path / "broken.xml"
    bad.write_text("<mujoco><worldbody><body></mujoco>")
    with pytest.raises(SimError, match="broken.xml"):
        ArmSim(bad)
    no_site = tmp_path / "nosite.xml"
    no_site.write_text(GENERIC.format(site="tip"))
    with pytest.raises(SimError, match="end-effector site named 'ee'"):
        ArmSim(no_site)
    no_servo = tmp_path / "noservo.xml"
    no_servo.write_text("<mujoco><worldbody><body><joint type='hinge'/><geom size='.1'/>"
                        "<site name='ee'/></body></worldbody></mujoco>")
    with pytest.raises(SimError, match="position actuator"):
        ArmSim(no_servo)


# ---------------------------------------------------------------------- kinematics
def test_fk_matches_live_state_and_does_not_touch_it(planar, arm7):
    rng = np.random.default_rng(0)
    for s in (planar, arm7):
        q = rng.uniform(s.lower * 0.8, s.upper * 0.8)
        s.reset(q)
        live = s.ee_position()
        other = rng.uniform(s.lower * 0.8, s.upper * 0.8)
        far = s.fk(other)
        np.testing.assert_allclose(s.qpos, q)                 # private MjData, live state intact
        np.testing.assert_allclose(s.ee_position(), live)
        np.testing.assert_allclose(s.fk(q), live, atol=1e-12)
        assert np.linalg.norm(far - live) > 1e-3


def test_jacobian_matches_finite_differences(planar, arm7):
    rng = np.random.default_rng(1)
    for s in (planar, arm7):
        q = rng.uniform(s.lower * 0.7, s.upper * 0.7)
        p, J = s.fk_jacobian(q)
        h = 1e-6
        Jfd = np.stack([(s.fk(q + h * e) - s.fk(q - h * e)) / (2 * h) for e in np.eye(s.n)], axis=1)
        np.testing.assert_allclose(J, Jfd, atol=1e-6)
        s.reset(q)
        np.testing.assert_allclose(s.ee_jacobian(), J, atol=1e-10)


def test_ik_reaches_a_reachable_point(planar, arm7):
    for s, target in ((planar, [0.35, 0.3]), (arm7, [0.45, -0.2, 0.25])):
        q, err = s.solve_ik(target)
        assert err < 1e-4
        np.testing.assert_allclose(s.fk(q)[:s.task_dim], target, atol=1e-4)
        assert np.all(q >= s.lower) and np.all(q <= s.upper)


# ------------------------------------------------------------------- commands/physics
def test_servo_reaches_a_one_tick_target_within_the_tick(planar, arm7):
    for s in (planar, arm7):
        s.reset()
        for _ in range(25):                     # constant-velocity command, q + delta each tick
            q = s.qpos
            s.set_command(q + 0.01)
            s.step(10)
        moved = s.qpos - q
        assert np.all(np.abs(moved - 0.01) < 0.003), moved   # q_next ~= target (plan() assumption)


def test_command_validation(planar):
    planar.reset()
    with pytest.raises(ValueError, match="3 values"):
        planar.set_command([0.0, 0.0])
    with pytest.raises(ValueError, match="NaN"):
        planar.set_command([0.0, np.nan, 0.0])
    applied = planar.set_command([10.0, -10.0, 0.1])
    np.testing.assert_allclose(applied, [3.0, -2.6, 0.1])


def test_divergence_is_detected_and_reset_recovers(planar, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                    # MuJoCo logs its warning to ./MUJOCO_LOG.TXT
    planar.reset()
    planar.data.qvel[0] = 1e6                      # absurd speed
    with pytest.raises(SimDiverged, match="joint speed|unstable"):
        planar.step(1)
    assert planar.diverged
    with pytest.raises(SimDiverged):               # stays refused until reset
        planar.step(1)
    planar.reset()
    planar.data.qpos[1] = np.nan
    with pytest.raises(SimDiverged, match="non-finite|unstable"):
        planar.step(1)
    planar.reset()                                 # recovers: finite, quiet physics again
    planar.set_command(planar.home_q)
    planar.step(50)
    assert not planar.diverged
    assert np.all(np.isfinite(planar.qpos)) and np.max(np.abs(planar.qvel)) < 1e-3
    np.testing.assert_allclose(planar.qpos, planar.home_q, atol=1e-4)


def test_obstacle_contact_is_reported(planar):
    planar.reset()
    planar.set_obstacle(None)
    planar.step(5)
    assert not planar.in_collision()
    ee = planar.ee_position()
    planar.set_obstacle(ee[:2], 0.05)              # post right under the tool
    assert planar.in_collision()
    names = {n for pair in planar.obstacle_contacts() for n in pair}
    assert "tool" in names and "obstacle_geom" in names
    planar.set_obstacle(ee[:2] + np.array([0.3, 0.3]), 0.05)
    planar.step(1)
    assert not planar.in_collision()
    planar.set_obstacle(None)


# ---------------------------------------------------------------------------- env
def test_env_stamps_done_and_errors():
    env = SimEnv("planar3", "curved_reach")
    with pytest.raises(RuntimeError, match="before reset"):
        env.step([0.0, 0.0, 0.0])
    msgs = env.reset(seed=4)
    assert msgs["/joint_states"].stamp == 0.0 and list(msgs["/joint_states"].name) == ["j1", "j2", "j3"]
    for k in range(3):
        msgs = env.step(env.sim.qpos)
    assert msgs["/joint_states"].stamp == pytest.approx(3 * 0.02)
    assert msgs["/task_state"].step == 3 and env.task_state.stamp == pytest.approx(0.06)
    lo, hi = env.robot_contract_limits()
    np.testing.assert_allclose(lo, [-3.0, -2.6, -2.6])
    # hold still until timeout: episode ends, then step() is a no-op
    while not env.done:
        env.step(env.last_command)
    ts = env.task_state
    assert ts.status == "timeout" and ts.done and not ts.success and ts.step == env.horizon
    t_end = env.sim.time
    env.step(env.sim.qpos + 0.5)
    assert env.sim.time == t_end and env.task_state.step == env.horizon
    first = env.episode_id
    env.reset(seed=4)
    assert env.episode_id == first + 1 and not env.done


def test_env_reports_divergence_and_recovers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = SimEnv("planar3", "curved_reach")
    env.reset(seed=0)
    env.sim.data.qvel[:] = 1e7
    ts = env.step(env.sim.qpos)["/task_state"]
    assert ts.status == "diverged" and ts.done and ("unstable" in ts.reason or "speed" in ts.reason)
    ts = env.reset(seed=0)["/task_state"]
    assert ts.status == "running"
    env.step(env.sim.qpos)
    assert env.task_state.status == "running" and np.all(np.isfinite(env.sim.qpos))
