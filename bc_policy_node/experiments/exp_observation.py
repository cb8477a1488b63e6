"""Observation design: joint velocity in the observation causes causal confusion (copycat).

The shipped curved_reach contract observes joint positions, the goal and the end-effector
position. The variant adds `joint_vel` (sensor_msgs/JointState.velocity). The position servos
settle within one control tick, so the measured velocity is essentially the previous command's
step, and the next step of a smooth expert is almost the same: a policy can fit the demonstrations
by "keep doing what I just did" without learning to use the goal (de Haan et al. 2019, "Causal
confusion in imitation learning"; Wen et al. 2020, "copycat"). Same demonstrations (episode seeds
0..N-1) observed through each contract, same models and training seeds, evaluated on held-out
episodes with temporal ensembling (m=0.01). `bench/bench_observation_design.py` is the CLI of
the same measurement (writes bench/results/observation_design.json).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np

from ..core.contract import Contract
from ..core.sim.env import load_contract
from . import common as C

TASK = "curved_reach"
FULL = {"demos": 50, "epochs": 60, "eval": 100, "train_seeds": [0, 1], "kinds": ["chunk_mlp", "mlp"], "paths": 3}
QUICK = {"demos": 10, "epochs": 6, "eval": 10, "train_seeds": [0], "kinds": ["chunk_mlp"], "paths": 2}
WITHOUT, WITH = "without joint_vel (shipped)", "with joint_vel"


def with_joint_velocity(base: Contract) -> Contract:
    """The contract plus a `joint_vel` term (JointState.velocity, same joints) right after `joint_pos`."""
    d = base.to_dict()
    obs = list(d["observation"])
    i = [t["name"] for t in obs].index("joint_pos")
    jp = obs[i]
    obs.insert(i + 1, {"name": "joint_vel", "topic": jp["topic"], "type": jp["type"], "field": "velocity",
                       "joints": list(jp["joints"]), "size": len(jp["joints"])})
    d["observation"] = obs
    d["name"] = base.name + "_with_joint_vel"
    return Contract.from_dict(d)


def measure(cfg: dict, cache: Path) -> Dict:
    """Train every (kind, contract, training seed) and evaluate; returns per-(kind, contract) results."""
    base = load_contract("planar3", TASK)
    contracts = {WITHOUT: base, WITH: with_joint_velocity(base)}
    seeds = C.eval_seeds(cfg["eval"])
    out = {}
    for kind in cfg["kinds"]:
        for cname, contract in contracts.items():
            ds = C.collect_demos(TASK, cfg["demos"], cache, contract=contract)
            evs, vals = [], []
            for ts in cfg["train_seeds"]:
                C.log(f"observation: {kind} {cname} seed {ts}")
                model = C.small_model(kind, chunk_length=20 if kind != "mlp" else 1)
                pol = C.train_cached(ds, model, C.fast_train_config(max_epochs=cfg["epochs"], seed=ts), cache,
                                     tag=f"obsdesign_{kind}_{'vel' if cname == WITH else 'novel'}_s{ts}")
                evs.append(C.eval_cached(pol, TASK, seeds, cache, execution_mode="temporal_ensembling", m=0.01))
                vals.append(pol.best_val_loss)
            out[(kind, cname)] = {"evals": evs, "numbers": {
                "kind": kind, "observation": [t.name for t in contract.observation], "obs_dim": contract.obs_dim,
                "success": C.pooled_rate(evs), "success_per_train_seed": [ev.success_summary()["rate"] for ev in evs],
                "best_val_loss_per_train_seed": vals, "best_val_loss_mean": float(np.mean(vals)),
                "statuses": {s: sum(ev.statuses().get(s, 0) for ev in evs)
                             for s in sorted({s for ev in evs for s in ev.status})},
                "final_error_m": C.ci([fe for ev in evs for fe in ev.final_error])}}
    return out


def run(out_dir: Path, quick: bool = False) -> dict:
    out_dir = Path(out_dir)
    cache = out_dir / "cache"
    cfg = QUICK if quick else FULL
    R = measure(cfg, cache)
    experts = C.expert_rollouts(TASK, C.eval_seeds(cfg["eval"]))
    plt = C.plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    kinds = cfg["kinds"]
    x = np.arange(len(kinds))
    for j, (cname, col) in enumerate(((WITHOUT, C.CYCLE[0]), (WITH, C.CYCLE[1]))):
        s = [R[(k, cname)]["numbers"]["success"] for k in kinds]
        r = np.array([v["rate"] for v in s])
        lo, hi = np.array([v["ci_low"] for v in s]), np.array([v["ci_high"] for v in s])
        axes[0].bar(x + (j - 0.5) * 0.36, 100 * r, 0.36, color=col, label=cname,
                    yerr=100 * np.vstack([r - lo, hi - r]), capsize=3)
        v = [R[(k, cname)]["numbers"]["best_val_loss_per_train_seed"] for k in kinds]
        axes[1].bar(x + (j - 0.5) * 0.36, [np.mean(a) for a in v], 0.36, color=col, label=cname)
        for i, a in enumerate(v):
            axes[1].plot([x[i] + (j - 0.5) * 0.36] * len(a), a, ls="", marker="_", ms=12, color="k")
    names = {"chunk_mlp": "chunk MLP, K=20", "mlp": "single step, K=1"}
    for ax in axes[:2]:
        ax.set_xticks(x, [names.get(k, k) for k in kinds])
    axes[0].set(ylabel="success (%, pooled over training seeds, 95% Wilson)", ylim=(0, 100),
                title=f"{TASK}: closed-loop success")
    axes[0].legend()
    axes[1].set(ylabel="best validation loss (L1, normalized)", title="offline fit (bars: mean, ticks: seeds)")
    axes[1].legend()
    ax = axes[2]
    k0 = kinds[0]
    for cname, col, ls in ((WITHOUT, C.CYCLE[0], "-"), (WITH, C.CYCLE[1], "-")):
        ev = R[(k0, cname)]["evals"][0]
        for i in range(min(cfg["paths"], len(ev.seeds))):
            p = ev.ee[i]
            ax.plot(p[:, 0], p[:, 1], color=col, lw=1.5, ls=ls, label=f"{cname}" if i == 0 else None)
    for i in range(min(cfg["paths"], len(experts))):
        e = experts[i].ee
        sc = C.task_scene(TASK, experts[i].seed)
        ax.plot(e[:, 0], e[:, 1], color="k", ls="--", lw=1.2, label="expert" if i == 0 else None)
        ax.plot(*sc["start"], marker="o", ms=5, color="k", ls="")
        ax.plot(*sc["goal"][:2], marker="*", ms=11, color="goldenrod", mec="k", mew=0.5, ls="")
    ax.set_aspect("equal")
    ax.set(xlabel="x (m)", ylabel="y (m)", title=f"{names.get(k0, k0)}: first {cfg['paths']} eval episodes")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, fontsize=7, frameon=False)
    fig.tight_layout()
    f = C.savefig(fig, out_dir / "observation_design.png")
    parts = []
    for k in kinds:
        a, b = R[(k, WITHOUT)]["numbers"], R[(k, WITH)]["numbers"]
        parts.append(f"{names.get(k, k)}: success {C.fmt_rate(a['success'])} without vs {C.fmt_rate(b['success'])} "
                     f"with joint velocity, mean best validation loss {a['best_val_loss_mean']:.4f} vs "
                     f"{b['best_val_loss_mean']:.4f}")
    better_fit = all(R[(k, WITH)]["numbers"]["best_val_loss_mean"] < R[(k, WITHOUT)]["numbers"]["best_val_loss_mean"]
                     for k in kinds)
    cap = (f"The same {cfg['demos']} {TASK} expert demos observed through the shipped contract and through a variant "
           f"that adds joint velocity; width-128 depth-3 policies, {cfg['epochs']} epochs, {len(cfg['train_seeds'])} "
           f"training seed(s) x {cfg['eval']} held-out episodes, temporal ensembling m=0.01. " + "; ".join(parts) + ". "
           + ("With velocity the policies fit the demonstrations better offline and fail in closed loop: the velocity "
              "carries the previous command, so the model copies it instead of reading the goal (causal confusion). "
              if better_fit else "")
           + "Right: example paths (first training seed).")
    rows = [[names.get(k, k), c, C.fmt_rate(R[(k, c)]["numbers"]["success"]),
             " / ".join(f"{100 * p:.0f}" for p in R[(k, c)]["numbers"]["success_per_train_seed"]),
             " / ".join(f"{v:.4f}" for v in R[(k, c)]["numbers"]["best_val_loss_per_train_seed"]),
             C.fmt_mean(R[(k, c)]["numbers"]["final_error_m"], 1000, 0, " mm")] for k in kinds for c in (WITHOUT, WITH)]
    table = C.md_table(["policy", "observation", "success (pooled, Wilson)", "per training seed (%)",
                        "best val loss per seed", "final distance to goal"], rows)
    numbers = {"config": cfg, "task": TASK, "results": {f"{k} / {c}": R[(k, c)]["numbers"] for k in kinds
                                                        for c in (WITHOUT, WITH)}}
    k = kinds[0]
    headline = (f"{names.get(k, k)}: success {100 * R[(k, WITHOUT)]['numbers']['success']['rate']:.0f}% without "
                f"joint velocity vs {100 * R[(k, WITH)]['numbers']['success']['rate']:.0f}% with it"
                + (" (despite a lower val loss)" if R[(k, WITH)]["numbers"]["best_val_loss_mean"]
                   < R[(k, WITHOUT)]["numbers"]["best_val_loss_mean"] else ""))
    return C.experiment_result("observation", "Observation design: joint velocity causes copycat behaviour", out_dir,
                               [f], {f: cap}, table, numbers, headline)
