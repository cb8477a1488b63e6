"""Tasks + scripted experts: determinism, expert success, bimodality, decoders, contracts."""
import numpy as np
import pytest

from bc_policy_node.core.contract import Contract, ObservationAssembler
from bc_policy_node.core.sim.env import CONTRACTS_DIR, SimEnv, load_contract
from bc_policy_node.core.sim.tasks import TaskError

CASES = [("planar3", "curved_reach"), ("planar3", "bimodal"), ("planar3", "long_horizon"),
         ("arm7", "curved_reach")]


@pytest.fixture(scope="module")
def envs():
    return {case: SimEnv(*case) for case in CASES}


@pytest.mark.parametrize("case", CASES)
def test_same_seed_same_trajectory(envs, case):
    env = envs[case]
    expert = env.make_expert()
    a, ta = env.run_expert(11, expert, record=True)
    b, tb = env.run_expert(11, expert, record=True)
    for k in ("q", "ee", "act"):
        np.testing.assert_array_equal(ta[k], tb[k])
    assert a.status == b.status and a.step == b.step
    np.testing.assert_array_equal(a.goal, b.goal)
    c = env.reset(12)["/task_state"]
    assert not np.allclose(c.goal, a.goal) or not np.allclose(ta["q"][0], env.sim.qpos)


@pytest.mark.parametrize("case", CASES)
def test_expert_succeeds_on_a_batch_of_seeds(envs, case):
    env = envs[case]
    expert = env.make_expert()
    statuses = [env.run_expert(seed, expert)[0].status for seed in range(100, 120)]
    assert statuses.count("success") == 20, statuses


@pytest.mark.parametrize("case", CASES)
def test_horizons_and_task_state(envs, case):
    env = envs[case]
    ts = env.reset(0)["/task_state"]
    dim = 2 if case[0] == "planar3" else 3
    assert ts.goal.shape == (dim,) and ts.ee_position.shape == (dim,)
    if case[1] == "long_horizon":
        assert 500 <= env.horizon <= 700 and ts.num_phases == 6 and ts.waypoints.shape == (6 * dim,)
    else:
        assert 150 <= env.horizon <= 250 and ts.num_phases == 1 and ts.waypoints.size == 0
    assert (ts.obstacle.size == 3) == (case[1] == "bimodal")
    assert (ts.mode in (0, 1)) == (case[1] == "bimodal")


def test_curved_reach_path_is_not_a_straight_line(envs):
    env = envs[("planar3", "curved_reach")]
    devs = []
    for seed in range(5):
        _, tr = env.run_expert(seed, env.make_expert(), record=True)
        p0, p1 = tr["ee"][0], tr["ee"][-1]
        d = (p1 - p0) / np.linalg.norm(p1 - p0)
        rel = tr["ee"] - p0
        devs.append(np.max(np.abs(rel[:, 0] * d[1] - rel[:, 1] * d[0])))
    assert min(devs) > 0.1, devs       # > 10 cm away from the chord in every episode


def test_long_horizon_visits_every_waypoint_in_order(envs):
    env = envs[("planar3", "long_horizon")]
    expert = env.make_expert()
    msgs = env.reset(3)
    wps = msgs["/task_state"].waypoints.reshape(-1, 2)
    phases = []
    while not env.done:
        msgs = env.step(expert.act_messages(msgs))
        phases.append(msgs["/task_state"].phase)
    assert msgs["/task_state"].status == "success"
    assert sorted(set(phases)) == list(range(len(wps))) and np.all(np.diff(phases) >= 0)
    assert np.linalg.norm(msgs["/task_state"].ee_position - wps[-1]) < env.task.tolerance


# ---------------------------------------------------------------------------- bimodal
def _lateral(ts, ee):
    o, g = ts.obstacle[:2], ts.goal
    u = (g - o) / np.linalg.norm(g - o)
    return (ee - o) @ np.array([-u[1], u[0]])


