"""Multimodal demonstrations: regression to the mean vs a mixture policy.

On `bimodal` an obstacle post sits on the straight line from start to goal and the expert passes
it on the left (mode 0) or the right (mode 1). The mode is *not observed*. A deterministic
chunk MLP trained with MSE predicts the conditional mean of the demonstrated actions; the textbook
expectation is that where both modes were demonstrated from the same state this mean points into
the post. A mixture density policy (kind `gmm`) can represent both modes. An L1-trained chunk MLP
(the package's default loss) is included as a second deterministic baseline.

Two data regimes with the same number of demonstrations:

- ``random``: one demonstration per start configuration, mode drawn at random (the task's default);
- ``paired``: every start configuration demonstrated both ways (task variants mode0 and mode1 of
  the same episode seed: identical geometry, opposite sides), i.e. the same states really carry
  both modes.

Settings: MSE chunk MLP (temporal ensembling m=0.01) vs GMM with execution_mode
{temporal_ensembling, mode_consistent} x mode_select {argmax, sample}, evaluated on held-out
episodes of the default task. Outcomes: success, collision, timeout, and which side the ee passed
(classified geometrically: the sign of the lateral offset from the obstacle->goal line when the ee
first gets level with the obstacle).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np

from ..core.data.episodes import Dataset
from . import common as C

TASK = "bimodal"
FULL = {"demos": 60, "epochs": 60, "eval": 100, "train_seeds": [0, 1], "paths": 40,
        "regimes": ["random", "paired"]}
QUICK = {"demos": 12, "epochs": 8, "eval": 10, "train_seeds": [0], "paths": 10, "regimes": ["random", "paired"]}
REGIME_TITLES = {"random": "one demo per start, random mode", "paired": "each start demonstrated both ways"}

MSE = "MSE chunk MLP"
L1 = "L1 chunk MLP"
GMM_SETTINGS = [("GMM TE argmax", "temporal_ensembling", "argmax"),
                ("GMM TE sample", "temporal_ensembling", "sample"),
                ("GMM mode-consistent argmax", "mode_consistent", "argmax"),
                ("GMM mode-consistent sample", "mode_consistent", "sample")]
NAMES = [MSE, L1] + [n for n, _, _ in GMM_SETTINGS]
PATH_NAMES = [MSE, "GMM TE sample", "GMM mode-consistent sample"]


def short(name: str) -> str:
    """Two-line tick label."""
    return (name.replace("MSE chunk MLP", "MSE\nchunk MLP").replace("L1 chunk MLP", "L1\nchunk MLP")
            .replace("GMM mode-consistent ", "GMM\nmode-consistent\n").replace("GMM TE ", "GMM\nTE\n"))


def demos(regime: str, n: int, cache: Path) -> Dataset:
    """`n` demonstrations: n random-mode episodes, or n/2 start configurations x both modes."""
    if regime == "random":
        return C.collect_demos(TASK, n, cache)
    if regime == "paired":
        a = C.collect_demos(TASK, n // 2, cache, variant="mode0")
        b = C.collect_demos(TASK, n // 2, cache, variant="mode1")
        return Dataset(a.contract, a.episodes + b.episodes)
    raise ValueError(f"unknown regime {regime!r}")


def models(width_depth: Dict = None):
    wd = width_depth or {}
    return {"mse": C.small_model("chunk_mlp", chunk_length=20, **wd),
            "gmm": C.small_model("gmm", chunk_length=20, num_modes=5, **wd)}


def train_and_eval(cfg: dict, cache: Path, regime: str, width_depth: Dict = None, tag: str = "") -> Dict:
    """Train MSE + GMM for each training seed on `regime`'s demos and evaluate every setting."""
    ds = demos(regime, cfg["demos"], cache)
    seeds = C.eval_seeds(cfg["eval"])
    mods = models(width_depth)
    evals: Dict[str, List[C.EvalResult]] = {n: [] for n in NAMES}
    trained = {"mse": [], "l1": [], "gmm": []}
    for ts in cfg["train_seeds"]:
        C.log(f"{tag or 'bimodal'}: {regime} demos, training seed {ts}")
        mse = C.train_cached(ds, mods["mse"], C.fast_train_config(max_epochs=cfg["epochs"], seed=ts, loss="mse"),
                             cache, tag=f"{tag}{regime}_mse_s{ts}")
        l1 = C.train_cached(ds, mods["mse"], C.fast_train_config(max_epochs=cfg["epochs"], seed=ts, loss="l1"),
                            cache, tag=f"{tag}{regime}_l1_s{ts}")
        gmm = C.train_cached(ds, mods["gmm"], C.fast_train_config(max_epochs=cfg["epochs"], seed=ts),
                             cache, tag=f"{tag}{regime}_gmm_s{ts}")
        trained["mse"].append(mse)
        trained["l1"].append(l1)
        trained["gmm"].append(gmm)
        evals[MSE].append(C.eval_cached(mse, TASK, seeds, cache, execution_mode="temporal_ensembling"))
        evals[L1].append(C.eval_cached(l1, TASK, seeds, cache, execution_mode="temporal_ensembling"))
        for name, mode, sel in GMM_SETTINGS:
            evals[name].append(C.eval_cached(gmm, TASK, seeds, cache, execution_mode=mode, mode_select=sel))
    experts = C.expert_rollouts(TASK, seeds)
    n_left = sum(1 for ep in ds.episodes if ep.meta.get("mode") == 0)
    return {"regime": regime, "ds": ds, "n_left": n_left, "evals": evals, "trained": trained,
            "experts": experts, "seeds": seeds}


