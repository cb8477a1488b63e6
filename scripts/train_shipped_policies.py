"""Train and export the policies shipped in models/policies/ (the launch files' defaults).

    ./run python scripts/train_shipped_policies.py [--only planar3_curved_reach] [--demos 50]
    ./run python scripts/train_shipped_policies.py --remeasure    # evaluate the files as shipped (e.g. after a mujoco pin change)

Each: in-process expert demonstrations (seeds 0..N-1) -> config/train/<kind>.yaml -> ONNX with the
contract inside -> evaluation on 100 held-out seeds. Writes models/policies/<robot>_<task>.onnx and
models/policies/README.md (what each file is and how well it does).
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import mujoco

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bc_policy_node.core.sim.env import SimEnv, load_contract  # noqa: E402
from bc_policy_node.core.data.episodes import Dataset  # noqa: E402
from bc_policy_node.core.eval.rollout import evaluate, expert_act_fn, rollout  # noqa: E402
from bc_policy_node.learning import export, load_configs, train  # noqa: E402

SHIPPED = {  # name -> (robot, task, training config, execution mode)
    "planar3_curved_reach": ("planar3", "curved_reach", "chunk_mlp", "temporal_ensembling"),
    "planar3_bimodal": ("planar3", "bimodal", "gmm", "mode_consistent"),
    "planar3_long_horizon": ("planar3", "long_horizon", "chunk_mlp", "temporal_ensembling"),
}


def build(name: str, demos: int, out_dir: Path) -> dict:
    robot, task, kind, mode = SHIPPED[name]
    contract = load_contract(robot, task)
    env = SimEnv(robot, task)
    act = expert_act_fn(env, contract)
    ds = Dataset(contract, [rollout(env, contract, act, s).episode(contract.dt, "expert") for s in range(demos)])
    model_cfg, train_cfg = load_configs(ROOT / "config" / "train" / f"{kind}.yaml")
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        run = train(ds, model_cfg, train_cfg, Path(tmp) / "run", progress=True)
        path = export(run.run_dir, out_dir / f"{name}.onnx")
    secs = time.time() - t0
    ev = evaluate(str(path), robot, task, range(10_000, 10_100), execution_mode=mode)
    return {"file": path.name, "robot": robot, "task": task, "kind": kind, "execution_mode": mode,
            "demos": demos, "frames": ds.num_frames, "train_s": round(secs, 1),
            "size_kb": round(path.stat().st_size / 1024), "success": ev["success"]}


def remeasure(name: str, entry: dict, out_dir: Path) -> dict:
    """The shipped file evaluated again on the same 100 seeds; the earlier figure is kept."""
    robot, task, _, mode = SHIPPED[name]
    ev = evaluate(str(out_dir / entry["file"]), robot, task, range(10_000, 10_100), execution_mode=mode)
    prev = {"success": entry["success"], "mujoco": entry.get("mujoco", "4.0.0")}
    return {**entry, "success": ev["success"], "mujoco": mujoco.__version__, "previous": prev}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help="comma-separated names")
    ap.add_argument("--demos", type=int, default=50)
    ap.add_argument("--remeasure", action="store_true", help="evaluate the shipped files again, do not retrain")
    args = ap.parse_args()
    out_dir = ROOT / "models" / "policies"
    out_dir.mkdir(parents=True, exist_ok=True)
    index = out_dir / "index.json"
    done = json.loads(index.read_text()) if index.is_file() else {}
    for name in (args.only.split(",") if args.only else SHIPPED):
        if args.remeasure:
            done[name] = remeasure(name, done[name], out_dir)
        else:
            done[name] = {**build(name, args.demos, out_dir), "mujoco": mujoco.__version__}
        s = done[name]["success"]
        was = done[name].get("previous") if args.remeasure else None
        print(f"{name}: success {s['rate']:.0%} [{s['ci_low']:.0%}, {s['ci_high']:.0%}] on 100 held-out seeds"
              f" (mujoco {done[name]['mujoco']})"
              + (f"; before: {was['success']['rate']:.0%} with mujoco {was['mujoco']}" if was else ""))
    index.write_text(json.dumps(done, indent=1, default=float))
    lines = ["# Shipped policies", "",
             "Made by `scripts/train_shipped_policies.py` from in-process expert demonstrations; each ONNX",
             "file carries its contract, normalization and provenance (`bc_policy.meta`). Success is on",
             "100 held-out seeds, in-process, with a 95% Wilson interval, measured with the mujoco version",
             "given (`--remeasure` evaluates the files as shipped again, e.g. after a pin change).", "",
             "| file | task | policy | execution | demos | success | mujoco | earlier | size |",
             "|---|---|---|---|---|---|---|---|---|"]
    for d in done.values():
        s, p = d["success"], d.get("previous")
        earlier = f"{p['success']['rate']:.0%} (mujoco {p['mujoco']})" if p else ""
        lines.append(f"| `{d['file']}` | {d['robot']} / {d['task']} | {d['kind']} | {d['execution_mode']} | "
                     f"{d['demos']} | {s['rate']:.0%} [{s['ci_low']:.0%}, {s['ci_high']:.0%}] | "
                     f"{d.get('mujoco', '4.0.0')} | {earlier} | {d['size_kb']} KB |")
    (out_dir / "README.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
