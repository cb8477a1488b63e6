"""`bc-policy dagger`: the round loop (`loop.run_rounds`) with its rollouts through the real ROS graph.

Owns the ROS `Collector` (`RosCollector`) and the ROS view of a run (per-round table,
``summary.json``, ``success_vs_round.png``). One graph runs for all rounds (real processes,
lock-step; `graph.DaggerGraph`)::

    mujoco_bridge (lockstep, no auto reset) --/joint_states,/task_state--> policy, dagger, recorder
    policy (lock-step on sim time) --/dagger/policy_command--> dagger --/<controller>/commands--> bridge
    dagger --/expert/query--> expert (drive:=false: labels only)
    dagger --/dagger/frame_tag--> recorder (one MCAP bag per episode, contract topics + frame tags)

A round's collection: the current policy (hot-swapped into the RUNNING policy node; its
~/status must report the new model id) rolls out the round's seeds; the dagger node's gate
decides who acts (classic: beta_i set on the running node; human_gated: a
`core.dagger.gates.SimulatedHuman` in this process watches /task_state and drives
/dagger/intervention; robot_gated: the dagger node restarted with the round's ensemble and
threshold). The round's dataset is built from its bags (`core.data.dataset_builder`: FrameTag
alignment, expert labels where `labelled`, with chunk labels: the expert's planned chunk from
each labelled observation carried by FrameTag.expert_action). A partial round keeps the
episodes listed in ``episodes.json`` and continues with the next seed.
"""
from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ...core.dagger.gates import SimulatedHuman
from ...core.data.dataset_builder import build_dataset
from ...core.data.episodes import Episode
from ...core.eval.metrics import success_summary
from ...core.sim.disturbance import Pushes
from ...core.sim.env import load_contract
from ..dagger_eval import disturbance_key, progress_bar, say
from .config import DaggerConfig
from .loop import RoundPlan, chunking, model_id, run_rounds
from .store import RoundRecord, fmt_rate, format_table, plot_rounds, read_json, write_json

if TYPE_CHECKING:   # rclpy only once a graph is started: the rest of the loop runs without ROS
    from .graph import DaggerGraph

EPISODES_FILE = "episodes.json"
SUMMARY_FILE = "summary.json"
PLOT_FILE = "success_vs_round.png"
ROLLOUT_SEED0 = 200_000          # round i, episode j: seed ROLLOUT_SEED0 + 1000 i + j
ROS_EVAL_SEED0 = 300_000


@dataclass(frozen=True)
class RosOptions:
    """The ROS collector's own settings. dagger_params: extra dagger-node parameters (e.g.
    expert_timeout_periods; an explicit ``label_chunk_length`` wins over the run's chunk
    labels). ros_eval_episodes: classic only, policy-only (beta 0) episodes through the graph
    after each hot swap (not recorded)."""
    log_dir: Optional[str] = None
    dagger_params: Mapping[str, Any] = field(default_factory=dict)
    ros_eval_episodes: int = 0
    episode_timeout_s: float = 120.0


def ros_config(**settings) -> DaggerConfig:
    """A `DaggerConfig` with the ROS loop's defaults (curved_reach, 3 rounds, its own seeds)."""
    base = dict(task="curved_reach", rounds=3, out_dir="runs/dagger", rollout_seed0=ROLLOUT_SEED0,
                threshold_quantile=0.99)
    return DaggerConfig(**{**base, **settings})


