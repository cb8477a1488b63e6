"""Smoke tests of the experiments package: shared helpers, one experiment on a tiny config, the report."""
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from onnx_policies import hold_policy

from bc_policy_node.core.eval.metrics import path_distance_matrix, time_deviation_matrix
from bc_policy_node.experiments import common as C
from bc_policy_node.experiments import runner


def test_statistics_and_tables():
    s = C.rate([True] * 8 + [False] * 2)
    assert s["n"] == 10 and s["successes"] == 8 and s["ci_low"] < 0.8 < s["ci_high"]
    assert C.fmt_rate(s) == f"80% [{100 * s['ci_low']:.0f}, {100 * s['ci_high']:.0f}]"
    m = C.ci([1.0, 2.0, 3.0, float("nan")])
    assert m["n"] == 3 and m["mean"] == pytest.approx(2.0)
    assert C.fmt_mean(m, 1000, 0, " mm").startswith("2000 ± ")
    mat = np.array([[1.0, 2.0, np.nan], [3.0, 4.0, np.nan], [5.0, 6.0, 1.0]])
    mean, lo, hi, cnt = C.band(mat, min_n=2)
    assert mean[:2] == pytest.approx([3.0, 4.0]) and np.isnan(mean[2]) and list(cnt) == [3, 3, 1]
    assert np.all(lo[:2] < mean[:2]) and np.all(hi[:2] > mean[:2])
    t = C.md_table(["a", "b"], [[1, 0.123456], ["x", "y"]])
    assert t.splitlines()[0] == "| a | b |" and "0.123" in t and len(t.splitlines()) == 4
    assert C.stable_hash({"a": 1, "b": 2}) == C.stable_hash({"b": 2, "a": 1})