def test_bimodal_modes_pass_on_opposite_sides_and_their_average_collides(envs):
    env = envs[("planar3", "bimodal")]
    expert = env.make_expert()
    modes = {env.reset(s)["/task_state"].mode for s in range(20)}
    assert modes == {0, 1}                                    # latent mode drawn from the seed
    for seed in range(5):
        runs = [env.run_expert(seed, expert, variant, record=True) for variant in ("mode0", "mode1")]
        (ts0, tr0), (ts1, tr1) = runs
        assert ts0.status == ts1.status == "success"
        np.testing.assert_array_equal(ts0.obstacle, ts1.obstacle)   # same scene, different side
        b0, b1 = _lateral(ts0, tr0["ee"]), _lateral(ts1, tr1["ee"])
        rho = ts0.obstacle[2]
        assert b0.max() > rho + 0.05 and b1.min() < -(rho + 0.05)
        # average of the two demonstrations (time-indexed): goes through the obstacle
        T = min(len(tr0["act"]), len(tr1["act"]))
        avg_ee = 0.5 * (tr0["ee"][:T] + tr1["ee"][:T])
        assert np.min(np.linalg.norm(avg_ee - ts0.obstacle[:2], axis=1)) < rho
        # and executing the averaged joint targets ends the episode in a collision
        env.reset(seed, "mode0")
        for a in 0.5 * (tr0["act"][:T] + tr1["act"][:T]):
            env.step(a)
            if env.done:
                break
        assert env.task_state.status == "collision", env.task_state.reason


def test_bimodal_side_hysteresis(envs):
    """Clearly on one side -> keep it whatever the mode; undecided -> the latent mode picks."""
    env = envs[("planar3", "bimodal")]
    expert = env.make_expert()
    ts = env.reset(5)["/task_state"]
    o, g = ts.obstacle[:2], ts.goal
    u = (g - o) / np.linalg.norm(g - o)
    n = np.array([-u[1], u[0]])
    for b, mode, side in ((+0.10, 1, +1), (-0.10, 0, -1), (0.01, 1, -1), (-0.01, 0, +1),
                          (0.005, -1, +1), (-0.01, -1, -1)):
        assert expert.side(b, mode) == side
        p = o - 0.06 * u + b * n                 # abreast of the post (reference at full swerve)
        v = expert.velocity(p, g, ts.obstacle, mode)
        assert np.sign(v @ n) == side, (b, mode, v)


# ---------------------------------------------------------------------------- expert API
def test_expert_is_defined_at_arbitrary_states(envs):
    rng = np.random.default_rng(7)
    for case in CASES:
        env = envs[case]
        expert = env.make_expert()
        ts = env.reset(1)["/task_state"]
        lo, hi = env.robot_contract_limits()
        for _ in range(50):
            q = rng.uniform(lo, hi)
            t = expert.act(q, np.zeros_like(q), ts.goal, ts.obstacle, int(rng.integers(-1, 2)))
            assert np.all(np.isfinite(t)) and np.all(t >= lo) and np.all(t <= hi)
            assert np.all(np.abs(t - np.clip(q, lo + 0.02, hi - 0.02)) <= expert.max_step + 1e-12)


@pytest.mark.parametrize("case", CASES)
def test_expert_recovers_from_perturbed_states(envs, case):
    """States the expert never visited: teleport the arm mid-episode, the expert still succeeds."""
    env = envs[case]
    expert = env.make_expert()
    rng = np.random.default_rng(3)
    for seed in range(200, 205):
        msgs = env.reset(seed, horizon=env.horizon + 150)
        for t in range(int(rng.integers(5, 60))):
            msgs = env.step(expert.act_messages(msgs))
        for _try in range(1000):            # rejection sampling, bounded
            q = np.clip(env.sim.qpos + rng.normal(0.0, 0.3, env.sim.n), *env.robot_contract_limits())
            oc = env.task.obstacle_center()
            if oc is None or np.linalg.norm(env.sim.fk(q)[:2] - oc) > env.task.obstacle[-1] + 0.03:
                break
        else:
            pytest.fail(f"seed {seed}: no perturbed state clear of the obstacle in 1000 draws")
        msgs = env.set_joint_state(q)
        while not env.done:
            msgs = env.step(expert.act_messages(msgs))
        assert msgs["/task_state"].status == "success", (seed, msgs["/task_state"].reason)