def summarize(res: Dict) -> Dict:
    out = {}
    for name, evs in res["evals"].items():
        sides = {"mode0": 0, "mode1": 0, "none": 0}
        per_seed = []
        safe = []
        for ev in evs:
            sc = C.side_counts(ev)
            per_seed.append(sc)
            for k in sides:
                sides[k] += sc[k]
            for e, g, o, st in zip(ev.ee, ev.goal, ev.obstacle, ev.status):
                safe.append(C.passing_side(e, g, o) != 0 and st != "collision")
        n = sum(sides.values())
        passed = sides["mode0"] + sides["mode1"]
        timeouts = [fe for ev in evs for fe, st in zip(ev.final_error, ev.status) if st == "timeout"]
        out[name] = {"success": C.pooled_rate(evs), "collision": C.pooled_rate(evs, "collision"),
                     "timeout": C.pooled_rate(evs, "timeout"), "passed_obstacle_safely": C.rate(safe),
                     "timeout_final_error_m": C.ci(timeouts) if len(timeouts) > 1 else None,
                     "success_per_train_seed": [ev.success_summary()["rate"] for ev in evs],
                     "collision_per_train_seed": [ev.collision_summary()["rate"] for ev in evs],
                     "sides": sides, "sides_per_train_seed": per_seed,
                     "share_left_of_passed": C.rate([True] * sides["mode0"] + [False] * sides["mode1"])
                     if passed else None,
                     "never_passed": C.rate([True] * sides["none"] + [False] * (n - sides["none"])),
                     "rejections": sum(ev.exec_total("rejections") for ev in evs),
                     "adoptions": sum(ev.exec_total("adoptions") for ev in evs)}
    ex = res["experts"]
    scenes = [C.task_scene(TASK, s) for s in res["seeds"]]
    ex_sides = [C.passing_side(e.ee, sc["goal"], sc["obstacle"]) for e, sc in zip(ex, scenes)]
    modes = [int(e.meta["mode"]) for e in ex]
    out["expert"] = {"success": C.rate(e.success for e in ex),
                     "collision": C.rate(e.status == "collision" for e in ex),
                     "sides": {"mode0": ex_sides.count(1), "mode1": ex_sides.count(-1), "none": ex_sides.count(0)},
                     "side_matches_latent_mode": int(sum((s == 1) == (m == 0) for s, m in zip(ex_sides, modes))),
                     "n": len(ex)}
    out["demos"] = {"n": len(res["ds"]), "left": res["n_left"], "frames": res["ds"].num_frames}
    return out


def obstacle_frame(ee: np.ndarray, goal: np.ndarray, obstacle: np.ndarray) -> np.ndarray:
    """Path in the obstacle's frame: x along obstacle->goal, y to its left (the expert's mode-0 side)."""
    o = np.asarray(obstacle[:2])
    u = np.asarray(goal[:2]) - o
    u /= np.linalg.norm(u)
    n = np.array([-u[1], u[0]])
    rel = np.asarray(ee[:, :2], dtype=float) - o
    return np.stack([rel @ u, rel @ n], axis=1)


SIDE_COLORS = {1: "#1f77b4", -1: "#ff7f0e", 0: "#7f7f7f"}


