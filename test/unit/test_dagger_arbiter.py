"""The DAgger engine without ROS: the arbiter (who acts, the safe command), frame pairing
(deadlines, absent parties), lock-step stamp pairing, and the in-process path's hand-overs
through the same safety filter as the dagger node's."""
import numpy as np
import pytest

from bc_policy_node.core.dagger.arbiter import DaggerArbiter, chunk_disagreement
from bc_policy_node.core.dagger.frames import ANSWER_ERROR, ANSWER_LATE, ANSWER_OK, Frame, FramePairing
from bc_policy_node.core.dagger.params import DaggerParams
from bc_policy_node.core.sim.env import load_contract
from bc_policy_node.core.sync import StampSync
from bc_policy_node.core.types import ACTOR_EXPERT, ACTOR_POLICY

CONTRACT = load_contract("planar3", "curved_reach")
MAX_STEP = np.array(CONTRACT.action.max_step)
K, A, D = CONTRACT.chunk_length, CONTRACT.act_dim, CONTRACT.obs_dim


def test_arbiter_fallbacks_and_chunk_disagreement_gate():
    """Who acts when a party is silent, and the robot-gated chunk-disagreement score (the
    spread of successive chunks about the same ticks)."""

    q = np.zeros(A)
    obs = np.zeros(D)
    label, prop = np.full(A, 0.01), np.full(A, -0.01)
    core = DaggerArbiter(CONTRACT, DaggerParams(variant="classic", beta=0.0))
    core.begin_episode(1, 0)
    o = core.decide(obs, q, 0, None, "expert_timeout", prop)          # expert late: policy acts, no label
    assert (o.actor, o.labelled, o.reason) == (ACTOR_POLICY, False, "expert_timeout")
    o = core.decide(obs, q, 1, label, "", None)                       # policy silent: the label acts
    assert (o.actor, o.labelled, o.reason) == (ACTOR_EXPERT, True, "policy_missing")
    last = o.command
    o = core.decide(obs, q, 2, None, "expert_timeout", None)          # nobody: hold the last command
    assert o.reason == "expert_timeout|policy_missing|hold" and not o.labelled
    np.testing.assert_array_equal(o.command, last)
    o = core.decide(obs, q, 3, label, "", np.full(A, 2.0))            # a jump is clamped to max_step
    np.testing.assert_allclose(np.abs(o.command - last), MAX_STEP)

    # two chunks about the same ticks, 0.2 rad apart -> std 0.1 rad everywhere
    c0, c1 = np.zeros((K, A)), np.full((K, A), 0.2)
    assert chunk_disagreement([(0, c0), (1, c1[:-1])], step=1, horizon=5) == pytest.approx(0.1)
    assert chunk_disagreement([(1, c1)], step=1, horizon=5) == 0.0    # one chunk: no spread
    core = DaggerArbiter(CONTRACT, DaggerParams(variant="robot_gated", uncertainty_threshold=0.05,
                                             uncertainty_scale=1.0, min_expert_ticks=1))
    core.begin_episode(1, 0)
    core.add_chunk(0, c0)
    o = core.decide(obs, q, 0, label, "", prop)                       # one chunk: policy acts, unlabelled
    assert (o.actor, o.labelled, o.uncertainty) == (ACTOR_POLICY, False, 0.0)
    core.add_chunk(1, c1)
    o = core.decide(obs, q, 1, label, "", prop)                       # plans disagree: the expert acts
    assert (o.actor, o.labelled, o.reason) == (ACTOR_EXPERT, True, "uncertainty")
    assert o.uncertainty == pytest.approx(0.1)
    np.testing.assert_array_equal(o.expert_action, label)


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _frame(i, done=False):
    return Frame((i, 0), float(i), 1, i, 0, 0, done, np.zeros(D), np.zeros(A))


def test_frames_wait_for_both_answers_in_order_and_time_out():
    clock, logs = FakeClock(), []
    fp = FramePairing(absent_after=2, clock=clock, log=lambda level, text: logs.append((level, text)))
    f0, f1 = _frame(0), _frame(1)
    fp.open(f0, policy_wait_s=1.0, expert_wait_s=0.5, absent_wait_s=0.1)
    fp.open(f1, policy_wait_s=1.0, expert_wait_s=0.5, absent_wait_s=0.1)
    assert fp.pop_ready() == [] and fp.waiting                      # nobody answered yet
    assert fp.policy_answer(np.ones(A)) and fp.policy_answer(2 * np.ones(A))
    assert fp.pop_ready() == []                                     # labels still pending
    assert fp.expert_answer(f1, np.ones((1, A))) == ANSWER_OK      # f1 first: f0 still blocks it
    assert fp.pop_ready() == []
    clock.t = 0.6                                                   # f0's label times out
    timed_out = []
    assert fp.pop_ready(timed_out.append) == [f0, f1]
    assert timed_out == [f0] and f0.label is None and f0.label_failure == "expert_timeout"
    np.testing.assert_array_equal(f0.policy, np.ones(A))            # FIFO: n-th command, n-th frame
    np.testing.assert_array_equal(f1.policy, 2 * np.ones(A))
    np.testing.assert_array_equal(f1.label, np.ones(A))
    assert fp.expert_answer(f0, np.ones((1, A))) == ANSWER_LATE     # alive, but too late for f0
    assert fp.counts["expert_timeouts"] == 1 and fp.counts["late_labels"] == 1 and not fp.waiting


