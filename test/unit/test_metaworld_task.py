"""Meta-World tasks as the package's robot (`core.sim.metaworld_task`): the generated contract
for any discovered task, the environment behind SimEnv's interface, the scripted expert in
contract units with chunk plans on a copy of the state, and the whole in-process path
(demos -> dataset -> training -> ONNX -> the control engine with its safety filter)."""
import numpy as np
import pytest

pytest.importorskip("metaworld")

from bc_policy_node.core.contract import ObservationAssembler  # noqa: E402
from bc_policy_node.core.data.episodes import Dataset  # noqa: E402
from bc_policy_node.core.eval.rollout import evaluate, expert_act_fn, rollout  # noqa: E402
from bc_policy_node.core.sim.env import load_contract, make_env  # noqa: E402
from bc_policy_node.core.sim.metaworld_env import UnknownTaskError, available_tasks  # noqa: E402
from bc_policy_node.core.sim.metaworld_task import ROBOT, MetaWorldSimEnv  # noqa: E402

# tasks beyond MT10 too: nothing in the package lists them
TASKS = ("reach-v3", "basketball-v3", "hammer-v3", "shelf-place-v3")


@pytest.mark.parametrize("task", TASKS)
def test_every_discovered_task_gets_a_cartesian_gripper_contract(task):
    assert task in available_tasks()
    c = load_contract(ROBOT, f"metaworld/{task}")
    assert (c.robot, c.task, c.action.kind, c.act_dim, c.obs_dim) == (
        ROBOT, f"metaworld/{task}", "ee_velocity+gripper", 4, 21)
    assert c.control_rate_hz == pytest.approx(80.0)
    twist, grip = c.action.parts
    assert twist.msg_type == "geometry_msgs/msg/TwistStamped" and twist.workspace.ee_term == "ee_position"
    assert grip.rest == (-1.0,)
    env = make_env(ROBOT, f"metaworld/{task}", control_rate_hz=c.control_rate_hz)
    obs = ObservationAssembler(c).assemble(env.reset(0))
    assert obs.shape == (21,) and np.all(np.isfinite(obs))


def test_bad_names_and_settings_are_refused_with_the_reason():
    with pytest.raises(UnknownTaskError, match="pick-place-v3"):
        load_contract(ROBOT, "metaworld/pick-plac-v3")
    with pytest.raises(ValueError, match="run on robot 'sawyer'"):
        load_contract("planar3", "metaworld/reach-v3")
    with pytest.raises(ValueError, match="runs at 80 Hz"):
        make_env(ROBOT, "metaworld/reach-v3", control_rate_hz=50.0)
    env = MetaWorldSimEnv(ROBOT, "metaworld/reach-v3")
    env.reset(1)
    with pytest.raises(ValueError, match="4 finite numbers"):
        env.step([0.1, 0.0, np.nan, 0.0])
    with pytest.raises(ValueError, match="no variants"):
        env.reset(1, variant="left")


def test_units_and_the_expert_plan_leave_the_episode_untouched():
    env = MetaWorldSimEnv(ROBOT, "metaworld/pick-place-v3")
    c = env.contract
    a = np.array([0.3, -1.0, 1.0, 0.5])
    assert np.allclose(env.native_action(env.contract_action(a)), a)
    assert env.contract_action([2.0, 0, 0, 0])[0] == pytest.approx(c.action.upper[0])    # +1 = the top speed
    env.reset(3)
    expert = env.make_expert()
    before = env.mw.observation().copy()
    plan = expert.plan_obs(None, c, 6)
    assert plan.shape == (6, 4) and np.array_equal(env.mw.observation(), before) and env.step_count == 0
    assert np.allclose(plan[0], expert.act_obs(ObservationAssembler(c).assemble(env.messages()), c))
    msgs = [env.step(plan[0]) for _ in range(1)]
    assert msgs[0]["/task_state"].step == 1


def test_the_replay_expert_plans_at_the_remote_state_and_refuses_any_other():
    """ReplayExpert (the expert node's K-step plans): a copy reset with the episode's seed and
    stepped with the executed commands plans exactly what the expert plans on the simulation
    itself; an observation that is not the copy's state, a missed command, a mid-episode join
    or another task get the reason instead of a plan."""
    from bc_policy_node.core.sim.metaworld_task import ReplayExpert

    task = "metaworld/pick-place-v3"
    remote, replay = MetaWorldSimEnv(ROBOT, task), ReplayExpert(MetaWorldSimEnv(ROBOT, task))
    c, asm, expert = remote.contract, ObservationAssembler(remote.contract), remote.make_expert()
    with pytest.raises(ValueError, match="no episode has started"):
        replay.plan_obs(np.zeros(c.obs_dim), c, 5)
    msgs = remote.reset(7)
    replay.begin(episode_id=1, seed=7)
    rng = np.random.default_rng(0)
    for step in range(40):
        obs = asm.assemble(msgs)
        np.testing.assert_array_equal(replay.plan_obs(obs, c, 5), expert.plan_obs(obs, c, 5))
        with pytest.raises(ValueError, match="not the replayed state"):
            replay.plan_obs(obs + 1e-12, c, 5)
        cmd = np.clip(expert.act_obs(obs, c) + rng.normal(0.0, 0.05, 4), c.action.lower, c.action.upper)
        msgs = remote.step(cmd)                      # the policy's commands, not the expert's
        replay.apply(1, step, cmd)
        replay.apply(2, step, cmd)                   # another episode's command: ignored
    assert replay.replayed == 40
    replay.apply(1, 41, cmd)                         # step 40 never came
    with pytest.raises(ValueError, match="one was missed"):
        replay.plan_obs(asm.assemble(msgs), c, 5)
    replay.begin(episode_id=3, seed=7, step=12)
    with pytest.raises(ValueError, match="joined episode 3 at step 12"):
        replay.plan_obs(asm.assemble(msgs), c, 5)
    replay.begin(episode_id=4, seed=7, task="metaworld/reach-v3")
    with pytest.raises(ValueError, match="the robot runs metaworld/reach-v3"):
        replay.plan_obs(asm.assemble(remote.reset(7)), c, 5)
    replay.begin(episode_id=5, seed=7)               # a new episode starts a fresh replay
    np.testing.assert_array_equal(replay.plan_obs(asm.assemble(remote.messages()), c, 5),
                                  expert.plan_obs(asm.assemble(remote.messages()), c, 5))


