"""`bc-policy experiments`: run the registered experiments and write results/report.md."""
from __future__ import annotations

import importlib
import inspect
import json
import os
import time
import traceback
from pathlib import Path

# name -> module (each has run(out_dir, quick) -> dict); order = report order
EXPERIMENTS = {
    "drift": "bc_policy_node.experiments.exp_drift",
    "chunking": "bc_policy_node.experiments.exp_chunking",
    "bimodal": "bc_policy_node.experiments.exp_bimodal",
    "depth": "bc_policy_node.experiments.exp_depth",
    "deep_bimodal": "bc_policy_node.experiments.exp_deep_bimodal",
    "observation": "bc_policy_node.experiments.exp_observation",
    "dagger": "bc_policy_node.experiments.exp_dagger",
    "metaworld": "bc_policy_node.experiments.exp_metaworld",
    "vision": "bc_policy_node.experiments.exp_vision",
}


def _rel(path, out: Path) -> str:
    """A figure path as seen from report.md (relative to `out`), whatever form the experiment gave:
    absolute, relative to the working directory (e.g. results/drift/x.png) or already relative to
    `out` (drift/x.png, as stored in section.json)."""
    p = Path(path)
    root = out.resolve()
    cands = [p] if p.is_absolute() else [Path.cwd() / p, root / p]
    for c in sorted(cands, key=lambda c: not c.exists()):     # existing files first, cwd before out
        try:
            return c.resolve().relative_to(root).as_posix()
        except ValueError:
            continue
    return p.as_posix()


def normalize(r: dict, out: Path) -> dict:
    """Figure paths (and the caption keys) relative to `out`, so section.json is portable."""
    caps = {_rel(k, out): v for k, v in r.get("captions", {}).items()}
    r = dict(r)
    r["figures"] = [_rel(f, out) for f in r.get("figures", [])]
    r["captions"] = caps
    return r


def write_report(out: Path, results: list, quick: bool) -> Path:
    lines = ["# Experiments: behavioral cloning's failure modes and their fixes, measured", "",
             f"Produced by `bc-policy experiments{' --quick' if quick else ''}` (fixed seeds; every rate "
             "is over many evaluation seeds with a 95% Wilson interval; means carry 95% Student-t intervals). "
             "Each section's numbers are in `<experiment>/numbers.json`.", ""]
    heads = [r for r in results if r.get("headline")]
    if heads:
        lines += ["| experiment | headline |", "|---|---|"]
        lines += [f"| [{r['name']}](#{r['name']}) | {r['headline']} |" for r in heads]
        lines += [""]
    for r in results:
        r = normalize(r, out)
        lines += [f"<a id=\"{r['name']}\"></a>", "", f"## {r['title']}", ""]
        if r.get("quick") and not quick:
            lines += ["*(this section comes from a --quick run)*", ""]
        if r.get("table_md"):
            lines += [r["table_md"], ""]
        for fig in r.get("figures", []):
            lines += [f"![{r['name']}]({fig})", "", f"*{r.get('captions', {}).get(fig, '')}*", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _task_option(mod, name: str, tasks: str) -> dict:
    """--tasks for the experiments whose run() takes a task list (SystemExit for the others)."""
    if not tasks:
        return {}
    if "tasks" not in inspect.signature(mod.run).parameters:
        raise SystemExit(f"experiment {name!r} has a fixed task set: --tasks is for the experiments "
                         f"that take a task list (metaworld)")
    return {"tasks": tasks}


def main(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MPLBACKEND", "Agg")
    names = [n.strip() for n in args.only.split(",")] if args.only else list(EXPERIMENTS)
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise SystemExit(f"unknown experiment(s) {unknown}; known: {list(EXPERIMENTS)}")
    results, summary, failed = [], [], []
    for name in names:
        t0 = time.time()
        try:
            mod = importlib.import_module(EXPERIMENTS[name])
            if getattr(args, "render", False):
                if not hasattr(mod, "render"):
                    raise SystemExit(f"experiment {name!r} has no --render (rerun it without --render)")
                r = mod.render(out / name)
            else:
                r = mod.run(out / name, quick=args.quick, **_task_option(mod, name, getattr(args, "tasks", "")))
        except Exception:  # noqa: BLE001 - one broken experiment must not lose the others' report
            traceback.print_exc()
            failed.append(name)
            summary.append((name, time.time() - t0, "FAILED (see traceback above)"))
            continue
        r = normalize(r, out)
        r["quick"] = bool(args.quick)
        r["seconds"] = round(time.time() - t0, 1)
        (out / name).mkdir(parents=True, exist_ok=True)
        (out / name / "numbers.json").write_text(json.dumps(r.get("numbers", {}), indent=1, default=float))
        results.append(r)
        summary.append((name, time.time() - t0, r.get("headline", "")))
    # keep other experiments' sections when running a subset
    done = {r["name"] for r in results}
    for name in EXPERIMENTS:
        cached = out / name / "section.json"
        if name not in done and cached.is_file():
            results.append(json.loads(cached.read_text()))
    for r in results:
        if r["name"] in done:
            (out / r["name"] / "section.json").write_text(json.dumps(r, default=str, indent=1))
    order = list(EXPERIMENTS)
    results.sort(key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))
    report = write_report(out, results, args.quick)
    print(f"\n{'experiment':<14} {'time':>7}  headline")
    for name, secs, head in summary:
        print(f"{name:<14} {secs:6.0f}s  {head}")
    print(f"\nreport: {report}")
    return 1 if failed else 0
