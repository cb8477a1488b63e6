"""learning/vision: camera encoders, memory-mapped image batches, augmentation, training that
needs the image, and ONNX export with uint8 image inputs (parity torch vs onnxruntime)."""
import json

import numpy as np
import pytest
import torch

from bc_policy_node.core.contract import Contract
from bc_policy_node.core.control.runtime import OnnxPolicy, PolicyContractMismatch
from bc_policy_node.core.data.episodes import Dataset, Episode
from bc_policy_node.learning import ModelConfig, TrainConfig, build_model, export, load_policy, train
from bc_policy_node.learning.data import build_chunks
from bc_policy_node.learning.export import PARITY_FILE, ExportError
from bc_policy_node.learning.synthetic import goal_frame, synthetic_camera_contract, synthetic_camera_dataset
from bc_policy_node.learning.vision import SpatialSoftmax, random_shift

K = 5
VISION = dict(depth=2, width=32, chunk_length=K, vision_channels=16, vision_keypoints=8)
FAST = TrainConfig(lr=3e-3, batch_size=64, max_epochs=12, warmup_steps=0, patience=0, val_fraction=0.25)


@pytest.fixture(scope="module")
def camera_ds(tmp_path_factory):
    """Saved and loaded again: the frames are memory-mapped, as in a real training run."""
    d = tmp_path_factory.mktemp("ds") / "camera"
    synthetic_camera_dataset(num_episodes=24, length=40, seed=1, chunk_length=K).save(d)
    return Dataset.load(d)


@pytest.fixture(scope="module")
def trained(camera_ds, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "vision"
    return train(camera_ds, ModelConfig(kind="chunk_mlp", **VISION), FAST, run, progress=False)


def test_spatial_softmax_finds_the_peak():
    maps = torch.full((1, 1, 5, 9), -20.0)
    maps[0, 0, 4, 0] = 20.0                          # bottom-left corner
    np.testing.assert_allclose(SpatialSoftmax(5, 9)(maps).numpy(), [[-1.0, 1.0]], atol=1e-6)


def test_random_shift_translates_frames_within_the_pad():
    rng = np.random.default_rng(0)
    frames = np.stack([goal_frame(np.array([0.0, 0.0]), 24, 32)] * 16)
    assert random_shift(frames, 0, rng) is frames
    out = random_shift(frames, 2, rng)
    assert out.shape == frames.shape and out.dtype == np.uint8
    centre = lambda f: np.argwhere(f[..., 0] == 255).mean(0)  # noqa: E731
    offsets = np.array([centre(o) - centre(f) for o, f in zip(out, frames)])
    assert np.all(np.abs(offsets) <= 2) and len({tuple(o) for o in offsets}) > 1   # shifted, by different amounts


def test_chunk_batches_read_frames_from_the_memory_map(camera_ds):
    data = build_chunks(camera_ds, K)
    assert all(isinstance(src, np.memmap) for src in data.images.sources["cam"])   # nothing copied up front
    obs, _, _, (frames,) = next(data.batches(16, shuffle=False))
    assert frames.dtype == torch.uint8 and frames.shape == (16, 24, 32, 3)
    ep0 = camera_ds.episodes[0]
    np.testing.assert_array_equal(frames.numpy(), np.asarray(ep0.images["cam"][:16]))
    np.testing.assert_allclose(obs.numpy(), ep0.obs[:16], rtol=1e-6)


def test_model_refuses_missing_frames():
    c = synthetic_camera_contract(K)
    model = build_model(ModelConfig(**VISION), c.obs_dim, c.act_dim, cameras=c.images)
    with pytest.raises(ValueError, match="cam"):
        model(torch.zeros(2, c.obs_dim))


def test_camera_policy_learns_the_goal_only_the_image_shows(camera_ds, trained, tmp_path):
    """Same data, same head: without the camera the goal is unobservable and the loss stays high."""
    blind_eps = [Episode(e.obs, e.act, e.t, e.meta) for e in camera_ds.episodes]
    d = camera_ds.contract.to_dict()
    d["observation"] = [t for t in d["observation"] if t.get("kind") != "image"]
    d["name"] = "synthetic_blind"
    blind = train(Dataset(Contract.from_dict(d), blind_eps), ModelConfig(kind="chunk_mlp", depth=2, width=32,
                                                                         chunk_length=K),
                  FAST, tmp_path / "blind", progress=False)
    assert trained.best_val_loss < 0.6 * blind.best_val_loss, (trained.best_val_loss, blind.best_val_loss)


@pytest.mark.parametrize("kind", ["chunk_mlp", "gmm", "transformer"])
def test_export_takes_uint8_frames_and_matches_torch(kind, camera_ds, trained, tmp_path):
    if kind == "chunk_mlp":
        run = trained
    else:
        cfg = ModelConfig(kind=kind, num_modes=3, num_heads=2, **VISION)
        run = train(camera_ds, cfg, TrainConfig(max_epochs=1, val_fraction=0.25, batch_size=64),
                    tmp_path / kind, progress=False)
    path = export(run.run_dir, tmp_path / f"{kind}.onnx")
    parity = json.loads((run.run_dir / PARITY_FILE).read_text())
    assert parity["ok"] and parity["num_obs"] > 0
    pol = OnnxPolicy(path)
    assert [t.name for t in pol.contract.images] == ["cam"]
    ep = camera_ds.episodes[0]
    frames = np.array(ep.images["cam"][:3])
    chunk = pol.predict_chunk(ep.obs[:3], images={"cam": frames})
    torch_model, _ = load_policy(run.run_dir)
    with torch.no_grad():
        out = torch_model(torch.from_numpy(ep.obs[:3].astype(np.float32)), torch.from_numpy(frames))
    want = (out[0][:, 0] if kind == "gmm" else out).numpy()
    if kind != "gmm":
        np.testing.assert_allclose(chunk, want, atol=1e-4)
    assert chunk.shape == (3, K, 3) and np.all(np.isfinite(chunk))
    with pytest.raises(ValueError, match="cam"):
        pol.predict_chunk(ep.obs[:1])                      # frames are required
    if kind == "chunk_mlp":   # another goal in the frame, another chunk: the graph reads the pixels
        moved = np.stack([goal_frame(np.array([0.9, -0.9]), 24, 32)] * 3)
        assert np.abs(pol.predict_chunk(ep.obs[:3], images={"cam": moved}) - chunk).max() > 1e-3


def test_export_without_held_out_frames_fails_and_writes_nothing(trained, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained.run_dir, run)
    (run / "holdout_images.npz").unlink()
    with pytest.raises(ExportError, match="held-out frames"):
        export(run, tmp_path / "p.onnx")
    assert not (tmp_path / "p.onnx").exists()


def test_a_model_for_another_camera_size_is_refused(trained, tmp_path):
    path = export(trained.run_dir, tmp_path / "p.onnx")
    pol = OnnxPolicy(path)
    robot = synthetic_camera_contract(K, height=48, width=64)
    with pytest.raises(PolicyContractMismatch, match="cam"):
        pol.check_contract(robot)
