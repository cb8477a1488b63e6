"""`collect()` through the real graph: bridge (lock-step) + expert + recorder processes.

Two planar3 curved_reach episodes -> bags -> dataset. The dataset must be the in-process
rollout (SimEnv + the core expert, same seeds) bit for bit: the same observations through the
same ObservationAssembler and the same expert commands, one frame per control tick.
"""
import numpy as np
import pytest

pytest.importorskip("rclpy")

from bc_policy_node.core.contract import ObservationAssembler  # noqa: E402
from bc_policy_node.core.data.dataset_builder import build_dataset  # noqa: E402
from bc_policy_node.core.sim.env import SimEnv, load_contract  # noqa: E402
from bc_policy_node.pipeline.collect import CMD, collect, format_summary, next_episode_id  # noqa: E402

pytestmark = pytest.mark.ros
ROBOT, TASK, SEED = "planar3", "curved_reach", 11


def in_process(seed):
    contract = load_contract(ROBOT, TASK)
    env = SimEnv(ROBOT, TASK)
    expert = env.make_expert()
    msgs = env.reset(seed)
    obs, act = [], []
    while not env.done:
        obs.append(ObservationAssembler(contract).assemble(msgs))
        act.append(expert.act_messages(msgs))
        msgs = env.step(act[-1])
    return np.array(obs), np.array(act), msgs["/task_state"]


def test_collect_two_episodes_build_into_the_in_process_rollouts(tmp_path):
    out = tmp_path / "bags"
    s = collect(ROBOT, TASK, episodes=2, seed=SEED, out=out, log_dir=tmp_path / "logs", progress=False)
    assert s["episodes"] == 2 and s["successes"] == 2, format_summary(s)
    assert [r["seed"] for r in s["rows"]] == [SEED, SEED + 1] and next_episode_id(out) == 2

    ds, rep = build_dataset([out], load_contract(ROBOT, TASK))
    assert rep["included"] == 2, rep["episodes"]
    # Exact counts, no tolerance: in lock-step every control tick is one command answering one
    # observation and the final (done) observation is answered by none, so an episode of N ticks
    # is N + 1 state pairs and N commands in the bag and N frames in the dataset. collect stops
    # only once the recorder holds those counts and re-records an episode it did not get whole,
    # so a missing frame is lost data (recorder_short, commands_before_ready) or a pairing error
    # (duplicate_commands), each reported below, never noise.
    entries = {e["episode_id"]: e for e in rep["episodes"]}
    for row in s["rows"]:
        e = entries[row["episode_id"]]
        assert not row["recorder_short"], (row, e)
        assert (e["frames"], e["commands_before_ready"], e["duplicate_commands"]) == (row["frames"], 0, 0), e
    assert ds.num_frames == s["frames"]
    for ep, row in zip(ds.episodes, s["rows"]):
        assert ep.meta["success"] is True and ep.meta["complete"] is True and ep.meta["seed"] == row["seed"]
        assert ep.meta["alignment"] == "command" and ep.meta["frame_clock"] == "header"
        obs, act, final = in_process(row["seed"])
        assert final.success and len(ep) == len(obs) == row["frames"]
        np.testing.assert_array_equal(ep.obs, obs)
        np.testing.assert_array_equal(ep.act, act)
        np.testing.assert_allclose(ep.t, np.arange(len(ep)) * 0.02, atol=1e-9)


class _FakeGraph:
    """procs.Graph stand-in: no processes."""
    procs = {}

    def __init__(self, *_a, **_k):
        pass

    def check_alive(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


class _FakeClient:
    """GraphClient stand-in: a lock-step episode of STEPS ticks whose first `short` recordings
    miss the first joint state (as when a publisher had not matched the recorder yet)."""
    STEPS = 10

    def __init__(self, *_a, short=1, **_k):
        from types import SimpleNamespace
        self.short, self.calls, self.episode = short, [], 0
        self.node = SimpleNamespace(count_subscribers=lambda _t: 3, count_publishers=lambda _t: 1)
        self.recorder = {"publishers": {t: 1 for t in ("/joint_states", "/task_state", CMD)}, "episode": None}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def wait_for_services(self, *_a):
        pass

    def wait_until(self, pred, _timeout, what):
        assert pred(), what

    def wait_recorder(self, pred, _timeout, what):
        from bc_policy_node.pipeline.graph_client import GraphError
        if not pred(self.recorder):
            raise GraphError(what)
        return self.recorder

    def start_episode(self, task, seed, episode_id, **_k):
        self.calls.append(("start", seed, episode_id))
        return f"/bags/episode_{episode_id}"

    def reset(self, seed, **_k):
        from types import SimpleNamespace
        self.episode += 1
        return SimpleNamespace(episode_id=self.episode)

    def wait_task_done(self, _episode_id, **_k):
        from types import SimpleNamespace
        lost = 1 if self.short > 0 else 0
        self.short -= 1
        self.recorder["episode"] = {"written": {"/joint_states": self.STEPS + 1 - lost,
                                                "/task_state": self.STEPS + 1, CMD: self.STEPS}}
        return SimpleNamespace(step=self.STEPS, success=True, status="success", reason="")

    def stop_episode(self, task_success, outcome="", notes="", discard=False, **_k):
        from types import SimpleNamespace
        self.calls.append(("stop", outcome, discard))
        return SimpleNamespace(messages_written=3 * self.STEPS + 2, bag_path="" if discard else "/bags/x")


@pytest.mark.parametrize("short, kept_short", [(1, ""), (3, "/joint_states 10/11")])
def test_collect_re_records_an_episode_the_recorder_did_not_get_whole(tmp_path, monkeypatch, short, kept_short):
    """A recording short of the lock-step counts is discarded and done again (same seed and
    episode id), at most RECORD_RETRIES times; then kept with the warning."""
    from bc_policy_node import procs
    from bc_policy_node.pipeline import collect as collect_mod, graph_client

    made = []
    monkeypatch.setattr(procs, "Graph", _FakeGraph)
    monkeypatch.setattr(graph_client, "GraphClient",
                        lambda *a, **k: made.append(_FakeClient(short=short)) or made[-1])
    monkeypatch.setattr(collect_mod, "SETTLE_TIMEOUT_S", 0.0)
    s = collect(ROBOT, TASK, episodes=1, seed=SEED, out=tmp_path / "bags", log_dir=tmp_path / "logs",
                progress=False)
    attempts = min(short, collect_mod.RECORD_RETRIES) + 1
    (row,) = s["rows"]
    assert row["recorder_short"] == kept_short and len(row["re_recorded"]) == attempts - 1
    assert made[0].calls == ([("start", SEED, 0), ("stop", "recorder short: /joint_states 10/11", True)]
                             * (attempts - 1) + [("start", SEED, 0), ("stop", "success", False)])
    text = format_summary(s)
    assert (f"episode 0 recorded {attempts} times" in text) and (("WARNING" in text) == bool(kept_short))
