"""Meta-World MT10: behavioral cloning, action chunking and DAgger on a benchmark the package
did not write.

Per task of Meta-World's MT10 set (the benchmark's own list of ten tasks; any other task name
runs the same way, `bc-policy eval --task metaworld/<name>`): the scripted expert's success on
the held-out seeds; BC trained on `demos` expert demonstrations (seeds 0..n-1) as a single-step
MLP and as the chunked MLP with temporal ensembling (the package's default policy, absolute
Cartesian targets: a relative frame needs joint actions); classic and robot-gated DAgger from
the 10-demo BC policy (`pipeline.dagger`, chunk labels from the expert's plan on a copy of the
simulation state). Every policy runs through the same control engine as on the robot
(`core.control.controller.PolicyController`: ensembling, safety filter with the workspace box),
evaluated on 100 held-out seeds per task with 95% Wilson intervals, fanned out over Ray workers
(`core.eval.parallel`; results identical to a serial run).

Labels: BC's cost is its demonstration frames; DAgger's the demos plus every labelled frame
of its rounds (`RoundRecord.labels_total`). The DAgger goal is read off the task-average rounds
against BC's measured demo counts (`_dagger_goal`); `bc-policy experiments --only metaworld
--render` rebuilds the section from numbers.json without rollouts.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from ..core.eval.metrics import success_summary
from ..core.eval.rollout import evaluate
from ..pipeline.dagger.config import DaggerConfig
from ..pipeline.dagger.inprocess import run_dagger
from ..pipeline.dagger.training import round_configs
from . import common as C

ROBOT = "sawyer"
MT10 = ("reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
        "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3")
K = 20                       # chunk length: 0.25 s at Meta-World's 80 Hz (a 30-seed pilot on push, pick-place,
                             # door-open: K=20 >= K=10 on all three)
EVAL_SEED0 = 10_000
WORKERS = 2
FULL = {"tasks": MT10, "demos": (10, 25, 50), "eval": 100, "epochs": 60, "dagger_tasks": MT10, "rounds": 5,
        "episodes_per_round": 10, "dagger_variants": ("classic", "robot_gated")}
QUICK = {"tasks": ("reach-v3", "push-v3"), "demos": (5,), "eval": 10, "epochs": 10, "dagger_tasks": ("reach-v3",),
         "rounds": 1, "episodes_per_round": 3, "dagger_variants": ("classic",)}
GOAL_CHUNKED, GOAL_DAGGER = 0.90, 0.95
# Robot-gated: ask for help above the 90% quantile of the ensemble's disagreement on its own
# training observations (the 95% default asked too rarely here: MT10 93% at 1.9k labels, peg-insert
# 61%; the same choice as exp_dagger's ROBOT_GATED). The folder name carries the setting.
VARIANT_SETTINGS = {"classic": ("classic", {}), "robot_gated": ("robot_gated_q90", {"threshold_quantile": 0.9})}


def _model(kind: str) -> Dict[str, Any]:
    """Overrides of the package's default policy config (config/train/chunk_mlp.yaml)."""
    if kind == "single":
        return dict(kind="mlp", chunk_length=1, action_frame="absolute")
    return dict(kind="chunk_mlp", chunk_length=K, action_frame="absolute")


def _train_cfg(epochs: int) -> Dict[str, Any]:
    return dict(max_epochs=epochs)


def resolve_tasks(spec: str) -> tuple:
    """`--tasks`: "mt10", "all" (every discovered task) or comma-separated names in any form
    `metaworld_env.resolve_task` takes (an unknown one: its error, with the available tasks)."""
    from ..core.sim.metaworld_env import available_tasks, resolve_task

    spec = spec.strip()
    if spec.lower() == "mt10":
        return MT10
    if spec.lower() == "all":
        return tuple(available_tasks())
    names = [resolve_task(t) for t in spec.split(",") if t.strip()]
    if not names:
        raise ValueError("--tasks names no task (mt10, all, or comma-separated Meta-World task names)")
    return tuple(dict.fromkeys(names))


