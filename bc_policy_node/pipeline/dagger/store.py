"""What a DAgger run leaves on disk, and the views of it: round records, round data, tables, plot.

Owns the round folder layout (written once here, read by both collectors)::

    <round0>/data/ (the demonstrations)  run/  policy.onnx  eval.json  record.json  [ensemble/]
    <out>/round_<i>/data/ (this round's new episodes only)  collect.json  run/  policy.onnx
                    eval.json  record.json  [episodes.json, bags: ROS collector]
    <out>/dagger_config.json (the settings the rounds were made with)

A round is finished when its ``record.json`` exists; its data is complete when
``data/meta.json`` exists (written last). `RoundRecord` is one row of the result; `aggregate`
is every earlier round's data as one `Dataset`.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ...core.contract import Contract
from ...core.data.episodes import Dataset, DatasetError, Episode
from ...core.types import json_default

RECORD_FILE = "record.json"
CONFIG_FILE = "dagger_config.json"
COLLECT_FILE = "collect.json"


@dataclass
class RoundRecord:
    round: int
    variant: str
    beta: Optional[float]
    episodes_new: int
    frames_new: int
    labels_new: int
    frames_total: int
    labels_total: int                      # cumulative expert labels incl. the initial demos
    success: Dict[str, Any]
    deviation: Dict[str, Any]
    final_distance: Dict[str, Any]
    statuses: Dict[str, int]
    collect: Dict[str, Any] = field(default_factory=dict)
    timing: Dict[str, float] = field(default_factory=dict)
    policy: str = ""
    deviation_mean_by_t: List[float] = field(default_factory=list)
    extra: Dict[str, Any] = field(default_factory=dict)

    def row(self) -> str:
        s = self.success
        return (f"| {self.variant} | {self.round} | {'' if self.beta is None else f'{self.beta:.3g}'} | "
                f"{100 * s['rate']:.0f}% [{100 * s['ci_low']:.0f}, {100 * s['ci_high']:.0f}] | "
                f"{self.labels_new} | {self.labels_total} | {self.frames_total} | "
                f"{100 * self.deviation['mean']:.2f} |")


# ------------------------------------------------------------------------------ json
def write_json(path: Path, data) -> None:
    """Atomic (tmp + rename): a crash leaves the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=json_default))
    tmp.replace(path)


def read_json(path: Path, default=None):
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else default


# ------------------------------------------------------------------------------ folders
def check_round_config(d: Path, cfg: Mapping[str, Any]) -> None:
    """Round folders are only reused for the settings that produced them (ValueError naming the
    settings that differ); a new folder records `cfg`."""
    d = Path(d)
    f = d / CONFIG_FILE
    cfg = json.loads(json.dumps(cfg, default=str))
    if f.is_file():
        old = json.loads(f.read_text())
        if old != cfg:
            diff = sorted(k for k in set(old) | set(cfg) if old.get(k) != cfg.get(k))
            raise ValueError(f"{d} holds DAgger rounds made with other settings ({diff}); "
                             f"use another out_dir or delete it")
    else:
        d.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(cfg, indent=1))


def load_record(d: Path) -> Optional[RoundRecord]:
    data = read_json(Path(d) / RECORD_FILE)
    return None if data is None else RoundRecord(**data)


def save_record(d: Path, rec: RoundRecord) -> None:
    write_json(Path(d) / RECORD_FILE, asdict(rec))


def has_round_data(d: Path) -> bool:
    return (Path(d) / "data" / "meta.json").is_file()


def save_round_data(episodes: Sequence[Episode], contract: Contract, directory) -> Path:
    return Dataset(contract, episodes).save(directory)


def load_round_data(directory) -> List[Episode]:
    return Dataset.load(directory).episodes


def save_collected(d: Path, episodes: Sequence[Episode], contract: Contract, stats: Mapping[str, Any]) -> None:
    """A round's new data and its collection statistics (meta.json of the data last)."""
    write_json(Path(d) / COLLECT_FILE, dict(stats))
    save_round_data(episodes, contract, Path(d) / "data")


def load_collected(d: Path) -> Tuple[List[Episode], Dict[str, Any]]:
    return load_round_data(Path(d) / "data"), read_json(Path(d) / COLLECT_FILE, {})


# ------------------------------------------------------------------------------ data
def aggregate(parts: Sequence[Sequence[Episode]], contract: Optional[Contract] = None) -> Dataset:
    """All earlier data in one `Dataset` (episodes keep their `labelled` masks and meta)."""
    eps = [e for part in parts for e in part]
    if not eps:
        raise DatasetError("nothing to aggregate")
    if contract is None:
        raise ValueError("aggregate needs the contract")
    return Dataset(contract, eps)


def labels_of(episodes: Iterable[Episode]) -> int:
    """Expert labels (labelled frames) in `episodes`: what the data cost."""
    return int(sum(int(e.labelled.sum()) for e in episodes))


# ------------------------------------------------------------------------------ views
TABLE_HEADER = ("| variant | round | beta | success (95% CI) | new labels | labels (cum.) | frames (cum.) | "
                "mean dev. from expert (cm) |\n|---|---|---|---|---|---|---|---|")


def format_table(records: Sequence[RoundRecord]) -> str:
    return "\n".join([TABLE_HEADER] + [r.row() for r in records])


def fmt_rate(s: Mapping[str, Any]) -> str:
    return f"{100 * s['rate']:.0f}% [{100 * s['ci_low']:.0f}, {100 * s['ci_high']:.0f}] (n={s['n']})"


def plot_rounds(records: Sequence[RoundRecord], path: Path, title: str = "") -> Path:
    """Success (95% CI, in-process evaluation) and cumulative expert labels vs round (plus the
    success of the round's ROS rollouts when the records have it)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = [rec.round for rec in records]
    rate = np.array([rec.success["rate"] for rec in records]) * 100
    lo = np.array([rec.success["ci_low"] for rec in records]) * 100
    hi = np.array([rec.success["ci_high"] for rec in records]) * 100
    labels = [rec.labels_total for rec in records]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.errorbar(r, rate, yerr=[rate - lo, hi - rate], marker="o", capsize=3, color="C0",
                label="success (in-process eval, 95% CI)")
    ros = [(rec.round, 100 * rec.collect["ros_success"]["rate"]) for rec in records
           if rec.collect.get("ros_success")]
    if ros:
        ax.plot([x for x, _ in ros], [y for _, y in ros], "s--", color="C2", alpha=0.8,
                label="success of the round's ROS rollouts (gated)")
    ax.set_xlabel("DAgger round")
    ax.set_ylabel("success (%)")
    ax.set_ylim(-2, 102)
    ax.set_xticks(r)
    ax2 = ax.twinx()
    ax2.bar(r, labels, alpha=0.25, color="C1", width=0.5, label="expert labels (cumulative)")
    ax2.set_ylabel("expert labels (cumulative)")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="lower right", fontsize=8)
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.set_title(title or "DAgger")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
