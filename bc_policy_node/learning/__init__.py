"""Training and export of behaviour-cloning policies: the only place torch is imported.

Public API::

    from bc_policy_node.learning import ModelConfig, TrainConfig, train, export
    result = train("data/reach", ModelConfig(kind="chunk_mlp"), TrainConfig(), "runs/reach")
    path = export(result.run_dir, "models/policies/reach.onnx")
"""
from .config import ConfigError, ModelConfig, TrainConfig, configs_from_dict, load_configs
from .export import ExportError, ParityReport, check_parity, export
from .checkpoint import RunError, load_policy
from .models import build_model
from .train import RunResult, TrainError, train

__all__ = ["ConfigError", "ModelConfig", "TrainConfig", "configs_from_dict", "load_configs",
           "ExportError", "ParityReport", "check_parity", "export", "RunError", "load_policy",
           "build_model", "RunResult", "TrainError", "train"]