def _set_name(tasks) -> str:
    return "MT10" if tuple(tasks) == MT10 else f"{len(tasks)} Meta-World task{'s' if len(tasks) > 1 else ''}"


def run(out_dir: Path, quick: bool = False, tasks: str = "") -> dict:
    """`tasks` ("" = the config's: MT10, or two for --quick): every stage runs on those, DAgger too."""
    out_dir = Path(out_dir)
    cache = out_dir / "cache"
    cfg = dict(QUICK if quick else FULL)
    if tasks:
        cfg["tasks"] = cfg["dagger_tasks"] = resolve_tasks(tasks)
    seeds = list(range(EVAL_SEED0, EVAL_SEED0 + cfg["eval"]))
    rows: Dict[str, Dict[str, Any]] = {}
    t0 = time.time()
    for task in cfg["tasks"]:
        name = f"metaworld/{task}"
        row: Dict[str, Any] = {}
        experts = C.expert_rollouts(name, seeds, robot=ROBOT)
        row["expert"] = success_summary([e.success for e in experts])
        for n in cfg["demos"]:
            ds = C.collect_demos(name, n, cache, robot=ROBOT, workers=WORKERS)
            row[f"demo_frames_{n}"] = ds.num_frames
            for kind, mode in (("single", "receding_horizon"), ("chunked", "temporal_ensembling")):
                pol = C.train_cached(ds, *round_configs(_model(kind), _train_cfg(cfg["epochs"])),
                                     cache, tag=f"{task}_{kind}_{n}")
                kw = {"n_execute": 1} if kind == "single" else {}
                row[f"{kind}_{n}"] = _success(pol.onnx, name, seeds, mode, kw, cache)
                C.log(f"metaworld {task}: {kind} BC, {n} demos: {C.fmt_rate(row[f'{kind}_{n}'])}")
        if task in cfg["dagger_tasks"]:
            for variant in cfg["dagger_variants"]:
                folder, own = VARIANT_SETTINGS[variant]
                recs = run_dagger(DaggerConfig(
                    robot=ROBOT, task=name, variant=variant, rounds=cfg["rounds"],
                    episodes_per_round=cfg["episodes_per_round"], initial_demos=min(cfg["demos"]),
                    model_cfg=_model("chunked"), train_cfg=_train_cfg(cfg["epochs"]), eval_seeds=seeds,
                    out_dir=str(cache / "dagger" / task / folder), round0_dir=str(cache / "dagger" / task / "round_00"),
                    eval_workers=WORKERS, progress=False, **own))
                row[f"dagger_{variant}"] = [{"round": r.round, "success": r.success, "labels": r.labels_total}
                                            for r in recs]
                C.log(f"metaworld {task}: {variant} DAgger round {recs[-1].round}: {C.fmt_rate(recs[-1].success)} "
                      f"with {recs[-1].labels_total} labels")
        rows[task] = row
    return _report(out_dir, cfg, rows, time.time() - t0)


def _success(onnx, task: str, seeds, mode: str, kw, cache: Path) -> Dict[str, Any]:
    """Success of `onnx` on `seeds` (evaluated over Ray workers), cached by model id and setting."""
    import json

    from ..core.control.runtime import OnnxPolicy

    key = C.stable_hash([OnnxPolicy(onnx).model_id, task, list(seeds), mode, kw])
    f = cache / "evals" / f"{key}.json"
    if f.is_file():
        return json.loads(f.read_text())
    s = evaluate(str(onnx), ROBOT, task, seeds, execution_mode=mode, with_expert=False, workers=WORKERS, **kw)["success"]
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps(s))
    return s


def _mean(rows, key) -> float:
    vals = [r[key]["rate"] for r in rows.values() if key in r]
    return float(np.mean(vals)) if vals else float("nan")