def _draw(ax, paths, goals, obst, statuses, title, n_paths):
    import matplotlib.patches as mp

    for p, g, o, st in list(zip(paths, goals, obst, statuses))[:n_paths]:
        q = obstacle_frame(p, g, o)
        side = C.passing_side(p, g, o)
        ax.plot(q[:, 0], q[:, 1], lw=0.9, alpha=0.75, color="#d62728" if st == "collision" else SIDE_COLORS[side])
        if st == "collision":
            ax.plot(q[-1, 0], q[-1, 1], marker="x", color="#d62728", ms=5, ls="")
    radii = [o[-1] for o in obst]
    ax.add_patch(mp.Circle((0, 0), float(np.mean(radii)), color="0.5", alpha=0.6, lw=0))
    ax.add_patch(mp.Circle((0, 0), float(np.max(radii)), fill=False, ls=":", color="0.4"))
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    ax.set_xlim(-0.36, 0.36)
    ax.set_ylim(-0.22, 0.22)


def plot_paths(results: List[Dict], path: Path, n_paths: int, title_prefix: str = "") -> str:
    """Rows = data regimes; columns = expert + PATH_NAMES (first training seed)."""
    plt = C.plt()
    import matplotlib.lines as ml

    cols = 1 + len(PATH_NAMES)
    fig, axes = plt.subplots(len(results), cols, figsize=(4.0 * cols, 2.9 * len(results) + 0.6),
                             sharex=True, sharey=True, squeeze=False)
    for row, res in zip(axes, results):
        ex = res["experts"]
        scenes = [C.task_scene(TASK, s) for s in res["seeds"]]
        _draw(row[0], [e.ee for e in ex], [s["goal"] for s in scenes], [s["obstacle"] for s in scenes],
              [e.status for e in ex], "expert (side = its latent mode)", n_paths)
        row[0].set_ylabel(f"{REGIME_TITLES[res['regime']]}\nlateral, + = left (m)", fontsize=8)
        for ax, name in zip(row[1:], PATH_NAMES):
            ev = res["evals"][name][0]
            _draw(ax, ev.ee, ev.goal, ev.obstacle, ev.status, f"{title_prefix}{name}", n_paths)
    for ax in axes[-1]:
        ax.set_xlabel("along obstacle -> goal (m)")
    handles = [ml.Line2D([], [], color=SIDE_COLORS[1], label="passed left (mode 0)"),
               ml.Line2D([], [], color=SIDE_COLORS[-1], label="passed right (mode 1)"),
               ml.Line2D([], [], color=SIDE_COLORS[0], label="never got past the obstacle"),
               ml.Line2D([], [], color="#d62728", marker="x", label="collision (x = end)")]
    fig.legend(handles=handles, loc="lower center", ncol=4, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return C.savefig(fig, path)


def plot_rates(summs: List[Dict], regimes: List[str], path: Path, title_prefix: str = "") -> str:
    plt = C.plt()
    fig, axes = plt.subplots(len(summs), 2, figsize=(13, 3.6 * len(summs) + 0.4), squeeze=False)
    x = np.arange(len(NAMES))
    for (ax, ax2), summ, regime in zip(axes, summs, regimes):
        for j, (key, col) in enumerate((("success", "#2ca02c"), ("collision", "#d62728"), ("timeout", "#7f7f7f"))):
            r = np.array([summ[n][key]["rate"] for n in NAMES])
            lo = np.array([summ[n][key]["ci_low"] for n in NAMES])
            hi = np.array([summ[n][key]["ci_high"] for n in NAMES])
            ax.bar(x + (j - 1) * 0.26, 100 * r, 0.26, color=col, label=key,
                   yerr=100 * np.vstack([r - lo, hi - r]), capsize=2)
        ax.set_xticks(x, [short(n) for n in NAMES], fontsize=7.5)
        ax.set(ylabel="% of episodes (95% Wilson)", ylim=(0, 119),
               title=f"{title_prefix}{REGIME_TITLES[regime]}: outcomes")
        ax.set_yticks([0, 20, 40, 60, 80, 100])
        ax.legend(loc="upper center", ncol=3)
        bottom = np.zeros(len(NAMES))
        for key, col, lab in (("mode0", SIDE_COLORS[1], "passed left (mode 0)"),
                              ("mode1", SIDE_COLORS[-1], "passed right (mode 1)"),
                              ("none", SIDE_COLORS[0], "never got past")):
            v = np.array([summ[n]["sides"][key] / max(sum(summ[n]["sides"].values()), 1) for n in NAMES])
            ax2.bar(x, 100 * v, 0.55, bottom=100 * bottom, color=col, label=lab)
            bottom += v
        d = summ["demos"]
        ax2.axhline(100 * d["left"] / max(d["n"], 1), color="k", ls="--", lw=1, label="demos passing left")
        ax2.set_xticks(x, [short(n) for n in NAMES], fontsize=7.5)
        ax2.set(ylabel="% of episodes", ylim=(0, 100),
                title=f"{title_prefix}{REGIME_TITLES[regime]}: side the ee passed")
    axes[-1][1].legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=4, fontsize=7, frameon=False)
    fig.tight_layout()
    return C.savefig(fig, path)