def test_a_plan_request_that_overtook_its_command_waits_for_it_within_the_bound():
    """The node's two threads: a plan request for the state after step 0 arrives before the
    command of step 0 (topic vs service, no order between them). With wait_s it is answered once
    the command is replayed, with the plan at that state; without a command it is refused after
    the wait, with the reason."""
    import threading

    from bc_policy_node.core.sim.metaworld_task import ReplayExpert

    task = "metaworld/push-v3"
    remote, replay = MetaWorldSimEnv(ROBOT, task), ReplayExpert(MetaWorldSimEnv(ROBOT, task))
    c, asm, expert = remote.contract, ObservationAssembler(remote.contract), remote.make_expert()
    obs0 = asm.assemble(remote.reset(3))
    replay.begin(episode_id=1, seed=3)
    cmd = expert.act_obs(obs0, c)
    obs1 = asm.assemble(remote.step(cmd))
    got: dict = {}

    def ask():
        try:
            got["plan"] = replay.plan_obs(obs1, c, 5, wait_s=30.0)
        except ValueError as e:                      # pragma: no cover - reported by the assert below
            got["error"] = str(e)

    t = threading.Thread(target=ask, daemon=True)
    t.start()
    t.join(timeout=0.2)
    assert t.is_alive() and not got, f"the request did not wait for the command: {got}"
    replay.apply(1, 0, cmd)
    t.join(timeout=30.0)
    assert not t.is_alive(), "the request was not answered within 30 s of its command"
    np.testing.assert_array_equal(got.get("plan"), expert.plan_obs(obs1, c, 5), err_msg=str(got))
    with pytest.raises(ValueError, match="not the replayed state"):
        replay.plan_obs(obs0, c, 5, wait_s=0.05)    # a state the copy has left: refused after the wait


@pytest.mark.parametrize("task", ("pick-place-v3", "door-open-v3", "peg-insert-side-v3", "basketball-v3"))
def test_a_label_needs_only_the_contract_observation(task):
    """The scripted policy on the observation rebuilt from the contract's terms (no simulator)
    equals the policy on the simulator's own 39 values, along a whole expert episode."""
    from bc_policy_node.core.sim.metaworld_task import native_observation

    env = MetaWorldSimEnv(ROBOT, f"metaworld/{task}")
    c, policy = env.contract, env.mw.expert()
    asm = ObservationAssembler(c)
    msgs = env.reset(5)
    for _ in range(60):
        obs = asm.assemble(msgs)
        assert np.array_equal(policy(native_observation(obs, c)), policy(env.mw.observation()))
        msgs = env.step(env.make_expert().act_obs(obs, c))
        if env.done:
            break


def test_the_expert_solves_tasks_through_the_rollout_engine():
    for task in ("reach-v3", "push-v3"):
        c = load_contract(ROBOT, f"metaworld/{task}")
        env = make_env(ROBOT, f"metaworld/{task}")
        fn = expert_act_fn(env, c)
        wins = sum(rollout(env, c, fn, s).success for s in range(4))
        assert wins >= 3, f"{task}: the scripted expert succeeded {wins}/4"


def test_demos_train_export_and_run_through_the_control_engine(tmp_path):
    """The in-process pipeline on a Meta-World task, end to end (tiny budget: this checks the
    path, not the success rate - that is `bc-policy experiments --only metaworld`)."""
    pytest.importorskip("torch")
    from bc_policy_node.learning import export, train
    from bc_policy_node.pipeline.dagger.training import round_configs

    task = "metaworld/reach-v3"
    c = load_contract(ROBOT, task)
    env = make_env(ROBOT, task)
    fn = expert_act_fn(env, c)
    ds = Dataset(c, [rollout(env, c, fn, s).episode(c.dt, "expert") for s in range(3)])
    m, t = round_configs({"kind": "chunk_mlp", "chunk_length": 5, "width": 32, "depth": 1}, {"max_epochs": 2})
    assert m.action_frame == "relative"           # the default config's; Cartesian actions train absolute
    run = train(ds, m, t, tmp_path / "run", progress=False)
    onnx = export(run.run_dir, tmp_path / "p.onnx")
    from bc_policy_node.core.control.runtime import OnnxPolicy
    assert OnnxPolicy(onnx).meta["action_frame"] == "absolute"
    ev = evaluate(str(onnx), ROBOT, task, [10_000, 10_001], with_expert=False)
    assert ev["success"]["n"] == 2
    for r in ev["results"]:
        assert np.all(np.isfinite(r.actions)) and r.steps > 0
        v = r.actions[:, :3]
        assert np.all(np.abs(v) <= c.action.upper[0] + 1e-12)          # the safety filter's speed bound