def test_silent_parties_become_absent_and_come_back():
    clock, logs = FakeClock(), []
    fp = FramePairing(absent_after=2, clock=clock, log=lambda level, text: logs.append((level, text)))
    for i in range(2):                                  # the policy misses two deadlines
        f = _frame(i)
        f.label = np.zeros(A)
        fp.open(f, policy_wait_s=1.0, expert_wait_s=None, absent_wait_s=0.1)
        clock.t += 1.5
        assert fp.pop_ready() == [f] and f.policy is None
    assert fp.policy_absent and fp.counts["policy_timeouts"] == 2
    f = _frame(2)
    f.label = np.zeros(A)
    fp.open(f, policy_wait_s=1.0, expert_wait_s=None, absent_wait_s=0.1)
    assert fp.pop_ready() == [f]                        # absent: not waited for at all
    assert not fp.policy_answer(np.ones(A))             # back: its answer is for an acted frame
    assert not fp.policy_absent and fp.counts["policy_late"] == 1
    # the expert: two timeouts make it absent, then it gets absent_wait_s at most
    for i in range(3, 5):
        f = _frame(i)
        fp.open(f, policy_wait_s=1.0, expert_wait_s=0.5, absent_wait_s=0.1)
        fp.policy_answer(np.ones(A))
        clock.t += 0.6
        assert fp.pop_ready() == [f]
    assert fp.expert_absent
    f = _frame(5)
    fp.open(f, policy_wait_s=1.0, expert_wait_s=0.5, absent_wait_s=0.1)
    assert f.expert_deadline == pytest.approx(clock.t + 0.1)
    assert fp.expert_answer(f, np.full((1, A), np.nan)) == ANSWER_ERROR   # refused: unlabelled
    assert f.label is None and f.label_failure == "expert_error"
    assert fp.expert_answer(_frame(6), np.zeros((1, A))) == ANSWER_OK and not fp.expert_absent
    assert [lv for lv, _ in logs] == ["warn", "info", "warn", "info"]


def test_stamp_sync_releases_complete_stamps_once():
    s = StampSync(["a", "b"], max_pending=4)
    assert s.add("a", 1, "a1") is None
    assert s.add("a", 2, "a2") is None
    assert s.add("b", 2, "b2") == [("a", "a2"), ("b", "b2")]   # 2 complete: 1 can never be
    assert s.is_repeat(1) and s.is_repeat(2) and not s.is_repeat(3)
    assert s.add("b", 1, "b1") is None and s.add("a", 2, "again") is None
    assert s.add("b", 3, "b3") is None and s.add("a", 3, "a3") == [("a", "a3"), ("b", "b3")]


def test_in_process_handovers_go_through_the_step_clamp(tmp_path):
    """The in-process DAgger path executes through the arbiter's safety filter, like the dagger
    node: with a policy that always asks for a far target and the expert acting half the time,
    no executed command moves a joint by more than max_step per tick (hand-overs included), and
    the labels are the expert's own actions, not the clamped commands."""
    from onnx_policies import const_policy

    from bc_policy_node.core.control.runtime import OnnxPolicy
    from bc_policy_node.core.eval.rollout import make_controller, rollout
    from bc_policy_node.core.sim.env import SimEnv
    from bc_policy_node.pipeline.dagger.inprocess import DaggerController

    env = SimEnv("planar3", "curved_reach")
    expert = env.make_expert()

    def label(obs, msgs, t=None):
        return expert.act_obs(obs, CONTRACT, mode=int(msgs["/task_state"].mode))

    far = OnnxPolicy(const_policy(tmp_path / "far.onnx", CONTRACT, [1.2, -1.5, 1.5]))
    ctl = DaggerController(DaggerParams.in_process("classic", beta=0.5), env, CONTRACT,
                           make_controller(far, CONTRACT), label)
    ctl.reset(7)
    r = rollout(env, CONTRACT, None, 7, label_fn=label, decide_fn=ctl.decide)
    assert {ACTOR_POLICY, ACTOR_EXPERT} <= set(r.actors.tolist())      # both acted: hand-overs happened
    start = r.q[0][:A]
    steps = np.abs(np.diff(np.vstack([start, r.actions]), axis=0))
    assert np.all(steps <= MAX_STEP + 1e-9), f"a command jumped by {steps.max(axis=0)} > {MAX_STEP}"
    assert ctl.arbiter.counts["step_clamps"] > 0          # the far target was asked for and clamped
    expert_ticks = np.flatnonzero(r.actors == ACTOR_EXPERT)
    np.testing.assert_allclose(r.labels[expert_ticks], [ctl.labels[t] for t in expert_ticks])