def table(summ: Dict, regime: str) -> str:
    rows = []
    for n in NAMES:
        s = summ[n]
        sh = s["share_left_of_passed"]
        te = s["timeout_final_error_m"]
        rows.append([REGIME_TITLES[regime], n, C.fmt_rate(s["success"]), C.fmt_rate(s["collision"]),
                     C.fmt_rate(s["timeout"]) + (f" (end {1000 * te['mean']:.0f} mm off)" if te else ""),
                     C.fmt_rate(s["passed_obstacle_safely"]),
                     " / ".join(f"{100 * p:.0f}" for p in s["success_per_train_seed"]),
                     f"{s['sides']['mode0']} / {s['sides']['mode1']} / {s['sides']['none']}",
                     C.fmt_rate(sh) if sh else "-",
                     f"{s['rejections']} / {s['adoptions']}" if "mode-consistent" in n else "-"])
    return C.md_table(["demos", "policy / execution", "success", "collision", "timeout", "passed obstacle safely",
                       "success per training seed (%)", "passed left / right / never", "share left among passed",
                       "chunks rejected / adopted"], rows)


def share_note(summ: Dict, regime: str = "") -> str:
    """Settings whose share of left passes (Wilson interval) excludes the demonstrations' share."""
    d = summ["demos"]
    p = d["left"] / max(d["n"], 1)
    off = [n for n in NAMES if summ[n]["share_left_of_passed"]
           and not summ[n]["share_left_of_passed"]["ci_low"] <= p <= summ[n]["share_left_of_passed"]["ci_high"]]
    if not off:
        return f" [{regime}] Every policy passes left about as often as the demos ({100 * p:.0f}%)." if regime else ""
    return (f" [{regime}] Side shares that differ from the demos' {100 * p:.0f}% left: "
            + ", ".join(f"{n} {C.fmt_rate(summ[n]['share_left_of_passed'])}" for n in off)
            + ".")


def describe(summ: Dict) -> str:
    return "; ".join(f"{n}: success {C.fmt_rate(summ[n]['success'])}, collision {C.fmt_rate(summ[n]['collision'])}, "
                     f"left/right/never {summ[n]['sides']['mode0']}/{summ[n]['sides']['mode1']}/"
                     f"{summ[n]['sides']['none']}" for n in NAMES)


