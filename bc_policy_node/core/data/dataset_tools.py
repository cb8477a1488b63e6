"""Inspecting and curating episode bags and datasets: info tables, delete/merge, plots.

`bag_info` reads only receive times (no deserialization) plus the episode metadata, so it
is cheap on long recordings; `dataset_info` summarizes a built `Dataset`.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np

from .bagread import find_bags, needs_recovery, read_episode_meta, receive_times
from ..contract import Contract
from .episodes import Dataset, DatasetError, Episode


def _rate(times: np.ndarray) -> float:
    if len(times) < 2 or times[-1] == times[0]:
        return 0.0
    return (len(times) - 1) / ((times[-1] - times[0]) * 1e-9)


def _gap(times: np.ndarray) -> float:
    return float(np.max(np.diff(times))) * 1e-9 if len(times) > 1 else 0.0


def bag_info(paths: Iterable, contract: Optional[Contract] = None,
             nominal_hz: Optional[Mapping[str, float]] = None,
             gap_tolerance_s: Optional[float] = None, max_clock_skew_s: float = 0.5) -> Dict[str, Any]:
    """Per-episode and overall summary of episode bags.

    nominal_hz: expected rate per topic; by default the contract's control rate for the
    contract's topics. Gaps are intervals longer than gap_tolerance_s (default: the
    contract's stale_after_s, else 0.1 s).
    Clock: an episode whose header stamps are on another clock than its receive times (sim
    time, e.g. a lock-step run faster than real time) is measured in header time (`clock:
    "sim"`): durations, rates and the gaps of stamped topics; unstamped topics (commands) get
    count / duration and no gap figure.
    """
    nominal = dict(nominal_hz or {})
    if contract is not None:
        for t in contract.topics():
            nominal.setdefault(t, contract.control_rate_hz)
    tol = gap_tolerance_s if gap_tolerance_s is not None else (
        contract.stale_after_s if contract is not None else 0.1)
    episodes: List[Dict[str, Any]] = []
    for bag in find_bags(paths):
        meta = read_episode_meta(bag)
        e: Dict[str, Any] = {"path": str(bag), "name": bag.name,
                             **{k: meta.get(k) for k in ("episode_id", "task", "seed", "source",
                                                         "success", "outcome", "complete")},
                             "recovered": bool(meta.get("recovered")), "topics": {}}
        if needs_recovery(bag):
            e.update(status="needs recovery", duration_s=None, clock=None)
            episodes.append(e)
            continue
        e["status"] = "ok"
        times = receive_times(bag, with_header=True)
        skews = [abs(float(np.median(r - h))) * 1e-9 for _t, r, h in times.values()
                 if h is not None and len(h)]
        sim = bool(skews) and max(skews) > max_clock_skew_s
        e["clock"] = "sim" if sim else "receive"
        if sim:
            stamped = [np.sort(h) for _t, _r, h in times.values() if h is not None and len(h)]
            t0, t1 = min(int(h[0]) for h in stamped), max(int(h[-1]) for h in stamped)
        else:
            t_all = [r for _t, r, _h in times.values() if len(r)]
            t0 = min(int(t[0]) for t in t_all) if t_all else 0
            t1 = max(int(t[-1]) for t in t_all) if t_all else 0
        e["duration_s"] = (t1 - t0) * 1e-9
        for topic, (typ, recv, hdr) in sorted(times.items()):
            ts = np.sort(hdr) if sim and hdr is not None else recv
            measured = not sim or hdr is not None
            if measured:
                gaps = np.diff(ts) * 1e-9 if len(ts) > 1 else np.zeros(0)
                rate, max_gap, n_gaps = _rate(ts), _gap(ts), int(np.sum(gaps > tol))
            else:   # unstamped topic in a sim-clock episode: one message per tick at best
                rate = len(ts) / e["duration_s"] if e["duration_s"] > 0 else 0.0
                max_gap, n_gaps = None, 0
            e["topics"][topic] = {"type": typ, "count": int(len(ts)), "rate_hz": rate,
                                  "nominal_hz": nominal.get(topic), "max_gap_s": max_gap,
                                  "gaps": n_gaps}
        episodes.append(e)
    known = [e["success"] for e in episodes if e.get("success") is not None]
    sources: Dict[str, int] = {}
    for e in episodes:
        sources[str(e.get("source"))] = sources.get(str(e.get("source")), 0) + 1
    return {"episodes": episodes, "num_episodes": len(episodes),
            "total_duration_s": float(sum(e["duration_s"] or 0.0 for e in episodes)),
            "success_rate": (sum(map(bool, known)) / len(known)) if known else None,
            "incomplete": sum(e.get("complete") is False for e in episodes),
            "needs_recovery": sum(e["status"] != "ok" for e in episodes),
            "with_gaps": sum(any(t["gaps"] for t in e["topics"].values()) for e in episodes),
            "sources": sources, "gap_tolerance_s": tol}


def format_bag_info(info: Mapping[str, Any], max_rows: int = 20) -> str:
    """One screen: a row per episode, rates per topic (achieved/nominal), then totals.

    Topics without a message in any episode are left out; `*` marks sim-clock episodes."""
    eps = info["episodes"]
    topics = sorted({t for e in eps for t, s in e["topics"].items() if s["count"]})
    short = {t: t.rsplit("/", 1)[-1][:14] for t in topics}
    w = min(28, max([len(e["name"]) for e in eps[:max_rows]] + [7])) + 2
    head = f"{'episode':<{w}}{'src':<8}{'ok':<4}{'done':<5}{'dur s':>8}  " + \
        "".join(f"{short[t]:>16}" for t in topics) + "  gaps"
    lines = [head, "-" * len(head)]
    for e in eps[:max_rows]:
        succ = {True: "yes", False: "no"}.get(e.get("success"), "?")
        done = {True: "yes", False: "NO"}.get(e.get("complete"), "?")
        name = e["name"][:w - 1]
        if e["status"] != "ok":
            lines.append(f"{name:<{w}}{str(e.get('source'))[:7]:<8}{succ:<4}{done:<5}"
                         f"{'-':>8}  {e['status']}")
            continue
        cells = []
        for t in topics:
            s = e["topics"].get(t)
            if s is None:
                cells.append(f"{'-':>16}")
                continue
            nom = f"/{s['nominal_hz']:g}" if s["nominal_hz"] else ""
            cells.append(f"{s['rate_hz']:>10.1f}{nom:<6}")
        gaps = sum(s["gaps"] for s in e["topics"].values())
        dur = f"{e['duration_s']:.1f}" + ("*" if e.get("clock") == "sim" else " ")
        lines.append(f"{name:<{w}}{str(e.get('source'))[:7]:<8}{succ:<4}{done:<5}"
                     f"{dur:>8}  " + "".join(cells) + f"  {gaps}")
    if len(eps) > max_rows:
        lines.append(f"... {len(eps) - max_rows} more")
    sr = info["success_rate"]
    lines.append("-" * len(head))
    lines.append(f"{info['num_episodes']} episodes, {info['total_duration_s']:.1f} s, success "
                 f"{'n/a' if sr is None else f'{100 * sr:.0f}%'}, incomplete {info['incomplete']}, "
                 f"needs recovery {info['needs_recovery']}, with gaps > "
                 f"{info['gap_tolerance_s']:g} s: {info['with_gaps']}, sources "
                 + ", ".join(f"{k}={v}" for k, v in sorted(info["sources"].items())))
    if any(e.get("clock") == "sim" for e in eps):
        lines.append("* sim clock (header stamps): lock-step runs are timed in simulated seconds")
    return "\n".join(lines)


def dataset_info(ds: Dataset) -> Dict[str, Any]:
    lens = np.array([len(e) for e in ds.episodes])
    known = [e.meta.get("success") for e in ds.episodes if e.meta.get("success") is not None]
    sources: Dict[str, int] = {}
    for e in ds.episodes:
        sources[str(e.meta.get("source"))] = sources.get(str(e.meta.get("source")), 0) + 1
    return {"contract": ds.contract.name, "episodes": len(ds), "frames": ds.num_frames,
            "duration_s": float(sum(len(e) for e in ds.episodes) * ds.contract.dt),
            "frames_min": int(lens.min()) if len(lens) else 0,
            "frames_max": int(lens.max()) if len(lens) else 0,
            "labelled_fraction": (float(sum(e.labelled.sum() for e in ds.episodes)) / ds.num_frames
                                  if ds.num_frames else 0.0),
            "success_rate": (sum(map(bool, known)) / len(known)) if known else None,
            "sources": sources, "flagged": sum(bool(e.meta.get("flags")) for e in ds.episodes),
            "hash": ds.content_hash()}


def format_dataset_info(info: Mapping[str, Any]) -> str:
    sr = info["success_rate"]
    return "\n".join([
        f"dataset for contract {info['contract']} (hash {info['hash']})",
        f"  episodes {info['episodes']}, frames {info['frames']} "
        f"({info['frames_min']}..{info['frames_max']} per episode), {info['duration_s']:.1f} s",
        f"  labelled {100 * info['labelled_fraction']:.1f}%, success "
        f"{'n/a' if sr is None else f'{100 * sr:.0f}%'}, flagged {info['flagged']}",
        "  sources " + ", ".join(f"{k}={v}" for k, v in sorted(info["sources"].items()))])


# ------------------------------------------------------------------------------ curation
Selector = Union[Sequence[int], Callable[[Episode], bool]]


def _matches(sel: Selector, i: int, ep: Episode) -> bool:
    return bool(sel(ep)) if callable(sel) else i in set(sel)


def delete_episodes(ds: Dataset, which: Selector) -> Dataset:
    """A new Dataset without the episodes selected by index list or predicate."""
    return Dataset(ds.contract, [e for i, e in enumerate(ds.episodes) if not _matches(which, i, e)])


def select_episodes(ds: Dataset, which: Selector) -> Dataset:
    return Dataset(ds.contract, [e for i, e in enumerate(ds.episodes) if _matches(which, i, e)])


def merge_datasets(parts: Sequence[Union[Dataset, str, Path]], out_dir=None) -> Dataset:
    """Concatenate datasets (objects or directories) that share one contract."""
    if not parts:
        raise DatasetError("nothing to merge")
    loaded = [p if isinstance(p, Dataset) else Dataset.load(p) for p in parts]
    out = loaded[0]
    for d in loaded[1:]:
        out = out.merged(d)
    if out_dir is not None:
        out.save(out_dir)
    return out


def delete_bags(bag_dirs: Iterable, trash_dir=None) -> List[Path]:
    """Remove episode bag directories (moved to trash_dir if given). Returns what was removed."""
    removed = []
    for bag in find_bags(bag_dirs):
        if trash_dir is not None:
            Path(trash_dir).mkdir(parents=True, exist_ok=True)
            shutil.move(str(bag), str(Path(trash_dir) / bag.name))
        else:
            shutil.rmtree(bag)
        removed.append(bag)
    return removed


# ------------------------------------------------------------------------------ plotting
def plot_episode(ds: Dataset, index: int, path, title: Optional[str] = None) -> Path:
    """PNG: one panel per observation term, one for the actions (unlabelled frames marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = ds.episodes[index]
    c = ds.contract
    sl = c.slices()
    n = len(c.observation) + 1
    fig, axes = plt.subplots(n, 1, figsize=(9, 1.9 * n + 0.6), sharex=True, squeeze=False)
    for ax, term in zip(axes[:-1, 0], c.observation):
        vals = ep.obs[:, sl[term.name]]
        labels = list(term.joints) if term.joints else [str(i) for i in range(term.size)]
        for j in range(vals.shape[1]):
            ax.plot(ep.t, vals[:, j], lw=1, label=labels[j])
        ax.set_ylabel(term.name)
        ax.legend(loc="upper right", fontsize=7, ncol=min(4, vals.shape[1]))
    ax = axes[-1, 0]
    for j, name in enumerate(c.action.joints):
        ax.step(ep.t, ep.act[:, j], where="post", lw=1, label=name)
    if (~ep.labelled).any():
        ax.plot(ep.t[~ep.labelled], ep.act[~ep.labelled, 0], "x", color="k", ms=3, label="unlabelled")
    ax.set_ylabel(f"action ({c.action.kind})")
    ax.set_xlabel("t [s]")
    ax.legend(loc="upper right", fontsize=7, ncol=min(4, c.act_dim + 1))
    m = ep.meta
    fig.suptitle(title or f"episode {m.get('episode_id', index)}  source={m.get('source')}  "
                 f"success={m.get('success')}  frames={len(ep)}", fontsize=9)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
