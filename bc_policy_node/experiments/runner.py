"""`bc-policy experiments`: run the registered experiments and write results/report.md."""
from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

# name -> module (each has run(out_dir, quick) -> dict); order = report order
EXPERIMENTS = {
    "drift": "bc_policy_node.experiments.exp_drift",
    "chunking": "bc_policy_node.experiments.exp_chunking",
    "bimodal": "bc_policy_node.experiments.exp_bimodal",
    "depth": "bc_policy_node.experiments.exp_depth",
    "deep_bimodal": "bc_policy_node.experiments.exp_deep_bimodal",
    "dagger": "bc_policy_node.experiments.exp_dagger",
}


def write_report(out: Path, results: list, quick: bool) -> Path:
    lines = ["# Experiments: behavioral cloning's failure modes and their fixes, measured", "",
             f"Produced by `bc-policy experiments{' --quick' if quick else ''}` (fixed seeds; every rate "
             "is over many evaluation seeds with a 95% Wilson interval).", ""]
    for r in results:
        lines += [f"## {r['title']}", ""]
        if r.get("table_md"):
            lines += [r["table_md"], ""]
        for fig in r.get("figures", []):
            rel = Path(fig).relative_to(out) if Path(fig).is_absolute() else Path(fig)
            lines += [f"![{r['name']}]({rel.as_posix()})", "", f"*{r.get('captions', {}).get(str(fig), '')}*", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def main(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = [n.strip() for n in args.only.split(",")] if args.only else list(EXPERIMENTS)
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise SystemExit(f"unknown experiment(s) {unknown}; known: {list(EXPERIMENTS)}")
    results, summary = [], []
    for name in names:
        t0 = time.time()
        mod = importlib.import_module(EXPERIMENTS[name])
        r = mod.run(out / name, quick=args.quick)
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
    results.sort(key=lambda r: order.index(r["name"]))
    report = write_report(out, results, args.quick)
    print(f"\n{'experiment':<14} {'time':>7}  headline")
    for name, secs, head in summary:
        print(f"{name:<14} {secs:6.0f}s  {head}")
    print(f"\nreport: {report}")
    return 0