def run(out_dir: Path, quick: bool = False) -> dict:
    out_dir = Path(out_dir)
    cache = out_dir / "cache"
    cfg = QUICK if quick else FULL
    results = [train_and_eval(cfg, cache, regime) for regime in cfg["regimes"]]
    summs = [summarize(r) for r in results]
    S = dict(zip(cfg["regimes"], summs))
    f1 = plot_paths(results, out_dir / "bimodal_paths.png", cfg["paths"])
    f2 = plot_rates(summs, cfg["regimes"], out_dir / "bimodal_rates.png")
    nts, ne = len(cfg["train_seeds"]), cfg["eval"]
    e = summs[0]["expert"]
    setup = (f"Both policies: width 128, depth 3, K=20, {cfg['epochs']} epochs, {cfg['demos']} demos per regime, "
             f"{nts} training seed(s) x {ne} held-out episodes of the default task; the GMM has 5 components.")
    regime_txt = []
    for regime, s in S.items():
        m, g = s[MSE], s["GMM mode-consistent sample"]
        regime_txt.append(
            f"{REGIME_TITLES[regime]} ({s['demos']['left']}/{s['demos']['n']} demos pass left): MSE collides in "
            f"{C.fmt_rate(m['collision'])}, succeeds in {C.fmt_rate(m['success'])}; GMM TE+sample collides in "
            f"{C.fmt_rate(s['GMM TE sample']['collision'])}; GMM mode-consistent+sample succeeds in "
            f"{C.fmt_rate(g['success'])}, collides in {C.fmt_rate(g['collision'])}")
    cap1 = (f"ee paths of the first {cfg['paths']} evaluation episodes in the obstacle's frame (x along the "
            "obstacle->goal line, y to its left; grey disc = mean post radius, dotted = largest), first training "
            f"seed; rows = data regimes. {setup} Colour = side the ee passed, red = collision (any contact of the arm, "
            "not only the ee, with the post; x = where the ee was when it ended). "
            + ". ".join(regime_txt) + f". Expert: {C.fmt_rate(e['success'])} success; its passing side matches its "
            f"latent mode in {e['side_matches_latent_mode']}/{e['n']} episodes (checks the side classifier).")
    cap2 = (f"Outcomes (pooled over training seeds, 95% Wilson) and the side the ee passed, per data regime. {setup} "
            + " ".join(f"[{REGIME_TITLES[r]}] {describe(s)}." for r, s in S.items())
            + " Timeouts are mostly episodes that got past the obstacle and then did not come within 2 cm of the goal "
            "(see 'passed obstacle safely' and the end distance in the table)." + "".join(share_note(x, r) for r, x in S.items()))
    calm = [r for r, x in S.items() if x[MSE]["collision"]["ci_high"] < 0.05]
    if calm:
        cap2 += (" The textbook failure - the MSE policy driving down the middle into the post - does NOT show here "
                 f"(MSE collision {', '.join(C.fmt_rate(S[r][MSE]['collision']) + ' with ' + r + ' demos' for r in calm)}): "
                 "most likely because the expert holds its forward progress until it is off the obstacle's axis (so "
                 "the averaged action at the ambiguous start is a small sideways move, not a move toward the post) and "
                 "off-axis states are unambiguous (beyond 4 cm the expert keeps the side it is on, whatever the mode), "
                 "so the middle is an unstable equilibrium of the learned closed loop that the policy falls off.")
    for r, x in S.items():
        te, mc = x["GMM TE sample"]["collision"], x["GMM mode-consistent sample"]["collision"]
        if te["ci_low"] > mc["ci_high"]:
            cap2 += (f" [{r}] Mode averaging does show at execution time: plain temporal ensembling of chunks sampled "
                     f"from different GMM components collides in {C.fmt_rate(te)}, mode-consistent ensembling in "
                     f"{C.fmt_rate(mc)}.")
        g = x["GMM mode-consistent sample"]
        below = [n for n in (MSE, L1) if g["success"]["ci_low"] > x[n]["success"]["ci_high"]]
        notbelow = [n for n in (MSE, L1) if n not in below]
        if below:
            cap2 += (f" [{r}] The GMM (mode-consistent, sample) beats {' and '.join(below)} on success, but not at the "
                     "obstacle (they pass it safely in "
                     + ", ".join(C.fmt_rate(x[n]["passed_obstacle_safely"]) for n in below)
                     + "): they lose episodes to timeouts after the obstacle.")
        if notbelow:
            cap2 += (f" [{r}] {' and '.join(notbelow)} reach{'es' if len(notbelow) == 1 else ''} "
                     + ", ".join(C.fmt_rate(x[n]["success"]) for n in notbelow)
                     + f" success, not below the GMM's {C.fmt_rate(g['success'])}.")
    numbers = {"config": cfg, "summary": S,
               "val_loss": {reg: {k: [t.best_val_loss for t in v] for k, v in res["trained"].items()}
                            for reg, res in zip(cfg["regimes"], results)}}
    table_md = "\n\n".join(table(s, r) for r, s in S.items())
    key = "paired" if "paired" in S else cfg["regimes"][0]
    s = S[key]
    best = max(NAMES[1:], key=lambda n: s[n]["success"]["rate"])
    headline = (f"{key} demos: MSE collides {100 * s[MSE]['collision']['rate']:.0f}% (success "
                f"{100 * s[MSE]['success']['rate']:.0f}%) vs {best} success {100 * s[best]['success']['rate']:.0f}%, "
                f"collision {100 * s[best]['collision']['rate']:.0f}%")
    if "random" in S and key != "random":
        headline += f"; random demos: MSE collides {100 * S['random'][MSE]['collision']['rate']:.0f}%"
    return C.experiment_result("bimodal", "Bimodal demonstrations: MSE vs a mixture policy, plain vs mode-consistent "
                               "ensembling", out_dir, [f1, f2], {f1: cap1, f2: cap2}, table_md, numbers, headline)