def test_path_helpers():
    a = np.array([[0.0, 0.0], [1.0, 0.0]])
    b = np.array([[0.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
    d = time_deviation_matrix([a], [b])
    assert d.shape == (1, 3) and d[0] == pytest.approx([0.0, np.sqrt(2.0), np.sqrt(5.0)])
    pd = path_distance_matrix([a], [b])
    assert pd[0] == pytest.approx([0.0, 1.0])
    padded = C.nan_pad([np.ones(2), np.ones(3)])
    assert padded.shape == (2, 3) and np.isnan(padded[0, 2])
    # obstacle at the origin, goal along +x: a path bulging to +y passed on the left (mode 0)
    goal, obst = np.array([1.0, 0.0]), np.array([0.0, 0.0, 0.1])
    left = np.array([[-1.0, 0.0], [-0.5, 0.2], [0.0, 0.2], [0.5, 0.1], [1.0, 0.0]])
    assert C.passing_side(left, goal, obst) == 1
    assert C.passing_side(left * [1, -1], goal, obst) == -1
    assert C.passing_side(left[:2], goal, obst) == 0


def test_drift_experiment_tiny(tmp_path, monkeypatch):
    """The whole drift pipeline (demos -> policy -> closed loop with expert labels -> teacher forced ->
    figure + numbers) on a tiny config. Training is replaced by a hand-made ONNX policy that holds
    the arm (keeps the test torch-free and fast); the cache keys of demos are checked too."""
    from bc_policy_node.experiments import exp_drift

    calls = []

    def fake_train(ds, model_cfg, train_cfg, cache, tag=""):
        calls.append(tag)
        d = Path(cache) / "models" / tag
        d.mkdir(parents=True, exist_ok=True)
        return C.Trained(hold_policy(d / "policy.onnx", ds.contract, k=1),
                         {"best_val_loss": 0.5, "best_epoch": 1, "epochs": 1, "num_frames": ds.num_frames,
                          "num_episodes": len(ds), "train_seconds": 0.0, "num_parameters": 0})

    monkeypatch.setattr(exp_drift, "QUICK", {"demos": 3, "epochs": 1, "eval": 3, "paths": 2})
    monkeypatch.setattr(exp_drift, "TASKS", ("curved_reach",))
    monkeypatch.setattr(exp_drift, "CHECK_TICKS", {"curved_reach": (5, 20)})
    monkeypatch.setattr(C, "train_cached", fake_train)
    r = exp_drift.run(tmp_path / "drift", quick=True)
    fig = Path(r["figures"][0])
    assert fig.is_file() and fig.stat().st_size > 10_000
    assert r["captions"][str(fig)] and r["headline"].startswith("K=1") and r["table_md"].startswith("| task")
    nums = json.loads((tmp_path / "drift" / "numbers.json").read_text())
    n = nums["curved_reach"]
    assert calls == ["curved_reach_mlp"]
    assert n["success"]["n"] == 3 and n["success"]["rate"] == 0.0 and n["expert_success"]["rate"] == 1.0
    # holding still: the teacher-forced one-step error is the expert's own step, the closed-loop
    # deviation grows to the expert's whole path length
    assert 0 < n["teacher_forced_ee_mean_m"]["mean"] < 0.02 < n["closed_loop_dev_final_m"]["mean"]
    cache = tmp_path / "drift" / "cache"
    (demos,) = (cache / "demos").iterdir()
    mtime = (demos / "data.npz").stat().st_mtime
    ds = C.collect_demos("curved_reach", 3, cache)
    assert (demos / "data.npz").stat().st_mtime == mtime and len(ds) == 3


def test_report_paths_relative(tmp_path):
    out = tmp_path / "results"
    (out / "x").mkdir(parents=True)
    fig = out / "x" / "f.png"
    fig.write_bytes(b"png")
    r = {"name": "drift", "title": "T", "figures": [str(fig)], "captions": {str(fig): "CAP"},
         "table_md": "| a |\n|---|\n| 1 |", "numbers": {}, "headline": "H"}
    rep = runner.write_report(out, [runner.normalize(r, out)], quick=True).read_text()
    assert "![drift](x/f.png)" in rep and "*CAP*" in rep and "| [drift](#drift) | H |" in rep


def test_runner_survives_a_failing_experiment(tmp_path, monkeypatch):
    monkeypatch.setitem(runner.EXPERIMENTS, "drift", "bc_policy_node.experiments.no_such_module")
    rc = runner.main(SimpleNamespace(out=str(tmp_path), only="drift", quick=True))
    assert rc == 1 and (tmp_path / "report.md").is_file()


def test_report_paths_relative_to_cwd(tmp_path, monkeypatch):
    """`--out results` gives experiments relative paths like results/x/f.png; report.md needs x/f.png."""
    monkeypatch.chdir(tmp_path)
    out = Path("results")
    (out / "x").mkdir(parents=True)
    (out / "x" / "f.png").write_bytes(b"png")
    r = runner.normalize({"name": "drift", "figures": ["results/x/f.png"],
                          "captions": {"results/x/f.png": "CAP"}}, out)
    assert r["figures"] == ["x/f.png"] and r["captions"] == {"x/f.png": "CAP"}
    assert runner.normalize(r, out)["figures"] == ["x/f.png"]          # idempotent (section.json)


def _mt_row(bc_single, bc_chunked, classic):
    """A Meta-World numbers.json row: BC at 10/50 demos, classic DAgger rounds as (success, labels)."""
    s = lambda p: C.rate([True] * p + [False] * (100 - p))       # noqa: E731
    row = {"expert": s(100), "demo_frames_10": 800, "demo_frames_50": 4000}
    row.update({f"single_{n}": s(p) for n, p in zip((10, 50), bc_single)})
    row.update({f"chunked_{n}": s(p) for n, p in zip((10, 50), bc_chunked)})
    row["dagger_classic"] = [{"round": i, "success": s(p), "labels": lab} for i, (p, lab) in enumerate(classic)]
    return row


def test_metaworld_dagger_goal_is_read_off_the_rounds_and_rerendered_from_numbers(tmp_path):
    """The DAgger goal holds at the first round that reaches both 95% and BC's success with fewer labels
    than BC's demos; `--render` rebuilds the section from numbers.json alone."""
    from bc_policy_node.experiments import exp_metaworld as M

    settings = dict(M.FULL, tasks=["a-v3", "b-v3"], demos=[10, 50], dagger_tasks=["a-v3", "b-v3"],
                    dagger_variants=["classic"])
    good = [(70, 800), (90, 2000), (98, 3000), (99, 3500)]
    rows = {"a-v3": _mt_row((80, 96), (75, 95), good), "b-v3": _mt_row((80, 96), (75, 95), good)}
    r = M._report(tmp_path, settings, rows, 1.0)
    goal = r["numbers"]["dagger_goal"]["classic"]
    assert goal["reached"] and goal["round"] == 2 and goal["labels"] == 3000, goal
    assert "reached at round 2" in r["table_md"] and (tmp_path / "metaworld_labels.png").is_file()
    # the same success only with more labels than BC's 4000 frames: not reached, and said so
    late = [(70, 800), (90, 2000), (94, 3000), (98, 4500)]
    rows_late = {k: _mt_row((80, 96), (75, 95), late) for k in rows}
    late_goal = M._report(tmp_path, settings, rows_late, 1.0)["numbers"]["dagger_goal"]["classic"]
    assert not late_goal["reached"] and late_goal["round"] == 3
    assert "not reached, not with fewer labels than BC: at round 3" in M._report(tmp_path, settings, rows_late,
                                                                                   1.0)["table_md"]
    # BC at a middle demo count matching round 2 with fewer labels moves the verdict to a later round
    settings3 = dict(settings, demos=[10, 25, 50])
    rows3 = {k: dict(_mt_row((80, 96), (75, 95), good), single_25=C.rate([True] * 98 + [False] * 2),
                     chunked_25=C.rate([True] * 90 + [False] * 10), demo_frames_25=2000) for k in rows}
    g3 = M._report(tmp_path, settings3, rows3, 1.0)["numbers"]["dagger_goal"]["classic"]
    assert g3["reached"] and g3["round"] == 3 and g3["bc_match"] is None, g3
    # render: the stored numbers give the same section back
    (tmp_path / "numbers.json").write_text(json.dumps(r["numbers"]))
    again = M.render(tmp_path)
    assert again["table_md"] == r["table_md"] and again["headline"] == r["headline"]


def test_render_refuses_an_experiment_without_a_renderer(tmp_path):
    with pytest.raises(SystemExit, match="has no --render"):
        runner.main(SimpleNamespace(out=str(tmp_path), only="drift", quick=False, render=True))


def test_the_metaworld_experiment_takes_any_task_list(tmp_path):
    """--tasks: MT10 by name, every discovered task, or names in any accepted form; an unknown
    name gets the task list; an experiment with a fixed task set refuses the option."""
    pytest.importorskip("metaworld")
    from bc_policy_node.core.sim.metaworld_env import UnknownTaskError, available_tasks
    from bc_policy_node.experiments import exp_metaworld as M

    assert M.resolve_tasks("mt10") == M.MT10
    assert M.resolve_tasks("all") == tuple(available_tasks()) and len(M.resolve_tasks("all")) > len(M.MT10)
    assert M.resolve_tasks("basketball, metaworld/coffee-push-v3,basketball-v3") == ("basketball-v3",
                                                                                       "coffee-push-v3")
    with pytest.raises(UnknownTaskError, match="Available"):
        M.resolve_tasks("basketbal-v9")
    with pytest.raises(SystemExit, match="fixed task set"):
        runner.main(SimpleNamespace(out=str(tmp_path), only="drift", quick=True, tasks="mt10"))
