"""A deep residual model (depth 8) on the bimodal expert: MSE vs GMM.

Same protocol as `exp_bimodal` (same demos, evaluation seeds and execution settings) with
residual + LayerNorm trunks of depth 8 instead of 3, on the task's own data regime (one demo per
start configuration, mode drawn at random). Where the mode is not observable from the state the
MSE optimum is the conditional mean whatever the capacity; a deeper model can only fit the
mode-revealing states more sharply. If the depth-3 results exist next to this experiment's folder
(`../bimodal/numbers.json`, same demos and seeds), they are quoted for comparison.
"""
from __future__ import annotations

import json
from pathlib import Path

from . import common as C
from . import exp_bimodal as B

DEPTH = 8
FULL = {**B.FULL, "regimes": ["random"]}
QUICK = {**B.QUICK, "regimes": ["random"]}


def run(out_dir: Path, quick: bool = False) -> dict:
    out_dir = Path(out_dir)
    cache = out_dir / "cache"
    cfg = QUICK if quick else FULL
    results = [B.train_and_eval(cfg, cache, regime, width_depth={"depth": DEPTH}, tag=f"d{DEPTH}_")
               for regime in cfg["regimes"]]
    summs = [B.summarize(r) for r in results]
    S = dict(zip(cfg["regimes"], summs))
    f1 = B.plot_paths(results, out_dir / "deep_bimodal_paths.png", cfg["paths"], title_prefix=f"depth {DEPTH}: ")
    f2 = B.plot_rates(summs, cfg["regimes"], out_dir / "deep_bimodal_rates.png", title_prefix=f"depth {DEPTH}, ")
    shallow = {}
    sp = out_dir.parent / "bimodal" / "numbers.json"
    if sp.is_file():
        try:
            s = json.loads(sp.read_text())
            c = s.get("config", {})
            if all(c.get(k) == cfg[k] for k in ("demos", "eval", "epochs", "train_seeds")):
                shallow = {r: s["summary"][r] for r in cfg["regimes"] if r in s["summary"]}
        except (ValueError, KeyError, TypeError):
            shallow = {}
    nts, ne = len(cfg["train_seeds"]), cfg["eval"]
    setup = (f"Residual + LayerNorm trunks of depth {DEPTH} (width 128, K=20, {cfg['epochs']} epochs) on the same "
             f"{cfg['demos']} bimodal demos as the depth-3 experiment ({', '.join(B.REGIME_TITLES[r] for r in S)}), "
             f"{nts} training seed(s) x {ne} held-out episodes.")
    parts, cmp_parts = [], []
    for r, x in S.items():
        m, g = x[B.MSE], x["GMM mode-consistent sample"]
        parts.append(f"MSE: collision {C.fmt_rate(m['collision'])}, success {C.fmt_rate(m['success'])}, passed the "
                     f"obstacle safely {C.fmt_rate(m['passed_obstacle_safely'])}; L1: success "
                     f"{C.fmt_rate(x[B.L1]['success'])}; GMM mode-consistent+sample: success {C.fmt_rate(g['success'])}, "
                     f"collision {C.fmt_rate(g['collision'])}; GMM TE+sample: collision "
                     f"{C.fmt_rate(x['GMM TE sample']['collision'])}")
        if r in shallow:
            sh = shallow[r]
            ch = ", ".join(f"{n} {100 * (x[n]['success']['rate'] - sh[n]['success']['rate']):+.0f}"
                           for n in B.NAMES if n in sh)
            cmp_parts.append(f"success change from depth 3 to depth {DEPTH} (pts): {ch}")
            cmp_parts.append(f"depth 3 for comparison: MSE collision {C.fmt_rate(sh[B.MSE]['collision'])}, success "
                             f"{C.fmt_rate(sh[B.MSE]['success'])}; GMM mode-consistent+sample success "
                             f"{C.fmt_rate(sh['GMM mode-consistent sample']['success'])}")
    cap1 = (f"ee paths of the first {cfg['paths']} evaluation episodes in the obstacle's frame (as in the bimodal "
            f"section), first training seed. {setup} Depth {DEPTH} - " + "; ".join(parts) + "."
            + (" " + "; ".join(cmp_parts)[0].upper() + "; ".join(cmp_parts)[1:] + "." if cmp_parts else ""))
    cap2 = (f"Outcomes and passing sides at depth {DEPTH}. {setup} " + " ".join(B.describe(x) + "." for x in S.values())
            + "".join(B.share_note(x, r) for r, x in S.items()))
    for r, x in S.items():
        m = x[B.MSE]
        others = [n for n in B.NAMES if n != B.MSE and x[n]["success"]["ci_low"] > m["success"]["ci_high"]]
        if m["collision"]["ci_high"] < 0.1:
            weakest = min(B.NAMES, key=lambda n: x[n]["success"]["rate"]) == B.MSE
            cap2 += (f" [{r}] Depth does not make the MSE policy average the modes into the post either (collision "
                     f"{C.fmt_rate(m['collision'])})"
                     + ("; it stays the weakest policy on success" if weakest else "")
                     + (f" (significantly below {', '.join(others)})" if others else "") + ".")
    table = "\n\n".join(B.table(x, r) for r, x in S.items())
    if shallow:
        rows = []
        for r, x in S.items():
            if r not in shallow:
                continue
            for n in B.NAMES:
                if n in shallow[r]:
                    rows.append([B.REGIME_TITLES[r], n, C.fmt_rate(shallow[r][n]["success"]), C.fmt_rate(x[n]["success"]),
                                 C.fmt_rate(shallow[r][n]["collision"]), C.fmt_rate(x[n]["collision"])])
        table += "\n\n" + C.md_table(["demos", "policy / execution", "success depth 3", f"success depth {DEPTH}",
                                      "collision depth 3", f"collision depth {DEPTH}"], rows)
    numbers = {"config": cfg, "depth": DEPTH, "summary": S, "depth3_summary_quoted": bool(shallow),
               "val_loss": {reg: {k: [t.best_val_loss for t in v] for k, v in res["trained"].items()}
                            for reg, res in zip(cfg["regimes"], results)}}
    x = S[cfg["regimes"][0]]
    best = max(B.NAMES[1:], key=lambda n: x[n]["success"]["rate"])
    headline = (f"depth {DEPTH}: MSE collides {100 * x[B.MSE]['collision']['rate']:.0f}% (success "
                f"{100 * x[B.MSE]['success']['rate']:.0f}%); {best} success {100 * x[best]['success']['rate']:.0f}%")
    return C.experiment_result("deep_bimodal", f"Deep model (residual, depth {DEPTH}) on the bimodal expert: MSE vs GMM",
                               out_dir, [f1, f2], {f1: cap1, f2: cap2}, table, numbers, headline)
