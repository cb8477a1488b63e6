"""`bc-policy`: the command-line face of the pipeline.

Each subcommand imports its implementation lazily, so `bc-policy eval` never loads torch and
`bc-policy train` never loads rclpy.
"""
from __future__ import annotations

import argparse
import importlib
import sys

ROBOTS = ("planar3", "arm7", "sawyer")     # sawyer: Meta-World's arm (metaworld/<name> tasks)
TASKS = ("curved_reach", "bimodal", "long_horizon")


def _task(value: str) -> str:
    """A package task, or metaworld/<name> (checked against the installed Meta-World when used)."""
    if value in TASKS or value.startswith("metaworld/"):
        return value
    raise argparse.ArgumentTypeError(f"invalid task {value!r}: one of {', '.join(TASKS)} or metaworld/<name> "
                                     f"(e.g. metaworld/pick-place-v3)")


def _robot_task(p: argparse.ArgumentParser) -> None:
    p.add_argument("--robot", default="planar3", choices=ROBOTS, help="robot model (models/<robot>.xml)")
    p.add_argument("--task", default="curved_reach", type=_task,
                   help=f"sim task: {' | '.join(TASKS)} | metaworld/<name> (with --robot sawyer)")


def _push_args(p, when: str) -> None:
    p.add_argument("--push-magnitude", type=float, default=0.0,
                   help=f"push the arm by random joint offsets of this norm (rad) {when}; seeded per episode, "
                        f"core/sim/disturbance.py (0 = calm)")
    p.add_argument("--push-interval", type=float, default=80.0, help="mean control ticks between pushes")
    p.add_argument("--push-count", type=int, default=3, help="pushes per episode at most")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bc-policy", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--version", action="store_true", help="print the version and exit")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    def add(name, target, help_):
        p = sub.add_parser(name, help=help_, description=help_,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        p.set_defaults(_target=target)
        return p

    p = add("demo", "bc_policy_node.pipeline.demo:main",
            "main job: collect -> dataset -> train -> export -> policy node closed loop -> DAgger -> summary")
    _robot_task(p)
    p.add_argument("--quick", action="store_true", help="smaller run (within ~3 minutes)")
    p.add_argument("--out", default="runs/demo", help="run folder (stages already finished are reused)")
    p.add_argument("--force", action="store_true", help="redo every stage")
    p.add_argument("--episodes", type=int, default=None, help="expert demonstrations to collect")
    p.add_argument("--dagger-rounds", type=int, default=None, help="DAgger rounds")

    p = add("collect", "bc_policy_node.pipeline.collect:main",
            "record N seeded expert episodes through the ROS graph (bridge + expert + recorder, lock-step)")
    _robot_task(p)
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--seed", type=int, default=0, help="seed of the first episode (then seed+1, ...)")
    p.add_argument("--out", default="data/bags", help="folder for the episode bags")
    p.add_argument("--contract", default=None,
                   help="contract YAML whose topics are recorded (default: the robot/task's shipped one); "
                        "its camera terms make the bridge publish those cameras, e.g. "
                        "config/contracts/camera/planar3_curved_reach.yaml")

    p = add("dataset", "bc_policy_node.pipeline.dataset_cli:main",
            "build / inspect / edit datasets (details: bc_policy_node/pipeline/dataset_cli.py)")
    p.add_argument("action", choices=("build", "info", "plot", "merge", "delete", "export-lerobot",
                                      "import-lerobot", "recover"))
    p.add_argument("paths", nargs="*", help="bag folders (build, info, delete, recover) or dataset folders "
                   "(info, plot, merge, delete, export-lerobot) or a LeRobot dataset folder (import-lerobot)")
    p.add_argument("--contract", default=None,
                   help="contract YAML (build; default: the contract the recorder stored in the bags; "
                        "import-lerobot: default the one export-lerobot stored)")
    p.add_argument("--out", default=None, help="output folder (build, merge, export-lerobot, import-lerobot; "
                   "plot, delete: optional)")
    p.add_argument("--episodes", default=None,
                   help="e.g. 0,3,5-7: dataset episode indices (plot, delete) or bag episode ids (delete)")
    p.add_argument("--gap-tolerance", type=float, default=None, help="s; longer holes flag an episode")
    p.add_argument("--image-alignment", choices=("asof", "nearest"), default="asof",
                   help="build, cameras: a frame's image is the newest one at or before it (asof) or the "
                        "closest in time (nearest); never interpolated")
    p.add_argument("--image-max-age", type=float, default=None, metavar="S",
                   help="build, cameras: s; a frame whose image is further away is unlabelled (not a "
                        "sample) and counted (default: the term's max_age_s, else stale_after_s)")
    p.add_argument("--keep-flagged", action="store_true", help="build: keep episodes with gaps / rate flags")
    p.add_argument("--include-incomplete", action="store_true",
                   help="build: keep interrupted / recovered episodes")
    p.add_argument("--split-by", default="none", metavar="RULE",
                   help="build: cut long bags into episodes: none | topic:/NAME[:FIELD] (Bool marker: "
                        "episode while true; TaskState: per episode_id; other: per value) | service:/NAME "
                        "(service-event log: a cut per call; SetBool: true starts, false ends) | gap:SECONDS "
                        "(no action message for longer)")

    p = add("train", "bc_policy_node.learning.cli:train_main", "train a BC policy on a dataset")
    p.add_argument("dataset", help="dataset folder (bc-policy dataset build)")
    p.add_argument("--config", default=None, help="model/train config YAML (config/train/*.yaml)")
    p.add_argument("--kind", default=None, help="override model kind: mlp | chunk_mlp | gmm | transformer")
    p.add_argument("--chunk-length", type=int, default=None)
    p.add_argument("--out", default="runs/train", help="run folder")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--val-fraction", type=float, default=None,
                   help="episodes held out for the validation loss / early stopping (default config: 0)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")

    p = add("export", "bc_policy_node.learning.cli:export_main", "export a trained run to one ONNX file")
    p.add_argument("run", help="run folder")
    p.add_argument("--out", default=None, help="ONNX path (default: <run>/policy.onnx)")

    p = add("eval", "bc_policy_node.pipeline.evaluate:main",
            "evaluate an ONNX policy in-process (core sim + onnxruntime, many seeds)")
    p.add_argument("model", help="ONNX policy file")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=10_000, help="first evaluation seed")
    p.add_argument("--execution-mode", default="temporal_ensembling",
                   choices=("temporal_ensembling", "receding_horizon", "latency_aware", "mode_consistent"))
    p.add_argument("--m", type=float, default=0.01, help="temporal ensembling weight exp(-m i)")
    p.add_argument("--plot", default=None, help="PNG of rollouts (planar robots)")
    p.add_argument("--json", default=None, help="write the metrics as JSON")
    p.add_argument("--workers", type=int, default=1,
                   help="evaluate the seeds in N Ray worker processes (1: in process, no Ray); same results")
    p.add_argument("--address", default=None,
                   help="with --workers: join this Ray cluster (HOST:PORT) instead of a local loopback-only one")
    _push_args(p, "during every episode (policy and expert alike)")

    p = add("dagger", "bc_policy_node.pipeline.dagger.ros:main",
            "DAgger rounds through the ROS graph: rollout -> label -> aggregate -> retrain -> export -> hot-swap")
    _robot_task(p)
    p.add_argument("--dataset", required=False, default=None, help="initial (expert) dataset folder")
    p.add_argument("--model", default=None, help="initial ONNX policy")
    p.add_argument("--variant", default="classic", choices=("classic", "robot_gated", "human_gated"))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--episodes-per-round", type=int, default=10)
    p.add_argument("--out", default="runs/dagger")
    p.add_argument("--demos", type=int, default=20,
                   help="without --dataset: in-process expert demonstrations for round 0 (seeds 0..N-1)")
    p.add_argument("--seed", type=int, default=200_000,
                   help="rollout seeds: SEED + 1000 * round + episode")
    p.add_argument("--beta-schedule", default="exponential", choices=("exponential", "linear", "constant"),
                   help="classic: beta_i = schedule(i), i = 1 the first DAgger round")
    p.add_argument("--beta0", type=float, default=1.0, help="classic: beta schedule start")
    p.add_argument("--beta-decay", type=float, default=0.5, help="classic: beta schedule decay")
    p.add_argument("--eval-episodes", type=int, default=100, help="in-process evaluation seeds per round")
    p.add_argument("--eval-seed", type=int, default=10_000, help="first in-process evaluation seed")
    p.add_argument("--ros-eval-episodes", type=int, default=0,
                   help="classic: policy-only (beta 0) episodes through the graph after each hot swap")
    p.add_argument("--train-steps", type=int, default=None, help="optimizer steps per retraining (default 1000)")
    p.add_argument("--expert-timeout-periods", type=float, default=None,
                   help="dagger node: control periods to wait for an expert label (default config/dagger.yaml)")
    p.add_argument("--log-dir", default=None, help="node logs (default <out>/logs)")
    _push_args(p, "during the rollouts (the bridge) and the evaluation")

    p = add("experiments", "bc_policy_node.experiments.runner:main",
            "reproduce BC's known behaviours on the sim tasks (report + PNG figures)")
    p.add_argument("--only", default=None, help="comma-separated experiment names")
    p.add_argument("--quick", action="store_true", help="fewer seeds (smoke run)")
    p.add_argument("--tasks", default="",
                   help="metaworld: the tasks to run instead of MT10: mt10, all, or comma-separated names")
    p.add_argument("--render", action="store_true",
                   help="rebuild the sections from their stored numbers.json, no rollouts (metaworld)")
    p.add_argument("--out", default="results", help="results folder (report.md + figures)")
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.version:
        from . import __version__
        print(__version__)
        return 0
    if not getattr(args, "_target", None):
        ap.print_help()
        return 2
    module, func = args._target.split(":")
    try:
        return int(getattr(importlib.import_module(module), func)(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
