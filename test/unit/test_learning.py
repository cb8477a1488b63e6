"""learning/: configs, chunk targets, training of every kind, resume, and input errors."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bc_policy_node.core.contract import Contract, ContractError
from bc_policy_node.core.data.episodes import Dataset, DatasetError, Episode
from bc_policy_node.learning import (ConfigError, ModelConfig, TrainConfig, TrainError, build_model,
                                     configs_from_dict, load_configs, load_policy, train)
from bc_policy_node.learning.data import build_chunks, episode_chunks, segment_ids
from bc_policy_node.learning.synthetic import synthetic_contract, synthetic_dataset

REPO = Path(__file__).resolve().parents[2]
K = 5
TINY = dict(depth=2, width=32, chunk_length=K)
KINDS = {"mlp": ModelConfig(kind="mlp", depth=2, width=32),
         "chunk_mlp": ModelConfig(kind="chunk_mlp", **TINY),
         "gmm": ModelConfig(kind="gmm", num_modes=3, **TINY),
         "transformer": ModelConfig(kind="transformer", depth=1, width=32, num_heads=2, chunk_length=K)}
FAST = TrainConfig(lr=3e-3, batch_size=64, max_epochs=8, warmup_steps=0, patience=0, val_fraction=0.25)


@pytest.fixture(scope="module")
def small_ds():
    return synthetic_dataset(num_episodes=8, length=40, seed=1)


# ----------------------------------------------------------------------------- config
def test_config_defaults_and_round_trip():
    m = ModelConfig()
    assert (m.kind, m.chunk_length, m.residual) == ("chunk_mlp", 20, True)
    assert ModelConfig(kind="mlp").chunk_length == 1
    for cfg in (ModelConfig(kind="gmm", num_modes=4), TrainConfig(lr=3e-4, max_steps=10)):
        assert type(cfg).from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("kwargs", [dict(kind="cnn"), dict(kind="mlp", chunk_length=5), dict(depth=0),
                                    dict(width=2.5), dict(dropout=1.0), dict(residual="yes"),
                                    dict(kind="transformer", width=512),
                                    dict(kind="transformer", width=30, num_heads=4)])
def test_model_config_rejects(kwargs):
    with pytest.raises(ConfigError):
        ModelConfig(**kwargs)


@pytest.mark.parametrize("kwargs", [dict(lr=0), dict(batch_size=0), dict(val_fraction=1.0),
                                    dict(loss="huber2"), dict(lr_schedule="step"), dict(max_steps=0)])
def test_train_config_rejects(kwargs):
    with pytest.raises(ConfigError):
        TrainConfig(**kwargs)


def test_unknown_keys_rejected():
    with pytest.raises(ConfigError, match="widht"):
        configs_from_dict({"model": {"widht": 3}})
    with pytest.raises(ConfigError, match="optim"):
        configs_from_dict({"optim": {}})


@pytest.mark.parametrize("path", sorted((REPO / "config" / "train").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_train_configs_load(path):
    model, tr = load_configs(path)
    assert model.kind == path.stem
    assert tr.threads == TrainConfig().threads   # shipped configs use the default (1: shared cores)


# ----------------------------------------------------------------------------- chunk targets
def test_chunk_targets_and_masks_at_episode_end():
    act = np.arange(6, dtype=float)[:, None] * np.array([[1.0, -1.0]])     # (6, 2)
    frames, target, mask = episode_chunks(act, np.ones(6, bool), 4)
    assert frames.tolist() == list(range(6))
    assert target.shape == (6, 4, 2)
    np.testing.assert_array_equal(target[0, :, 0], [0, 1, 2, 3])
    np.testing.assert_array_equal(target[4, :, 0], [4, 5, 5, 5])          # holds the last action
    np.testing.assert_array_equal(mask[4], [1, 1, 0, 0])
    np.testing.assert_array_equal(mask[5], [1, 0, 0, 0])
    np.testing.assert_array_equal(target[5, :, 1], [-5, -5, -5, -5])
    assert mask[:3].all()


def test_unlabelled_frames_are_not_samples_and_masked_as_targets():
    act = np.arange(6, dtype=float)[:, None]
    act[2] = np.nan                                   # no expert label there: value is garbage
    labelled = np.array([1, 1, 0, 1, 1, 1], bool)
    frames, target, mask = episode_chunks(act, labelled, 3)
    assert frames.tolist() == [0, 1, 3, 4, 5]
    assert np.all(np.isfinite(target))
    np.testing.assert_array_equal(mask[0], [1, 1, 0])
    np.testing.assert_array_equal(mask[1], [1, 0, 1])
    np.testing.assert_array_equal(target[1, :, 0], [1, 1, 3])           # filled, masked, valid


def test_chunk_targets_stop_at_a_segment_change_and_hold():
    """segment ids [0 0 0 1 1 1]: a chunk from frame 1 repeats frame 2's action (the last of
    its segment) instead of running into segment 1, and those held targets stay in the loss."""
    act = np.arange(6, dtype=float)[:, None]
    seg = segment_ids(np.array([[0.0], [0.0], [0.0], [2.0], [2.0], [2.0]]))
    assert seg.tolist() == [0, 0, 0, 1, 1, 1]
    frames, target, mask = episode_chunks(act, np.ones(6, bool), 4, seg)
    np.testing.assert_array_equal(target[1, :, 0], [1, 2, 2, 2])
    np.testing.assert_array_equal(mask[1], [1, 1, 1, 1])
    np.testing.assert_array_equal(target[3, :, 0], [3, 4, 5, 5])            # episode end: as before
    np.testing.assert_array_equal(mask[3], [1, 1, 1, 0])
    assert segment_ids(np.zeros((1, 2))).tolist() == [0]


def test_build_chunks_segment_on_needs_the_term(small_ds):
    """The synthetic contract observes no ``phase``: segment_on is ignored; on ``goal`` (constant
    per synthetic episode) nothing changes either; a term that changes every frame holds everything."""
    base = build_chunks(small_ds, K)
    for term in ("phase", "goal"):
        assert torch.equal(build_chunks(small_ds, K, segment_on=term).target, base.target)
    held = build_chunks(small_ds, K, segment_on="joint_pos")
    assert torch.equal(held.target, held.target[:, :1].expand_as(held.target))


def test_build_chunks_stacks_episodes(small_ds):
    data = build_chunks(small_ds, K)
    assert len(data) == small_ds.num_frames
    assert data.target.shape == (len(data), K, 3) and data.obs.dtype == torch.float32
    assert float(data.mask.sum()) == sum(len(e) * K - K * (K - 1) / 2 for e in small_ds.episodes)
    seen = torch.cat([b[0] for b in data.batches(50, generator=torch.Generator().manual_seed(0))])
    assert torch.equal(seen.sort(0).values, data.obs.sort(0).values)   # a permutation, nothing lost


# ----------------------------------------------------------------------------- losses
@pytest.mark.parametrize("kind", list(KINDS))
def test_masked_targets_do_not_change_the_loss(kind, small_ds):
    torch.manual_seed(0)
    data = build_chunks(small_ds, KINDS[kind].chunk_length)
    model = build_model(KINDS[kind], 5, 3, small_ds.stats())
    obs, tgt, mask = data.obs[-20:], data.target[-20:].clone(), data.mask[-20:]
    assert (mask == 0).any() or kind == "mlp"
    base = model.loss(obs, tgt, mask)
    tgt[mask == 0] += 100.0
    assert torch.allclose(model.loss(obs, tgt, mask), base)


# ----------------------------------------------------------------------------- training
@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_trains_with_finite_decreasing_loss(kind, small_ds, tmp_path):
    r = train(small_ds, KINDS[kind], FAST, tmp_path / "run", progress=False)
    losses = [h["train_loss"] for h in r.history]
    assert len(losses) == FAST.max_epochs and all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses
    assert r.best_val_loss is not None and np.isfinite(r.best_val_loss)
    for name in ("config.json", "checkpoint_last.pt", "model_best.pt", "history.json",
                 "loss_curve.png", "holdout_obs.npy"):
        assert (tmp_path / "run" / name).is_file(), name
    model, run_cfg = load_policy(tmp_path / "run")
    assert run_cfg["data_hash"] == small_ds.content_hash()
    assert set(run_cfg["val_episodes"]).isdisjoint(run_cfg["train_episodes"])
    assert len(run_cfg["val_episodes"]) == 2


def test_training_is_reproducible(small_ds, tmp_path):
    cfg = TrainConfig(batch_size=64, max_epochs=2, val_fraction=0.25, seed=3)
    a = train(small_ds, KINDS["chunk_mlp"], cfg, tmp_path / "a", progress=False)
    b = train(small_ds, KINDS["chunk_mlp"], cfg, tmp_path / "b", progress=False)
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    sa, sb = (torch.load(r.best_weights, weights_only=True) for r in (a, b))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_continues_where_it_stopped(small_ds, tmp_path):
    mcfg = ModelConfig(kind="chunk_mlp", dropout=0.1, **TINY)          # dropout: RNG state matters
    cfg = TrainConfig(batch_size=64, max_epochs=4, lr_schedule="constant", val_fraction=0.25, patience=0)
    full = train(small_ds, mcfg, cfg, tmp_path / "full", progress=False)
    first = train(small_ds, mcfg, TrainConfig(**{**cfg.to_dict(), "max_epochs": 2}), tmp_path / "part",
                  progress=False)
    assert first.epochs == 2
    rest = train(small_ds, mcfg, cfg, tmp_path / "part", resume=True, progress=False)
    assert (rest.epochs, rest.steps) == (full.epochs, full.steps)
    assert [h["epoch"] for h in rest.history] == [1, 2, 3, 4]
    assert [h["train_loss"] for h in rest.history] == [h["train_loss"] for h in full.history]
    a = torch.load(tmp_path / "full" / "checkpoint_last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "part" / "checkpoint_last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_different_model_or_dataset(small_ds, tmp_path):
    cfg = TrainConfig(batch_size=64, max_epochs=1, val_fraction=0.25)
    train(small_ds, KINDS["chunk_mlp"], cfg, tmp_path / "run", progress=False)
    with pytest.raises(TrainError, match="resume=True"):
        train(small_ds, KINDS["chunk_mlp"], cfg, tmp_path / "run", progress=False)
    with pytest.raises(TrainError, match="model config differs"):
        train(small_ds, KINDS["gmm"], cfg, tmp_path / "run", resume=True, progress=False)
    other = synthetic_dataset(num_episodes=8, length=40, seed=2)
    with pytest.raises(TrainError, match="trained on data"):
        train(other, KINDS["chunk_mlp"], cfg, tmp_path / "run", resume=True, progress=False)


def test_train_from_dataset_directory_with_max_steps(small_ds, tmp_path):
    small_ds.save(tmp_path / "data")
    r = train(tmp_path / "data", KINDS["mlp"], TrainConfig(batch_size=32, max_steps=5, val_fraction=0.0),
              tmp_path / "run", progress=False)
    assert r.steps == 5 and r.epochs == 1 and r.best_val_loss is None


# ----------------------------------------------------------------------------- input errors
def _nan_dataset():
    ds = synthetic_dataset(num_episodes=3, length=30)
    ds.episodes[1].obs[7, 2] = np.nan
    return ds


def _short_dataset():
    return synthetic_dataset(lengths=[4, 6, 5])


@pytest.mark.parametrize("make, error, match", [
    (lambda: Dataset(synthetic_contract(), []), DatasetError, "empty"),
    (_nan_dataset, DatasetError, "NaN"),
    (_short_dataset, DatasetError, "longer than every episode"),
    (lambda: Dataset(synthetic_contract(), [Episode(np.zeros((10, 5)), np.zeros((10, 3)), np.arange(10) / 50,
                                                    labelled=np.zeros(10, bool))]), DatasetError, "no labelled"),
])
def test_bad_data_fails_before_training(make, error, match, tmp_path):
    with pytest.raises(error, match=match):
        train(make(), ModelConfig(chunk_length=K if match != "longer than every episode" else 20),
              FAST, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_contract_mismatch_fails_before_training(small_ds, tmp_path):
    d = synthetic_contract().to_dict()
    d["control_rate_hz"] = 100.0
    d["action"]["joints"] = ["a", "b", "c"]
    with pytest.raises(ContractError, match="control_rate_hz.*action.joints"):
        train(small_ds, KINDS["chunk_mlp"], FAST, tmp_path / "run", progress=False,
              contract=Contract.from_dict(d))
    assert not (tmp_path / "run").exists()


def test_constant_observation_dims_are_not_amplified(tmp_path):
    ds = synthetic_dataset(num_episodes=4, length=30, seed=5)
    for ep in ds.episodes:
        ep.obs[:, 4] = 0.25                                           # goal y never varies
    train(ds, KINDS["chunk_mlp"], TrainConfig(max_steps=2, val_fraction=0.0), tmp_path / "run", progress=False)
    model, run_cfg = load_policy(tmp_path / "run")
    assert float(model.norm.obs_std[4]) == 1.0 and run_cfg["norm"]["obs_std"][4] == 1.0
    assert float(model.norm.obs_mean[4]) == pytest.approx(0.25)


def test_early_stopping_and_resume_with_more_patience(small_ds, tmp_path):
    cfg = TrainConfig(batch_size=64, max_epochs=5, val_fraction=0.25, patience=1, min_delta=1e9)
    r = train(small_ds, KINDS["chunk_mlp"], cfg, tmp_path / "run", progress=False)
    assert r.stopped_early and r.epochs == 2 and r.best_epoch == 1      # nothing beats epoch 1 by 1e9
    r2 = train(small_ds, KINDS["chunk_mlp"], TrainConfig(**{**cfg.to_dict(), "patience": 0}),
               tmp_path / "run", resume=True, progress=False)
    assert not r2.stopped_early and r2.epochs == 5 and len(r2.history) == 5
