"""The demo's one-screen summary and its report.md."""
from __future__ import annotations

from pathlib import Path
from typing import Dict


def _rate(s: Dict) -> str:
    if not s:
        return "n/a"
    return f"{s['rate']:.0%} [{s['ci_low']:.0%}, {s['ci_high']:.0%}]"


def _dagger_rows(d: Dict):
    for r in d.get("rounds", []):
        yield r.get("round"), r.get("success", {}), r.get("labels_cumulative", r.get("labels", 0))


def summary_rows(cfg, res: Dict):
    ev, cl, dg = res.get("evaluate", {}), res.get("closed_loop", {}), res.get("dagger", {})
    st = cl.get("free_run_status", {})
    lock = cl.get("lockstep", {})
    rounds = list(_dagger_rows(dg))
    final = rounds[-1][1] if rounds else {}
    rows = [
        ("task", f"{cfg.robot} / {cfg.task}"),
        ("demonstrations", f"{res.get('dataset', {}).get('episodes', '?')} episodes, "
                           f"{res.get('dataset', {}).get('frames', '?')} frames (rosbag2/MCAP)"),
        ("policy", f"chunk MLP, {res.get('train', {}).get('parameters', 0):,} params, "
                   f"ONNX {res.get('export', {}).get('size_mb', 0):.2f} MB, parity "
                   f"{res.get('export', {}).get('parity_max_abs_diff', float('nan')):.1e}"),
        ("success, BC (in-process)", f"{_rate(ev.get('success'))} over {ev.get('success', {}).get('n', 0)} seeds"),
        ("success, BC (policy node)", f"{lock.get('successes', 0)}/{lock.get('n', 0)} lock-step episodes through ROS "
                                      f"(in-process on the same seeds: {lock.get('in_process_successes', '?')}/"
                                      f"{lock.get('n', 0)}; {lock.get('agree', '?')}/{lock.get('n', 0)} identical)"),
        ("success, after DAgger", f"{_rate(final)} after {len(rounds) - 1 if rounds else 0} rounds"),
        ("expert labels used", f"{rounds[-1][2] if rounds else 0:,} (DAgger, cumulative)"),
        ("control rate achieved", f"{st.get('achieved_rate_hz', 0):.1f} Hz of {st.get('target_rate_hz', 0):.0f} Hz, "
                                  f"{st.get('missed_ticks', 0)} missed of {st.get('ticks', 0)} ticks"),
        ("tick compute p50/p99", f"{st.get('tick_time_p50_us', 0):.0f} / {st.get('tick_time_p99_us', 0):.0f} us"),
        ("lock-step round trip", f"{lock.get('round_trip_ms_median', float('nan')):.2f} ms per tick, median "
                                 f"(bridge -> policy node -> bridge, wall clock)"),
    ]
    return rows


def format_summary(cfg, res: Dict, total_seconds: float) -> str:
    rows = summary_rows(cfg, res)
    w = max(len(k) for k, _ in rows) + 2
    line = "=" * 72
    body = "\n".join(f"{k:<{w}}{v}" for k, v in rows)
    rounds = list(_dagger_rows(res.get("dagger", {})))
    table = ""
    if rounds:
        table = "\n\nround  success (95% CI)        expert labels\n" + "\n".join(
            f"{r!s:>5}  {_rate(s):<24} {n:>8,}" for r, s, n in rounds)
    return (f"{line}\nbc_policy_node demo — summary ({total_seconds / 60:.1f} min)\n{line}\n{body}{table}\n{line}\n"
            f"report: {res.get('report', {}).get('report', '?')}")


def write_demo_report(out: Path, cfg, res: Dict, timings: Dict[str, float]) -> Dict:
    rows = summary_rows(cfg, res)
    md = ["# bc_policy_node demo", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    rounds = list(_dagger_rows(res.get("dagger", {})))
    if rounds:
        md += ["", "## DAgger rounds", "", "| round | success (95% CI) | expert labels |", "|---|---|---|"]
        md += [f"| {r} | {_rate(s)} | {n:,} |" for r, s, n in rounds]
    md += ["", "## Figures", ""]
    for name, caption in (("rollouts_bc.png", "BC policy (solid) vs expert (dashed) end-effector paths."),
                          ("dagger/success_vs_round.png", "Success and expert labels per DAgger round.")):
        if (out / name).is_file():
            md += [f"![{name}]({name})", "", f"*{caption}*", ""]
    md += ["## Stage timings", "", "| stage | seconds |", "|---|---|"]
    md += [f"| {k} | {v:.1f} |" for k, v in timings.items()]
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n")
    return {"report": str(path)}
