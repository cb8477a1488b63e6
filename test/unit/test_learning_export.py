"""learning/export.py: one self-contained ONNX file per kind, parity with torch, metadata round trip."""
import json

import numpy as np
import onnx
import pytest
import torch

from bc_policy_node.core.control.runtime import CONTRACT_KEY, META_KEY, OnnxPolicy
from bc_policy_node.learning import ExportError, ModelConfig, TrainConfig, check_parity, export, load_policy, train
from bc_policy_node.learning.export import read_metadata
from bc_policy_node.learning.synthetic import synthetic_dataset

K = 4
KINDS = {"mlp": ModelConfig(kind="mlp", depth=2, width=32),
         "chunk_mlp": ModelConfig(kind="chunk_mlp", depth=2, width=32, chunk_length=K),
         "gmm": ModelConfig(kind="gmm", depth=2, width=32, chunk_length=K, num_modes=3),
         "transformer": ModelConfig(kind="transformer", depth=1, width=32, num_heads=2, chunk_length=K)}
META_KEYS = {"format", "kind", "chunk_length", "obs_dim", "act_dim", "control_rate_hz", "action_lower",
             "action_upper", "norm", "num_modes", "data_hash", "model_id", "package_version", "created",
             "opset", "train_config"}


@pytest.fixture(scope="module")
def ds():
    return synthetic_dataset(num_episodes=6, length=30, seed=4)


@pytest.fixture(scope="module", params=list(KINDS))
def exported(request, ds, tmp_path_factory):
    kind = request.param
    run = tmp_path_factory.mktemp(kind) / "run"
    train(ds, KINDS[kind], TrainConfig(batch_size=64, max_epochs=2, val_fraction=0.34), run, progress=False)
    path = export(run, run.parent / "policies" / f"{kind}.onnx")
    return kind, run, path


def test_single_self_contained_file(exported):
    kind, run, path = exported
    assert path.is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]        # no .onnx.data, no tmp
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert all(not t.external_data for t in proto.graph.initializer)
    assert [i.name for i in proto.graph.input] == ["obs"]
    want = ["means", "logits"] if kind == "gmm" else ["actions"]
    assert [o.name for o in proto.graph.output] == want


def test_metadata_round_trip(exported, ds):
    kind, run, path = exported
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props[CONTRACT_KEY]) == json.loads(ds.contract.to_json())
    meta = json.loads(props[META_KEY])
    assert META_KEYS <= set(meta)
    assert meta["kind"] == kind and meta["chunk_length"] == KINDS[kind].chunk_length
    assert meta["data_hash"] == ds.content_hash()
    assert meta["model_id"].startswith(kind + "-") and len(meta["model_id"]) == len(kind) + 9
    assert meta["num_modes"] == (3 if kind == "gmm" else 1)
    assert (meta["obs_dim"], meta["act_dim"], meta["opset"]) == (5, 3, 17)
    assert meta["train_config"]["model"] == KINDS[kind].to_dict()
    model, run_cfg = load_policy(run)
    np.testing.assert_allclose(meta["norm"]["act_std"], model.norm.act_std.numpy(), rtol=1e-6)
    contract, meta2 = read_metadata(path)
    assert contract.fingerprint() == ds.contract.fingerprint() and meta2 == meta


def test_parity_recorded_and_runtime_loads(exported, ds):
    kind, run, path = exported
    rec = json.loads((run / "export_parity.json").read_text())
    assert rec["ok"] and rec["max_abs_diff"] < 1e-4 and rec["num_obs"] > 0
    assert set(rec["per_output"]) == ({"means", "logits"} if kind == "gmm" else {"actions"})
    # Dynamic batch: batch 1 and 7 through the package's own runtime, against torch.
    policy = OnnxPolicy(path)
    model, _ = load_policy(run)
    obs = np.concatenate([e.obs for e in ds.episodes])[:7].astype(np.float32)
    for batch in (obs[:1], obs):
        with torch.no_grad():
            ref = model(torch.from_numpy(batch))
        if kind == "gmm":
            means, probs = policy.mixture(batch)
            np.testing.assert_allclose(means, ref[0].numpy(), atol=1e-4)
            np.testing.assert_allclose(probs, ref[1].exp().numpy(), atol=1e-5)
        else:
            np.testing.assert_allclose(policy.predict(batch), ref.numpy(), atol=1e-4)
    assert policy.predict_chunk(obs[0]).shape == (1, KINDS[kind].chunk_length, 3)


def test_parity_failure_raises_and_leaves_no_file(exported, tmp_path):
    kind, run, path = exported
    report = check_parity(path, run)
    assert report.ok and report.max_abs_diff < 1e-4
    with pytest.raises(ExportError, match="differ by"):
        export(run, tmp_path / "p.onnx", tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []


def test_training_facts_in_metadata(exported):
    kind, run, path = exported
    _, meta = read_metadata(path)
    facts = meta["train_config"]
    history = json.loads((run / "history.json").read_text())
    assert (facts["weights"], facts["epochs"], facts["steps"]) == ("best", 2, history[-1]["step"])
    best = min(history, key=lambda h: h["val_loss"])
    assert facts["best_epoch"] == best["epoch"] and facts["best_val_loss"] == pytest.approx(best["val_loss"])
