"""action_frame: relative — targets relative to the measured joint positions, absolute ONNX output."""
import json

import numpy as np
import onnx
import pytest
import torch

from bc_policy_node.core.contract import Contract, ContractError
from bc_policy_node.core.control.runtime import META_KEY, OnnxPolicy
from bc_policy_node.learning import ConfigError, ModelConfig, TrainConfig, build_model, check_parity, export, train
from bc_policy_node.learning.models import reference_index
from bc_policy_node.learning.synthetic import synthetic_contract, synthetic_dataset

K = 4
REL = {"chunk_mlp": ModelConfig(kind="chunk_mlp", depth=2, width=32, chunk_length=K, action_frame="relative"),
       "gmm": ModelConfig(kind="gmm", depth=2, width=32, chunk_length=K, num_modes=2, action_frame="relative")}


@pytest.fixture(scope="module")
def ds():
    return synthetic_dataset(num_episodes=8, length=40, seed=2)


def test_reference_index_follows_the_action_joints():
    c = synthetic_contract().to_dict()
    c["observation"][0]["joints"] = ["j3", "j1", "j2"]           # positions observed in another order
    c["observation"].insert(0, {"name": "goal0", "topic": "/task_state", "type": "bc_msgs/msg/TaskState",
                                "field": "goal", "size": 2})
    assert Contract.from_dict(c).action_reference_index() == [3, 4, 2]
    del c["observation"][1]                                       # no joint positions at all
    with pytest.raises(ContractError, match="action joint 'j1' has no measured position"):
        Contract.from_dict(c).action_reference_index()
    assert reference_index(ModelConfig(), Contract.from_dict(c)) is None   # absolute frame needs none


def test_config_and_build_errors():
    with pytest.raises(ConfigError, match="action_frame"):
        ModelConfig(action_frame="delta")
    with pytest.raises(ValueError, match="relative"):
        build_model(REL["chunk_mlp"], 5, 3)


def test_untrained_head_outputs_the_measured_position_plus_the_mean_offset(ds):
    """With a zero head the network's normalized output is 0: every action of the chunk is the
    measured joint position + the mean training offset, whatever the other inputs are."""
    from bc_policy_node.core.data.episodes import NormStats

    stats = NormStats(np.zeros(5), np.ones(5), np.array([0.1, -0.2, 0.3]), np.ones(3))
    model = build_model(REL["chunk_mlp"], 5, 3, stats, ref_index=[0, 1, 2]).eval()
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.zeros_(model.head.bias)
    obs = torch.randn(6, 5)
    out = model(obs)
    assert out.shape == (6, K, 3)
    assert torch.allclose(out, obs[:, None, :3] + torch.tensor([0.1, -0.2, 0.3]), atol=1e-6)


@pytest.mark.parametrize("kind", list(REL))
def test_relative_policy_trains_exports_and_matches_torch(kind, ds, tmp_path):
    r = train(ds, REL[kind], TrainConfig(batch_size=64, max_epochs=6, warmup_steps=0, patience=0,
                                          val_fraction=0.25, lr=3e-3), tmp_path / "run", progress=False)
    losses = [h["train_loss"] for h in r.history]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    run_cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    train_eps = [ds.episodes[i] for i in run_cfg["train_episodes"]]
    abs_std = np.concatenate([e.act for e in train_eps]).std(0)
    assert np.allclose(run_cfg["action_std"], abs_std, rtol=1e-6)
    assert np.all(np.asarray(run_cfg["norm"]["act_std"]) < abs_std)   # offsets vary less than positions

    path = export(tmp_path / "run", tmp_path / f"{kind}.onnx")
    meta = json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}[META_KEY])
    assert meta["action_frame"] == "relative" and np.allclose(meta["action_std"], abs_std, rtol=1e-6)
    assert check_parity(path, tmp_path / "run").ok
    # the ONNX output is absolute: near the measured joint positions, not near zero
    pol = OnnxPolicy(path)
    obs = np.array([[2.0, -1.5, 1.0, 0.2, 0.3]])
    first = pol.predict_chunk(obs[0])[0, 0]
    assert np.all(np.abs(first - obs[0, :3]) < 0.5), first
