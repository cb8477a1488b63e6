"""`bc-policy demo`: from nothing to a deployed, DAgger-improved policy, through the real ROS graph.

Stages (each reused on a re-run unless --force, or unless what it depends on changed):
  1 collect      expert demonstrations: bridge (lock-step) + expert + recorder -> rosbag2 episodes
  2 dataset      bags -> time-aligned training arrays (the contract's assembler)
  3 train        chunked MLP (config/train/chunk_mlp.yaml)
  4 export       ONNX with embedded contract + parity check
  5 evaluate     in-process success over many seeds (core sim + onnxruntime)
  6 closed_loop  the policy node drives the bridge: lock-step episodes + a real-time segment
  7 dagger       rounds of policy rollouts labelled by the expert, retrain, export, hot-swap
  8 report       summary table, plots, report.md
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict

from ..core.sim.env import load_contract

STAGES = ("collect", "dataset", "train", "export", "evaluate", "closed_loop", "dagger", "report")


@dataclass(frozen=True)
class DemoConfig:
    robot: str = "planar3"
    task: str = "curved_reach"
    episodes: int = 50            # expert demonstrations
    max_epochs: int = 60          # training epochs (early stopping may end sooner)
    eval_episodes: int = 100      # in-process evaluation seeds
    ros_episodes: int = 10        # closed-loop episodes through the policy node
    free_run_s: float = 5.0       # real-time segment for rate/latency
    dagger_rounds: int = 3
    dagger_episodes: int = 10     # policy rollouts per DAgger round
    dagger_variant: str = "classic"   # beta-mixed rollouts, every visited state labelled with the expert's K-step plan
    seed: int = 0

    @classmethod
    def from_args(cls, args) -> "DemoConfig":
        base = cls(robot=args.robot, task=args.task)
        if args.quick:
            base = cls(robot=args.robot, task=args.task, episodes=20, max_epochs=30, eval_episodes=50,
                       ros_episodes=4, free_run_s=3.0, dagger_rounds=2, dagger_episodes=5)
        over = {}
        if args.episodes:
            over["episodes"] = args.episodes
        if args.dagger_rounds is not None:
            over["dagger_rounds"] = args.dagger_rounds
        return cls(**{**asdict(base), **over})


class Stages:
    """Runs stages in order, caching each result in <out>/stages.json keyed by its inputs."""

    def __init__(self, out: Path, cfg: DemoConfig, force: bool):
        self.out, self.cfg, self.force = out, cfg, force
        self.path = out / "stages.json"
        self.state: Dict = json.loads(self.path.read_text()) if self.path.is_file() and not force else {}
        self.results: Dict = {}
        self.timings: Dict[str, float] = {}
        self._key = hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode()).hexdigest()[:12]

    def run(self, name: str, fn: Callable[[], Dict]) -> Dict:
        i = STAGES.index(name) + 1
        key = f"{self._key}:{':'.join(str(self.results.get(s, {}).get('_key', '')) for s in STAGES[:i - 1])}"
        cached = self.state.get(name)
        if cached and cached.get("_key") == key:
            print(f"[{i}/{len(STAGES)}] {name}: done earlier, reusing ({self.out / name})")
            self.results[name] = cached
            self.timings[name] = 0.0
            return cached
        print(f"\n[{i}/{len(STAGES)}] {name} ...", flush=True)
        t0 = time.time()
        res = dict(fn())
        res["_key"] = key
        self.timings[name] = time.time() - t0
        res["_seconds"] = self.timings[name]
        self.results[name] = self.state[name] = res
        self.path.write_text(json.dumps(self.state, indent=1, default=str))
        return res


def _tqdm(desc):
    from tqdm.auto import tqdm
    return lambda it: tqdm(it, desc=desc, unit="ep")


def main(args) -> int:
    cfg = DemoConfig.from_args(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    contract = load_contract(cfg.robot, cfg.task)
    st = Stages(out, cfg, args.force)
    logs = out / "logs"
    eval_seeds = list(range(10_000, 10_000 + cfg.eval_episodes))
    t_start = time.time()

    def collect():
        from .collect import collect as run
        r = run(cfg.robot, cfg.task, cfg.episodes, cfg.seed, out / "bags", log_dir=logs / "collect", progress=True)
        return {k: v for k, v in r.items() if isinstance(v, (int, float, str, bool))}

    def dataset():
        from ..core.data.dataset_builder import build_dataset
        ds, report = build_dataset([out / "bags"], contract, out_dir=out / "dataset")
        return {"episodes": len(ds), "frames": ds.num_frames, "hash": ds.content_hash(),
                "excluded": int(report["excluded"])}

    def configs():
        from ..learning.cli import resolve_configs
        from ..learning.config import TrainConfig
        model_cfg, train_cfg = resolve_configs(None)
        return model_cfg, TrainConfig.from_dict({**asdict(train_cfg), "max_epochs": cfg.max_epochs})

    def train():
        from ..learning import train as run
        model_cfg, train_cfg = configs()
        r = run(out / "dataset", model_cfg, train_cfg, out / "train", progress=True)
        return {"epochs": r.epochs, "best_val_loss": r.best_val_loss, "samples_per_second": r.samples_per_second,
                "parameters": r.num_parameters, "train_seconds": r.train_seconds}

    def export():
        from ..learning import export as run
        path = run(out / "train", out / "policy_bc.onnx")
        parity = json.loads((out / "train" / "export_parity.json").read_text())
        return {"model": str(path), "model_id": parity["model_id"], "parity_max_abs_diff": parity["max_abs_diff"],
                "size_mb": path.stat().st_size / 1e6}

    def evaluate():
        from ..core.eval.rollout import evaluate as run
        from .evaluate import plot_rollouts
        r = run(st.results["export"]["model"], cfg.robot, cfg.task, eval_seeds, progress=_tqdm("eval BC"))
        plot_rollouts(r["results"], r["experts"], out / "rollouts_bc.png",
                      f"BC policy vs expert ({cfg.task}), success {r['success']['rate']:.0%}")
        return {"success": r["success"], "deviation_cm": 100 * r["deviation"]["mean"],
                "statuses": r["statuses"], "plot": str(out / "rollouts_bc.png")}

    def closed_loop():
        from .closed_loop import measure_free_run, run_policy_episodes
        from ..core.eval.rollout import evaluate as run
        model = st.results["export"]["model"]
        seeds = eval_seeds[:cfg.ros_episodes]          # the same seeds as in-process: outcomes must agree
        eps = run_policy_episodes(model, cfg.robot, cfg.task, seeds, logs / "closed_loop",
                                  progress=_tqdm("policy node, lock-step"))
        ref = run(model, cfg.robot, cfg.task, seeds, with_expert=False)
        eps["in_process_successes"] = int(ref["success"]["successes"])
        eps["agree"] = sum(o["status"] == r.status and o["steps"] == r.steps
                           for o, r in zip(eps["episodes"], ref["results"]))
        rt = measure_free_run(model, cfg.robot, cfg.task, cfg.free_run_s, logs / "free_run")
        return {"lockstep": eps, "free_run_status": rt}

    def dagger():
        from .dagger.ros import RosOptions, ros_config, run_dagger_ros
        model_cfg, train_cfg = configs()
        return run_dagger_ros(ros_config(robot=cfg.robot, task=cfg.task, initial_dataset=str(out / "dataset"),
                                         initial_model=str(st.results["export"]["model"]), rounds=cfg.dagger_rounds,
                                         variant=cfg.dagger_variant, model_cfg=model_cfg, train_cfg=train_cfg,
                                         episodes_per_round=cfg.dagger_episodes, out_dir=str(out / "dagger"),
                                         eval_seeds=eval_seeds),
                              RosOptions(log_dir=str(logs / "dagger")))

    def report():
        from .demo_report import write_demo_report
        return write_demo_report(out, cfg, st.results, st.timings)

    for name, fn in zip(STAGES, (collect, dataset, train, export, evaluate, closed_loop, dagger, report)):
        st.run(name, fn)
    from .demo_report import format_summary
    print("\n" + format_summary(cfg, st.results, time.time() - t_start))
    return 0
