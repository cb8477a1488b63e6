"""Per-frame chunk labels (Episode.chunk_labels): dataset round trip, shape checks and the
chunk targets they produce (learning.data)."""
import numpy as np
import pytest

from bc_policy_node.core.data.episodes import Dataset, DatasetError, Episode
from bc_policy_node.learning import ModelConfig, TrainConfig, train
from bc_policy_node.learning.data import build_chunks, check_dataset
from bc_policy_node.learning.synthetic import synthetic_dataset

K = 4


def _with_chunks(ep: Episode, k: int = K, seed: int = 0) -> Episode:
    rng = np.random.default_rng(seed)
    cl = rng.normal(size=(len(ep), k, ep.act.shape[1]))
    cl[:, 0] = ep.act
    return Episode(ep.obs, ep.act, ep.t, dict(ep.meta), ep.labelled, cl)


@pytest.fixture()
def mixed():
    ds = synthetic_dataset(num_episodes=3, length=12, seed=3, chunk_length=K)
    e0, e1, e2 = ds.episodes
    lab = np.ones(len(e1), bool)
    lab[[2, 5, 6]] = False
    e1 = _with_chunks(Episode(e1.obs, e1.act, e1.t, dict(e1.meta), lab))
    e2 = _with_chunks(e2, seed=1)
    return Dataset(ds.contract, [e0, e1, e2])


def test_chunk_labels_replace_consecutive_targets(mixed):
    data = build_chunks(mixed, K)
    e0, e1, e2 = mixed.episodes
    n0 = len(e0)
    # episode without chunk labels: unchanged rule (act[t:t+K], masked past the end)
    np.testing.assert_allclose(data.target[:n0].numpy(), build_chunks(Dataset(mixed.contract, [e0]), K).target.numpy())
    assert data.mask[n0 - 1].tolist() == [1, 0, 0, 0]
    # episode with chunk labels: only labelled frames are samples, target = chunk_labels[t], mask all 1
    frames = np.flatnonzero(e1.labelled)
    rows = slice(n0, n0 + len(frames))
    np.testing.assert_allclose(data.target[rows].numpy(), e1.chunk_labels[frames].astype(np.float32))
    np.testing.assert_allclose(data.obs[rows].numpy(), e1.obs[frames].astype(np.float32))
    assert (data.mask[rows] == 1).all()          # also at the end of the episode and before unlabelled frames
    # shorter training chunk than the labels: the first K' steps
    short = build_chunks(Dataset(mixed.contract, [e2]), 2)
    np.testing.assert_allclose(short.target.numpy(), e2.chunk_labels[:, :2].astype(np.float32))


def test_save_load_round_trip_and_backward_compatible(mixed, tmp_path):
    mixed.save(tmp_path / "a")
    back = Dataset.load(tmp_path / "a")
    assert back.episodes[0].chunk_labels is None
    for a, b in zip(mixed.episodes[1:], back.episodes[1:]):
        np.testing.assert_array_equal(a.chunk_labels, b.chunk_labels)
        np.testing.assert_array_equal(a.labelled, b.labelled)
    assert back.content_hash() == mixed.content_hash() and back.chunk_label_length == K
    # a dataset without chunk labels writes no new keys and keeps its hash
    plain = Dataset(mixed.contract, mixed.episodes[:1])
    plain.save(tmp_path / "b")
    assert "chunk_labels" not in np.load(tmp_path / "b" / "data.npz").files
    assert Dataset.load(tmp_path / "b").content_hash() == plain.content_hash()
    assert plain.chunk_label_length is None


def test_shape_checks(mixed):
    e0, e1, e2 = mixed.episodes
    with pytest.raises(DatasetError, match="chunk_labels shape"):
        Episode(e0.obs, e0.act, e0.t, {}, None, np.zeros((len(e0) - 1, K, 3)))
    with pytest.raises(DatasetError, match="chunk_labels shape"):
        Episode(e0.obs, e0.act, e0.t, {}, None, np.zeros((len(e0), K, 2)))
    with pytest.raises(DatasetError, match="different lengths"):
        Dataset(mixed.contract, [e1, _with_chunks(e0, k=K + 1)])
    with pytest.raises(DatasetError, match="< chunk_length"):
        check_dataset(mixed, K + 1)
    bad = _with_chunks(e0)
    bad.chunk_labels[3, 2, 0] = np.nan
    with pytest.raises(DatasetError, match="NaN"):
        Dataset(mixed.contract, [bad]).check_trainable()


def test_trains_on_mixed_dataset(mixed, tmp_path):
    run = train(mixed, ModelConfig(kind="chunk_mlp", depth=2, width=16, chunk_length=K),
                TrainConfig(threads=1, max_steps=5, max_epochs=5, val_fraction=0.0, patience=0, warmup_steps=0,
                            batch_size=16), tmp_path / "run")
    assert run.run_dir.exists()
