"""Action chunking and temporal ensembling against compounding error.

Chunk MLPs with K in {1, 5, 10, 20, 40} are trained on the *same* curved_reach demonstrations,
each with several training seeds, and executed two ways:

- open-loop chunks: the K actions of a chunk are executed, then the policy is queried again
  (`receding_horizon` with n_execute = K; ACT without temporal ensembling);
- temporal ensembling (`temporal_ensembling`, query every tick, ACT weights exp(-m i), i = 0 the
  oldest chunk), m = 0.01 for every K, and an m sweep at K = 20.

Measured: success (Wilson interval over all evaluation episodes of all training seeds, plus the
spread over training seeds) and the ee deviation from the expert's path over time. Chunking
shortens the effective horizon (fewer decisions, each one a whole open-loop segment), which is
the ACT explanation for why it reduces compounding error.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.eval.metrics import path_distance_matrix
from . import common as C

TASK = "curved_reach"
FULL = {"demos": 50, "epochs": 60, "eval": 100, "Ks": [1, 5, 10, 20, 40], "train_seeds": [0, 1, 2],
        "m_K": 20, "ms": [-0.1, 0.0, 0.01, 0.1, 1.0]}
QUICK = {"demos": 12, "epochs": 8, "eval": 10, "Ks": [1, 10], "train_seeds": [0],
         "m_K": 10, "ms": [0.0, 0.01, 1.0]}
OPEN, TE = "open-loop chunks", "temporal ensembling m=0.01"


def _settings(K: int):
    return {OPEN: ("receding_horizon", {"n_execute": K}), TE: ("temporal_ensembling", {"m": 0.01})}


def run(out_dir: Path, quick: bool = False) -> dict:
    out_dir = Path(out_dir)
    cache = out_dir / "cache"
    cfg = QUICK if quick else FULL
    ds = C.collect_demos(TASK, cfg["demos"], cache)
    seeds = C.eval_seeds(cfg["eval"])
    experts = C.expert_rollouts(TASK, seeds)
    horizon = max(len(e.ee) for e in experts)
    horizon = max(horizon, 201)
    evals, trained = {}, {}
    for K in cfg["Ks"]:
        for ts in cfg["train_seeds"]:
            C.log(f"chunking: K={K} seed {ts}")
            pol = C.train_cached(ds, C.small_model("chunk_mlp", chunk_length=K),
                                 C.fast_train_config(max_epochs=cfg["epochs"], seed=ts), cache, tag=f"K{K}_s{ts}")
            trained[(K, ts)] = pol
            for name, (mode, kw) in _settings(K).items():
                if K == 1 and name == TE:          # K=1: every executor runs the same single action
                    evals[(K, ts, name)] = evals[(K, ts, OPEN)]
                    continue
                evals[(K, ts, name)] = C.eval_cached(pol, TASK, seeds, cache, execution_mode=mode, **kw)
            if K == cfg["m_K"]:
                for m in cfg["ms"]:
                    evals[(K, ts, f"m={m:g}")] = C.eval_cached(pol, TASK, seeds, cache,
                                                               execution_mode="temporal_ensembling", m=m)

    def summary(K, name):
        evs = [evals[(K, ts, name)] for ts in cfg["train_seeds"]]
        dev = np.vstack([ev.deviation(experts, horizon) for ev in evs])
        pdist = np.vstack([path_distance_matrix(ev.ee, [e.ee for e in experts], horizon) for ev in evs])
        per_seed = [ev.success_summary()["rate"] for ev in evs]
        return {"success": C.pooled_rate(evs), "success_per_train_seed": per_seed,
                "success_over_train_seeds": C.interval_over_seeds(per_seed) if len(per_seed) > 1 else None,
                "collision": C.pooled_rate(evs, "collision"),
                "deviation_mean_m": C.ci(np.nanmean(dev, axis=1)),
                "path_distance_mean_m": C.ci(np.nanmean(pdist, axis=1)),
                "deviation_by_t_mean_m": np.nanmean(dev, axis=0)[::10], "_dev": dev}

    S = {(K, name): summary(K, name) for K in cfg["Ks"] for name in (OPEN, TE)}

    def paired(K, name_a, name_b):
        a = [s for ts in cfg["train_seeds"] for s in evals[(K, ts, name_a)].success]
        b = [s for ts in cfg["train_seeds"] for s in evals[(K, ts, name_b)].success]
        return C.paired_diff(a, b)
    te_vs_open = {K: paired(K, TE, OPEN) for K in cfg["Ks"] if K > 1}
    m_vs_open = {m: paired(cfg["m_K"], f"m={m:g}", OPEN) for m in cfg["ms"]}
    M = {m: summary(cfg["m_K"], f"m={m:g}") for m in cfg["ms"]}
    val = {K: [trained[(K, ts)].best_val_loss for ts in cfg["train_seeds"]] for K in cfg["Ks"]}

    figs, caps = [], {}
    plt = C.plt()
    # ---- figure 1: success vs K, deviation over time per K (TE and open loop)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.0))
    ax = axes[0]
    Ks = cfg["Ks"]
    for j, (name, col) in enumerate(((OPEN, C.CYCLE[0]), (TE, C.CYCLE[1]))):
        x = np.arange(len(Ks)) + (j - 0.5) * 0.12
        r = np.array([S[(K, name)]["success"]["rate"] for K in Ks])
        lo = np.array([S[(K, name)]["success"]["ci_low"] for K in Ks])
        hi = np.array([S[(K, name)]["success"]["ci_high"] for K in Ks])
        ax.errorbar(x, 100 * r, yerr=100 * np.vstack([r - lo, hi - r]), color=col, marker="o", capsize=3,
                    label=f"{name} (pooled, 95% Wilson)")
        for i, K in enumerate(Ks):
            ps = S[(K, name)]["success_per_train_seed"]
            ax.plot([x[i]] * len(ps), 100 * np.array(ps), ls="", marker="_", ms=9, color=col, alpha=0.8)
    ax.set_xticks(np.arange(len(Ks)), [str(K) for K in Ks])
    ax.set(xlabel="chunk length K", ylabel="success (%)", ylim=(0, 102),
           title=f"{TASK}: success vs chunk length")
    ax.legend(loc="lower right")
    for ax, name in ((axes[1], TE), (axes[2], OPEN)):
        for i, K in enumerate(Ks):
            C.plot_band(ax, S[(K, name)]["_dev"], f"K={K}", C.CYCLE[i % len(C.CYCLE)], 1000)
        ax.set(xlabel="control tick (50 Hz)", ylabel="|ee(policy) - ee(expert)| (mm)",
               title=f"deviation from the expert, {name}")
        ax.legend(loc="upper left", ncol=2)
    ymax = max(a.get_ylim()[1] for a in axes[1:])
    for a in axes[1:]:
        a.set_ylim(0, ymax)
    fig.tight_layout()
    f1 = C.savefig(fig, out_dir / "chunking.png")
    figs.append(f1)
    nseeds, neval = len(cfg["train_seeds"]), cfg["eval"]
    best_open = max(Ks, key=lambda K: S[(K, OPEN)]["success"]["rate"])
    k1 = S[(1, OPEN)]
    parts = [f"{K}: open {C.fmt_rate(S[(K, OPEN)]['success'])}, TE {C.fmt_rate(S[(K, TE)]['success'])}"
             for K in Ks]
    caps[f1] = (f"Chunk MLPs (width 128, depth 3, {cfg['epochs']} epochs) with chunk length K trained on the same "
                f"{cfg['demos']} {TASK} demos with {nseeds} training seed(s) each, evaluated on {neval} held-out "
                f"episode seeds per training seed. Left: success rate pooled over the {nseeds * neval} episodes "
                "(95% Wilson interval) with each training seed's rate as a tick; K=1 is one model executed one "
                "action at a time (both curves share that point). Middle/right: ee deviation from the expert's path "
                "at the same tick (mean and 95% band over all episodes; paths held at their end point after an "
                "episode ends), with temporal ensembling (m=0.01, query every tick) and with open-loop chunks "
                f"(execute all K, then re-query). Success by K - {'; '.join(parts)}. Mean deviation: K=1 "
                f"{C.fmt_mean(k1['deviation_mean_m'], 1000, 0, ' mm')} vs K={best_open} open-loop "
                f"{C.fmt_mean(S[(best_open, OPEN)]['deviation_mean_m'], 1000, 0, ' mm')}. "
                "Temporal ensembling minus open-loop chunks, paired on the same models and episodes (95% interval): "
                + "; ".join(f"K={K} {C.fmt_diff(p)}" for K, p in te_vs_open.items())
                + (". Temporal ensembling does not improve on open-loop chunks at any K on this noise-free task"
                   if all(p["ci_low"] <= 0 for p in te_vs_open.values()) else "")
                + ("; it is worse (paired interval below 0) at K=" + ", ".join(str(K) for K, p in te_vs_open.items()
                                                                               if p["ci_high"] < 0)
                   if any(p["ci_high"] < 0 for p in te_vs_open.values()) else "")
                + ".")

    # ---- figure 2: temporal-ensembling temperature at one K
    mK = cfg["m_K"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    ax = axes[0]
    ms = cfg["ms"]
    r = np.array([M[m]["success"]["rate"] for m in ms])
    lo = np.array([M[m]["success"]["ci_low"] for m in ms])
    hi = np.array([M[m]["success"]["ci_high"] for m in ms])
    x = np.arange(len(ms))
    ax.errorbar(x, 100 * r, yerr=100 * np.vstack([r - lo, hi - r]), marker="o", capsize=3, color=C.CYCLE[1],
                label="temporal ensembling (pooled, 95% Wilson)")
    for i, m in enumerate(ms):
        ps = M[m]["success_per_train_seed"]
        ax.plot([x[i]] * len(ps), 100 * np.array(ps), ls="", marker="_", ms=9, color=C.CYCLE[1], alpha=0.8)
    so = S[(mK, OPEN)]["success"]
    ax.axhspan(100 * so["ci_low"], 100 * so["ci_high"], color=C.CYCLE[0], alpha=0.15,
               label=f"open-loop chunks K={mK} (95% interval)")
    ax.axhline(100 * so["rate"], color=C.CYCLE[0], lw=1)
    ax.set_xticks(x, [f"{m:g}" for m in ms])
    ax.set(xlabel="ensembling temperature m (weights exp(-m i), i=0 oldest)", ylabel="success (%)",
           ylim=(0, 102), title=f"{TASK}, K={mK}: success vs m")
    ax.legend(loc="lower right")
    ax = axes[1]
    for i, m in enumerate(ms):
        C.plot_band(ax, M[m]["_dev"], f"m={m:g}", C.CYCLE[i % len(C.CYCLE)], 1000)
    C.plot_band(ax, S[(mK, OPEN)]["_dev"], "open-loop chunks", "k", 1000, ls="--")
    ax.set(xlabel="control tick (50 Hz)", ylabel="|ee(policy) - ee(expert)| (mm)",
           title=f"K={mK}: deviation from the expert")
    ax.legend(loc="upper left", ncol=2)
    fig.tight_layout()
    f2 = C.savefig(fig, out_dir / "chunking_m.png")
    figs.append(f2)
    caps[f2] = (f"Temporal-ensembling temperature at K={mK} (same {nseeds} trained model(s), {neval} episodes each): "
                "m > 0 favours older predictions, m = 0 is the plain mean, m < 0 favours the newest chunk. "
                + "; ".join(f"m={m:g}: {C.fmt_rate(M[m]['success'])}, mean deviation "
                            f"{C.fmt_mean(M[m]['deviation_mean_m'], 1000, 0, ' mm')}" for m in ms)
                + f"; open-loop chunks: {C.fmt_rate(so)}, "
                f"{C.fmt_mean(S[(mK, OPEN)]['deviation_mean_m'], 1000, 0, ' mm')}. Paired difference to open-loop "
                "chunks: " + "; ".join(f"m={m:g} {C.fmt_diff(p)}" for m, p in m_vs_open.items())
                + ". Large m weights the oldest chunk most, which approaches open-loop execution.")

    rows = []
    for K in Ks:
        for name in (OPEN, TE):
            s = S[(K, name)]
            ov = s["success_over_train_seeds"]
            rows.append([K, name, C.fmt_rate(s["success"]),
                         " / ".join(f"{100 * p:.0f}" for p in s["success_per_train_seed"]),
                         C.fmt_mean(ov, 100, 0, "%")
                         if ov else "-",
                         C.fmt_mean(s["deviation_mean_m"], 1000, 0, " mm"),
                         C.fmt_mean(s["path_distance_mean_m"], 1000, 0, " mm")])
    table = C.md_table(["K", "execution", "success (pooled, Wilson)", "per training seed (%)",
                        "mean over training seeds (t interval)", "mean dev. from expert (same tick)",
                        "mean dist. to expert path"], rows)
    table += "\n\n" + C.md_table(["m (K=%d)" % mK, "success", "per training seed (%)", "mean deviation"],
                                 [[f"{m:g}", C.fmt_rate(M[m]["success"]),
                                   " / ".join(f"{100 * p:.0f}" for p in M[m]["success_per_train_seed"]),
                                   C.fmt_mean(M[m]["deviation_mean_m"], 1000, 0, " mm")] for m in ms])
    strip = lambda d: {k: v for k, v in d.items() if not k.startswith("_")}  # noqa: E731
    numbers = {"config": cfg, "task": TASK,
               "by_K": {f"K={K}": {name: strip(S[(K, name)]) for name in (OPEN, TE)} for K in Ks},
               "m_sweep": {f"m={m:g}": strip(M[m]) for m in ms},
               "te_minus_open_paired": {f"K={K}": p for K, p in te_vs_open.items()},
               "m_minus_open_paired": {f"m={m:g}": p for m, p in m_vs_open.items()},
               "val_loss_by_K": {f"K={K}": v for K, v in val.items()},
               "expert_success": C.rate(e.success for e in experts)}
    kmax = Ks[-1]
    headline = (f"success K=1 {100 * k1['success']['rate']:.0f}% -> K={kmax} open-loop "
                f"{100 * S[(kmax, OPEN)]['success']['rate']:.0f}% / TE "
                f"{100 * S[(kmax, TE)]['success']['rate']:.0f}% ({nseeds} train seeds x {neval} eps)")
    return C.experiment_result("chunking", "Action chunking and temporal ensembling", out_dir, figs, caps,
                               table, numbers, headline)