def _last(r, variant):
    recs = r.get(f"dagger_{variant}")
    return recs[-1] if recs else None


def _report(out_dir: Path, cfg, rows: Dict[str, Dict[str, Any]], seconds: float) -> dict:
    demos = list(cfg["demos"])
    head = (["task", "expert"] + [f"BC single-step, {n} demos" for n in demos]
            + [f"chunked (default), {n} demos" for n in demos])
    order = ["expert"] + [f"single_{n}" for n in demos] + [f"chunked_{n}" for n in demos]
    variants = list(cfg["dagger_variants"])
    head += [f"{v} DAgger, round {cfg['rounds']} from {min(demos)} demos (labels)" for v in variants]
    table = []
    for task, r in rows.items():
        cells = [task] + [C.fmt_rate(r[k]) if k in r else "" for k in order]
        for v in variants:
            last = _last(r, v)
            cells.append(f"{C.fmt_rate(last['success'])} ({last['labels']})" if last else "")
        table.append(cells)
    avg = ["**MT10 average**" if tuple(rows) == MT10 else f"**average ({len(rows)} tasks)**"]
    avg += [f"{100 * _mean(rows, k):.0f}%" for k in order]
    for v in variants:
        lasts = [_last(r, v) for r in rows.values() if _last(r, v)]
        avg.append(f"{100 * np.mean([x['success']['rate'] for x in lasts]):.0f}% "
                   f"({np.mean([x['labels'] for x in lasts]):.0f})" if lasts else "")
    table.append(avg)
    n_big = max(demos)
    chunked_avg = _mean(rows, f"chunked_{n_big}")
    dagger_avg = {v: float(np.mean([_last(r, v)["success"]["rate"] for r in rows.values() if _last(r, v)]))
                  for v in variants if any(_last(r, v) for r in rows.values())}
    bc_labels = float(np.mean([r.get(f"demo_frames_{n_big}", np.nan) for r in rows.values()]))
    rounds = {v: _round_means(rows, v) for v in dagger_avg}
    bc = _bc_points(rows, demos)
    verdict = {v: _dagger_goal(rounds[v], bc) for v in rounds}
    md = C.md_table(head, table)
    if rounds:
        md += "\n\n" + _rounds_table(rounds, cfg) + "\n\n" + _goal_text(chunked_avg, n_big, verdict, bc)
    figs = [_figure(out_dir, rows, order, variants)]
    caps = {figs[0]: f"Success per {_set_name(rows)} task (95% intervals) for the expert, BC single-step and "
                     "chunked, and "
                     "DAgger's last round."}
    if rounds:
        figs.append(_figure_labels(out_dir, rows, demos, rounds))
        caps[figs[1]] = ("Task-average success against the expert labels each policy used (BC: its demonstration "
                         f"frames; DAgger: the {min(demos)} demos plus every frame labelled in its rounds, one point per round), "
                         f"goal {100 * GOAL_DAGGER:.0f}% dashed. BC is measured at {' and '.join(map(str, demos))} "
                         "demos only: its dotted line just joins those points.")
    hits = "".join(f", {v} DAgger {100 * a:.0f}%" for v, a in dagger_avg.items())
    reached = "; ".join(f"{v} at round {x['round']} ({100 * x['success']:.0f}% with {x['labels']:.0f} labels)"
                        for v, x in verdict.items() if x["reached"])
    head_txt = (f"{_set_name(rows)} ({len(rows)} tasks, {cfg['eval']} held-out seeds each): expert {100 * _mean(rows, 'expert'):.0f}%, "
                f"chunked BC from {n_big} demos {100 * chunked_avg:.0f}% (goal {100 * GOAL_CHUNKED:.0f}%){hits} "
                f"at round {cfg['rounds']}" + (f"; DAgger goal reached by {reached}" if reached else
                                               "; DAgger goal not reached" if rounds else ""))
    numbers = {"rows": rows, "averages": {k: _mean(rows, k) for k in order}, "dagger_averages": dagger_avg,
               "dagger_rounds": rounds, "dagger_goal": verdict,
               "bc_labels_mean": bc_labels, "goals": {"chunked": GOAL_CHUNKED, "dagger": GOAL_DAGGER},
               "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
               "chunk_length": K, "workers": WORKERS, "seconds": seconds}
    return C.experiment_result("metaworld", f"Meta-World {_set_name(rows)}: BC, chunking and DAgger on a "
                               "third-party benchmark",
                               out_dir, figs, caps, md, numbers, head_txt)