def summarize_episodes(episodes: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """ROS rollout statistics of one round (success of the gated episodes, who acted, why)."""
    actors: Dict[str, int] = {}
    reasons: Dict[str, int] = {}
    for e in episodes:
        for dst, src in ((actors, e.get("actors", {})), (reasons, e.get("reasons", {}))):
            for k, v in src.items():
                dst[k] = dst.get(k, 0) + int(v)
    frames = sum(int(e.get("frames", 0)) for e in episodes)
    return {"episodes": len(episodes), "ros_success": success_summary([bool(e["success"]) for e in episodes]),
            "frames_tagged": frames, "labelled_tagged": sum(int(e.get("labelled", 0)) for e in episodes),
            "actors": actors, "gate_reasons": reasons,
            "expert_share": (actors.get("expert", 0) + actors.get("intervention", 0)) / max(frames, 1),
            "missing_steps": sum(int(e.get("missing_steps", 0)) for e in episodes),
            "statuses": {s: sum(e["status"] == s for e in episodes) for s in sorted({e["status"] for e in episodes})},
            "seconds": sum(float(e.get("seconds", 0.0)) for e in episodes)}


def build_round_dataset(done: Sequence[Mapping[str, Any]], contract, data_dir: Path, round_index: int,
                        variant: str, beta: Optional[float]) -> Tuple[List[Episode], Dict[str, Any]]:
    """The round's bags -> its episodes (FrameTag alignment), meta like the in-process rounds',
    and a build summary; the full build report goes to ``data_dir/build_report.json``."""
    bags = [e["bag"] for e in done if e.get("bag")]
    ds, report = build_dataset(bags, contract, out_dir=None)
    by_bag = {str(Path(e["bag"])): e for e in done}
    for ep in ds.episodes:
        src = by_bag.get(str(Path(ep.meta.get("bag", ""))), {})
        ep.meta.update(round=round_index, variant=variant, source=f"dagger_{variant}",
                       seed=src.get("seed", ep.meta.get("seed")), labels=int(ep.labelled.sum()),
                       status=src.get("status"), success=src.get("success"),
                       actors=src.get("actors", {}), gate_reasons=src.get("reasons", {}))
        if beta is not None:
            ep.meta["beta"] = float(beta)
    data_dir.mkdir(parents=True, exist_ok=True)
    write_json(data_dir / "build_report.json", report)
    summary = {"bags": report["bags"], "included": report["included"], "excluded": report["excluded"],
               "frames": report["frames"],
               "alignments": sorted({e.get("alignment", "") for e in report["episodes"] if e.get("alignment")}),
               "excluded_reasons": [e.get("reasons") for e in report["episodes"] if e.get("status") == "excluded"]}
    if not ds.episodes:
        raise RuntimeError(f"round {round_index}: no usable episode in {len(bags)} bags "
                           f"({summary['excluded_reasons']}); see {data_dir / 'build_report.json'}")
    return ds.episodes, summary


class RosCollector:
    """`loop.Collector` through the ROS graph (module docstring). The graph is started at the
    first round that needs rollouts and runs until `close`."""
    name = "ros"

    def __init__(self, cfg: DaggerConfig, options: RosOptions = RosOptions()):
        self.cfg, self.options = cfg, options
        self.contract = load_contract(cfg.robot, cfg.task)
        _, _, k, chunk_labels = chunking(cfg)
        self.dagger_params = {"label_chunk_length": k if chunk_labels and k > 1 else 0,
                              **dict(options.dagger_params)}
        self.log_dir = Path(options.log_dir) if options.log_dir is not None else cfg.out / "logs"
        self.graph: Optional["DaggerGraph"] = None

    def identity(self) -> Dict[str, Any]:
        return {"collector": "ros", "dagger_params": dict(self.dagger_params)}

    def _graph_for(self, policy: Path, beta: Optional[float], timing: Dict[str, float]) -> "DaggerGraph":
        c = self.cfg
        if self.graph is None:
            from .graph import DaggerGraph

            pushes = Pushes.from_spec(c.disturbance)
            say(c.progress, f"[dagger] starting the graph (logs in {self.log_dir})" + (
                "" if pushes is None else f"; the bridge pushes the arm {pushes.magnitude:g} rad about every "
                f"{pushes.interval:g} ticks, at most {pushes.count} per episode (evaluation pushed alike)"))
            t0 = time.perf_counter()
            self.graph = DaggerGraph(c.robot, c.task, policy, c.variant, self.log_dir, c.out / "bags",
                                     beta=beta if beta is not None else 0.0, dagger_params=self.dagger_params,
                                     execution_mode=c.execution_mode,
                                     episode_timeout_s=self.options.episode_timeout_s, disturbance=c.disturbance)
            timing["graph_start"] = time.perf_counter() - t0
        elif self.graph.model_id != model_id(policy):
            self.graph.swap(policy)
        return self.graph

    def collect(self, plan: RoundPlan) -> Tuple[List[Episode], Dict[str, Any]]:
        c, i = self.cfg, plan.index
        timing: Dict[str, float] = {}
        dg = self._graph_for(plan.policy, plan.beta, timing)
        if plan.beta is not None:
            dg.set_beta(plan.beta)
        if plan.ensemble is not None:
            dg.restart_dagger({"variant": "robot_gated", "ensemble_models": [str(m) for m in plan.ensemble.members],
                               "uncertainty_source": "ensemble", "uncertainty_threshold": plan.ensemble.threshold,
                               "query_budget": int(c.query_budget)})
        done: List[Dict[str, Any]] = read_json(plan.directory / EPISODES_FILE, [])
        todo = [(j, s) for j, s in enumerate(plan.seeds) if s not in {e["seed"] for e in done}]
        bar = progress_bar(c.progress, f"round {i} ROS rollouts")
        it = bar(todo) if bar else todo
        t0 = time.perf_counter()
        for j, s in it:
            human = (SimulatedHuman(plan.references[s].ee, **c.human) if plan.references is not None else None)
            done.append(dg.run_episode(s, episode_id=1000 * i + j, record=True, human=human,
                                       notes=f"dagger round {i} {c.variant}"
                                             + ("" if plan.beta is None else f" beta={plan.beta:.4g}")))
            write_json(plan.directory / EPISODES_FILE, done)
            if bar is not None and hasattr(it, "set_postfix"):
                it.set_postfix(success=f"{sum(x['success'] for x in done)}/{len(done)}",
                               labels=sum(x["labelled"] for x in done))
        timing["rollout"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        new, build = build_round_dataset(done, self.contract, plan.directory / "data", i, c.variant, plan.beta)
        timing["dataset"] = time.perf_counter() - t0
        stats = summarize_episodes(done)
        stats.update(build=build, timing=timing)
        say(c.progress, f"[dagger] round {i}: ROS rollouts success "
                        f"{stats['ros_success']['successes']}/{stats['ros_success']['n']}")
        return new, stats

    def deploy(self, round_index: int, policy: Path, extra: Dict[str, Any], timing: Dict[str, float]) -> None:
        dg = self.graph
        if dg is None:
            return
        extra["swap"] = dg.swap(policy)
        timing["swap"] = extra["swap"]["seconds"]
        say(self.cfg.progress, f"[dagger] hot swap {extra['swap']['from']} -> {extra['swap']['to']} "
                               f"(policy status reports {extra['swap']['status_model_id']})")
        if self.options.ros_eval_episodes:
            t0 = time.perf_counter()
            extra["ros_eval"] = self._ros_eval(round_index)
            extra["ros_eval_success"] = extra["ros_eval"].get("ros_success")
            timing["ros_eval"] = time.perf_counter() - t0

    def _ros_eval(self, round_index: int) -> Dict[str, Any]:
        """Policy-only episodes through the graph after the swap (beta 0), not recorded."""
        if self.cfg.variant != "classic":
            return {"skipped": "policy-only ROS evaluation is run for the classic variant (beta 0)"}
        dg = self.graph
        dg.set_beta(0.0)
        seeds = [ROS_EVAL_SEED0 + 1000 * round_index + j for j in range(self.options.ros_eval_episodes)]
        bar = progress_bar(self.cfg.progress, f"round {round_index} ROS eval (policy only)")
        eps = [dg.run_episode(s, episode_id=900_000 + 1000 * round_index + j, record=False)
               for j, s in enumerate(bar(seeds) if bar else seeds)]
        return summarize_episodes(eps)

    def close(self) -> None:
        if self.graph is not None:
            self.graph.close()
            self.graph = None


# ============================================================================ the ROS view of a run
def _round_row(rec: RoundRecord) -> Dict[str, Any]:
    ros = rec.collect.get("ros_success") or {}
    return {"round": rec.round, "beta": rec.beta, "success": rec.success, "labels_new": rec.labels_new,
            "labels_cumulative": rec.labels_total, "frames_cumulative": rec.frames_total,
            "ros_success": ros, "ros_eval_success": rec.extra.get("ros_eval_success"),
            "model_id": rec.extra.get("model_id"), "policy": rec.policy,
            "expert_share": rec.collect.get("expert_share"), "gate_reasons": rec.collect.get("gate_reasons"),
            "deviation_cm": 100 * rec.deviation["mean"] if rec.deviation else None,
            "timing": rec.timing}


def format_ros_table(records: Sequence[RoundRecord]) -> str:
    """Per-round markdown table: the ROS rollouts (gated), the policy-only ROS episodes (if
    any), labels and the in-process evaluation."""
    policy_only = any(rec.extra.get("ros_eval_success") for rec in records)
    head = ("| round | beta | ROS rollouts success | expert share | "
            + ("ROS policy-only success | " if policy_only else "")
            + "new labels | labels (cum.) | in-process success (95% CI) | model |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for rec in records:
        ros = rec.collect.get("ros_success")
        share = rec.collect.get("expert_share")
        ev = rec.extra.get("ros_eval_success")
        cells = [str(rec.round), "" if rec.beta is None else f"{rec.beta:.3g}",
                 "" if not ros else f"{ros['successes']}/{ros['n']}",
                 "" if share is None else f"{100 * share:.0f}%"]
        if policy_only:
            cells.append("" if not ev else f"{ev['successes']}/{ev['n']}")
        cells += [str(rec.labels_new), str(rec.labels_total), fmt_rate(rec.success), rec.extra.get("model_id", "")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_dagger_ros(cfg: DaggerConfig, options: RosOptions = RosOptions(),
                   on_round: Optional[Callable[[RoundRecord, "DaggerGraph"], None]] = None) -> Dict[str, Any]:
    """DAgger through the ROS graph (module docstring). Returns a JSON-ready summary:
    ``rounds`` (round, beta, success, labels_new, labels_cumulative, ros_success, model_id, ...),
    ``table`` (markdown), ``plot`` (PNG path), ``out``. on_round(record, graph): called after
    each finished round while the graph runs (tests)."""
    collector = RosCollector(cfg, options)
    hook = None if on_round is None else (lambda rec: collector.graph is not None and on_round(rec, collector.graph))
    records = run_rounds(cfg, collector, hook)
    table = format_ros_table(records)
    plot = plot_rounds(records, cfg.out / PLOT_FILE, f"DAgger ({cfg.variant}) through ROS: {cfg.robot}/{cfg.task}")
    summary = {"robot": cfg.robot, "task": cfg.task, "variant": cfg.variant, "out": str(cfg.out), "plot": str(plot),
               "label_chunk_length": int(collector.dagger_params["label_chunk_length"]),
               "disturbance": disturbance_key(cfg.disturbance),
               "rounds": [_round_row(r) for r in records], "table": table,
               "table_inprocess_format": format_table(records)}
    write_json(cfg.out / SUMMARY_FILE, summary)
    say(cfg.progress, "\n" + table + f"\n\nplot: {plot}")
    return summary


# ============================================================================ CLI
def _terminate(signum, frame):
    raise SystemExit(128 + signum)


def main(args) -> int:
    """`bc-policy dagger` (arguments in cli.py). SIGTERM ends it like Ctrl-C: the graph's node
    processes are stopped and the round folders stay resumable."""
    signal.signal(signal.SIGTERM, _terminate)
    eval0 = int(args.eval_seed)
    cfg = ros_config(robot=args.robot, task=args.task, initial_dataset=args.dataset, initial_model=args.model,
                     variant=args.variant, rounds=args.rounds, episodes_per_round=args.episodes_per_round,
                     out_dir=args.out, eval_seeds=range(eval0, eval0 + int(args.eval_episodes)),
                     beta_kind=args.beta_schedule, beta0=args.beta0, beta_decay=args.beta_decay,
                     initial_demos=args.demos, rollout_seed0=args.seed,
                     train_cfg={"max_steps": int(args.train_steps)} if args.train_steps else None,
                     disturbance=Pushes.from_cli(args))
    options = RosOptions(log_dir=args.log_dir, ros_eval_episodes=args.ros_eval_episodes,
                         dagger_params={"expert_timeout_periods": float(args.expert_timeout_periods)}
                         if args.expert_timeout_periods else {})
    summary = run_dagger_ros(cfg, options)
    return 0 if summary["rounds"] else 1