def test_plan_rolls_the_expert_forward(envs):
    env = envs[("planar3", "long_horizon")]
    expert = env.make_expert()
    ts = env.reset(2)["/task_state"]
    q = env.sim.qpos
    chunk = expert.plan(q, None, ts.goal, K=20)
    assert chunk.shape == (20, 3)
    np.testing.assert_allclose(chunk[0], expert.act(q, None, ts.goal))
    np.testing.assert_allclose(chunk[1], expert.act(chunk[0], None, ts.goal))
    long = expert.plan(q, None, ts.goal, K=400, waypoints=ts.waypoints, phase=0)
    ee_end = env.sim.fk(long[-1])[:2]
    assert np.linalg.norm(ee_end - ts.waypoints.reshape(-1, 2)[-1]) < 0.03   # advanced through phases


@pytest.mark.parametrize("case", CASES)
def test_contracts_load_and_match_env(envs, case):
    env = envs[case]
    c = load_contract(*case)
    assert c.chunk_length == 20 and c.control_rate_hz == env.control_rate_hz
    assert c.action.topic == "/forward_position_controller/commands"
    assert c.action.msg_type == "std_msgs/msg/Float64MultiArray"
    assert tuple(c.action.joints) == env.joint_names
    lo, hi = env.robot_contract_limits()
    np.testing.assert_allclose(c.action.lower, lo)
    np.testing.assert_allclose(c.action.upper, hi)
    c.check_robot_joints(env.joint_names)
    obs = ObservationAssembler(c).assemble(env.reset(0))
    assert obs.shape == (c.obs_dim,)
    np.testing.assert_allclose(obs[c.obs_slice("joint_pos")], env.sim.qpos)
    np.testing.assert_allclose(obs[c.obs_slice("goal")], env.task_state.goal)
    assert "mode" not in [t.name for t in c.observation]     # the latent mode is not observed
    # the decoder gives the same label as the expert on the raw state
    expert = env.make_expert()
    ts = env.task_state
    np.testing.assert_allclose(expert.act_obs(obs, c, mode=ts.mode), expert.act_task(env.sim.qpos, None, ts))
    assert expert.plan_obs(obs, c, mode=ts.mode).shape == (20, c.act_dim)


def test_act_obs_respects_contract_joint_order(envs):
    env = envs[("planar3", "curved_reach")]
    d = load_contract("planar3", "curved_reach").to_dict()
    perm = ["j3", "j1", "j2"]
    for term in d["observation"]:
        if "joints" in term:
            term["joints"] = perm
    d["action"]["joints"] = perm
    c = Contract.from_dict(d)
    expert = env.make_expert()
    msgs = env.reset(6)
    obs = ObservationAssembler(c).assemble(msgs)
    ref = expert.act_messages(msgs)                 # robot order j1, j2, j3
    np.testing.assert_allclose(expert.act_obs(obs, c), ref[[2, 0, 1]])


def test_shipped_contract_files():
    names = sorted(p.stem for p in CONTRACTS_DIR.glob("*.yaml"))
    for case in CASES:
        assert "_".join(case) in names


def test_unknown_task_and_variant_are_refused():
    with pytest.raises(TaskError, match="unknown task"):
        SimEnv("planar3", "juggle")
    env = SimEnv("planar3", "bimodal")
    with pytest.raises(TaskError, match="no variant"):
        env.reset(0, variant="mode7")
    with pytest.raises(TaskError, match="planar"):
        SimEnv("arm7", "bimodal")