def render(out_dir: Path) -> dict:
    """The section again from the stored numbers.json (no rollouts): for a report change."""
    import json

    numbers = json.loads((Path(out_dir) / "numbers.json").read_text())
    return _report(Path(out_dir), numbers["settings"], numbers["rows"], numbers["seconds"])


def _round_means(rows, variant: str) -> List[Dict[str, float]]:
    """Per DAgger round, the average over tasks of the success and of the cumulative labels."""
    recs = [r[f"dagger_{variant}"] for r in rows.values() if r.get(f"dagger_{variant}")]
    return [{"round": int(recs[0][i]["round"]), "success": float(np.mean([x[i]["success"]["rate"] for x in recs])),
             "labels": float(np.mean([x[i]["labels"] for x in recs]))} for i in range(min(map(len, recs)))]


def _dagger_goal(rounds: List[Dict[str, float]], bc: List[Dict[str, float]]) -> Dict[str, Any]:
    """The issue's DAgger goal, read off the rounds: the first round whose task average is at least
    GOAL_DAGGER and that BC does not match with as few labels. `bc`: BC's measured points (task
    average labels, and the better of single-step and chunked), one per demo count; BC "needs" for
    a success the labels of its smallest demo count that reaches it, and more than its largest if
    none does (BC measured at a few demo counts only: no interpolation between them)."""
    def bc_need(success: float):
        return next((p for p in sorted(bc, key=lambda p: p["labels"]) if p["success"] >= success), None)

    def beats(r) -> bool:
        p = bc_need(r["success"])
        return r["labels"] < (p["labels"] if p else max(q["labels"] for q in bc))

    good = [r for r in rounds if r["success"] >= GOAL_DAGGER]
    hit = next((r for r in good if beats(r)), None)
    out = dict(hit or (good[0] if good else max(rounds, key=lambda r: r["success"])))
    out.update(reached=hit is not None, reaches_goal=bool(good), bc_match=bc_need(out["success"]))
    return out


def _bc_points(rows, demos) -> List[Dict[str, float]]:
    return [{"demos": n, "labels": float(np.mean([r[f"demo_frames_{n}"] for r in rows.values()])),
             "success": max(_mean(rows, f"single_{n}"), _mean(rows, f"chunked_{n}"))} for n in demos]


def _rounds_table(rounds: Dict[str, List[Dict[str, float]]], cfg) -> str:
    n = min(map(len, rounds.values()))
    head = ["DAgger round"] + [f"{v}: success / labels" for v in rounds]
    body = [[str(rounds[next(iter(rounds))][i]["round"])]
            + [f"{100 * r[i]['success']:.1f}% / {r[i]['labels']:.0f}" for r in rounds.values()] for i in range(n)]
    return (f"Task average per DAgger round ({cfg['episodes_per_round']} episodes per round and task; labels "
            "cumulative, incl. the initial demos):\n\n" + C.md_table(head, body))


