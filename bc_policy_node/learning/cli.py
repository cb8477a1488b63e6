"""`bc-policy train` and `bc-policy export` (argument parsing lives in bc_policy_node/cli.py)."""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from ..graph import config_path
from . import checkpoint as ckpt
from .config import ConfigError, ModelConfig, TrainConfig, load_configs

DEFAULT_CONFIG = "chunk_mlp.yaml"


def resolve_configs(config, kind=None, chunk_length=None, seed=None, val_fraction=None):
    """Model/train configs from a YAML (default config/train/chunk_mlp.yaml) plus CLI overrides."""
    path = Path(config) if config else config_path("train", DEFAULT_CONFIG)
    model_cfg, train_cfg = load_configs(path)
    over = {}
    if kind:
        over["kind"] = kind
        if kind == "mlp":
            over["chunk_length"] = 1
    if chunk_length:
        over["chunk_length"] = chunk_length
    if over:
        model_cfg = ModelConfig.from_dict({**dataclasses.asdict(model_cfg), **over})
    train_over = {k: v for k, v in (("seed", seed), ("val_fraction", val_fraction)) if v is not None}
    if train_over:
        train_cfg = TrainConfig.from_dict({**dataclasses.asdict(train_cfg), **train_over})
    return model_cfg, train_cfg


def train_main(args) -> int:
    from .train import train

    try:
        model_cfg, train_cfg = resolve_configs(args.config, args.kind, args.chunk_length, args.seed,
                                              getattr(args, "val_fraction", None))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    res = train(args.dataset, model_cfg, train_cfg, args.out, resume=args.resume, progress=True)
    val = f"{res.best_val_loss:.4f}" if res.best_val_loss is not None else "n/a"
    print(f"\n{'run':<18}{res.run_dir}\n{'model':<18}{model_cfg.kind} K={model_cfg.chunk_length} "
          f"depth={model_cfg.depth} width={model_cfg.width} ({res.num_parameters:,} parameters)\n"
          f"{'epochs':<18}{res.epochs} (best {res.best_epoch}{', stopped early' if res.stopped_early else ''})\n"
          f"{'best val loss':<18}{val}\n{'throughput':<18}{res.samples_per_second:,.0f} samples/s, "
          f"{res.train_seconds:.1f} s\n{'loss curve':<18}{res.run_dir / ckpt.CURVE_FILE}\n"
          f"next: bc-policy export {res.run_dir}")
    return 0


def export_main(args) -> int:
    from .export import PARITY_FILE, export

    run = Path(args.run)
    out = Path(args.out) if args.out else run / "policy.onnx"
    path = export(run, out)
    parity_file = run / PARITY_FILE
    parity = json.loads(parity_file.read_text()) if parity_file.is_file() else {}
    print(f"{'policy':<18}{path} ({path.stat().st_size / 1e6:.2f} MB, self-contained)\n"
          f"{'model id':<18}{parity.get('model_id', '?')}\n"
          f"{'parity':<18}max |onnxruntime - torch| = {parity.get('max_abs_diff', float('nan')):.2e} "
          f"on {parity.get('num_obs', '?')} held-out observations\n"
          f"next: bc-policy eval {path}")
    return 0