def _goal_text(chunked_avg: float, n_big: int, verdict: Dict[str, Dict[str, Any]], bc) -> str:
    lines = [f"- Goal chunked >= {100 * GOAL_CHUNKED:.0f}% from {n_big} demos: {100 * chunked_avg:.1f}%, "
             f"{'reached' if chunked_avg >= GOAL_CHUNKED else 'not reached'}."]
    top = max(bc, key=lambda p: p["labels"])
    for v, x in verdict.items():
        at = f"at round {x['round']}: {100 * x['success']:.1f}% with {x['labels']:.0f} labels"
        p = x["bc_match"]
        bc_txt = (f"BC first reaches that with {p['demos']} demos, {p['labels']:.0f} labels" if p else
                  f"BC does not reach it with up to {top['demos']} demos ({100 * top['success']:.1f}% with "
                  f"{top['labels']:.0f} labels)")
        if x["reached"]:
            state = "reached"
        elif x["reaches_goal"]:
            state = "not reached, not with fewer labels than BC:"
        else:
            state = f"not reached, no round reaches {100 * GOAL_DAGGER:.0f}%; the best is"
        lines.append(f"- Goal DAgger ({v}) >= {100 * GOAL_DAGGER:.0f}% with fewer labels than BC needs for the same "
                     f"success: {state} {at}; {bc_txt}.")
    return "\n".join(lines)


def _n_eval(rows) -> int:
    return int(next(iter(rows.values()))["expert"]["n"])


def _figure_labels(out_dir: Path, rows, demos, rounds) -> str:
    plt = C.plt()
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    for j, kind in enumerate(("single", "chunked")):
        xs = [float(np.mean([r[f"demo_frames_{n}"] for r in rows.values()])) for n in demos]
        ys = [100 * _mean(rows, f"{kind}_{n}") for n in demos]
        ax.plot(xs, ys, marker="s", ls=":", color=C.CYCLE[2 + j], label=f"BC {kind} ({', '.join(map(str, demos))} demos)")
    for j, (v, recs) in enumerate(rounds.items()):
        ax.plot([r["labels"] for r in recs], [100 * r["success"] for r in recs], marker="o", color=C.CYCLE[j],
                label=f"{v} DAgger (rounds 0-{recs[-1]['round']})")
    ax.axhline(100 * GOAL_DAGGER, color="#999999", ls="--", lw=1)
    ax.set_xlabel("expert labels used (task average, cumulative)")
    ax.set_ylabel(f"average success over {_set_name(rows)} (%)")
    ax.set_title(f"Meta-World {_set_name(rows)}: success vs expert labels")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return C.savefig(fig, Path(out_dir) / "metaworld_labels.png")


def _figure(out_dir: Path, rows, order: List[str], variants: List[str]) -> str:
    plt = C.plt()
    series = order + [f"dagger_{v}" for v in variants]
    tasks = list(rows)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.1 * len(tasks) + 2), 4.6))
    w = 0.8 / len(series)
    for j, key in enumerate(series):
        vals, lo, hi = [], [], []
        for t in tasks:
            s = rows[t].get(key)
            s = s[-1]["success"] if isinstance(s, list) else s
            vals.append(100 * s["rate"] if s else np.nan)
            lo.append(100 * (s["rate"] - s["ci_low"]) if s else 0)
            hi.append(100 * (s["ci_high"] - s["rate"]) if s else 0)
        x = np.arange(len(tasks)) + (j - (len(series) - 1) / 2) * w
        ax.bar(x, vals, w, yerr=[lo, hi], capsize=2, label=key.replace("_", " "), color=C.CYCLE[j % len(C.CYCLE)])
    ax.set_xticks(np.arange(len(tasks)))
    ax.set_xticklabels([t.replace("-v3", "") for t in tasks], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("success (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=7, ncol=len(series), loc="upper center", bbox_to_anchor=(0.5, -0.32), frameon=False)
    ax.set_title(f"Meta-World {_set_name(rows)}, {_n_eval(rows)} held-out seeds per task")
    fig.tight_layout()
    return C.savefig(fig, Path(out_dir) / ("metaworld_mt10.png" if tuple(rows) == MT10 else "metaworld_tasks.png"))
