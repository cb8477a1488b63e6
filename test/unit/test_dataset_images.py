"""Bags with camera topics -> dataset: per-frame image alignment (as-of / nearest), the max-age
tolerance (frames outside it unlabelled, counted in the report), uint8 frames memory-mapped,
clear errors for a missing camera topic and frames that do not fit the contract.

Bags are written with the package's own writer (`EpisodeBagWriter`); every image carries its
index in its pixels (PNG: lossless), so a test sees exactly which image a frame got."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from bc_policy_node.core.data.bagio import EpisodeBagWriter
from bc_policy_node.core.data.dataset_builder import build_dataset, episode_from_bag
from bc_policy_node.core.data.episodes import Dataset
from bc_policy_node.core.types import CompressedImageData, ImageData

from test_dataset_builder import CMD, RATE, T0, TOPICS, cmd, contract, js, ts  # noqa: E402

CAM = "/camera/cam/image_raw/compressed"
RAW = "/camera/cam/image_raw"
H, W = 8, 12


def cam_contract(raw=False, **term):
    base = contract()
    d = base.to_dict()
    d["observation"].append({"name": "cam", "kind": "image", "topic": RAW if raw else CAM,
                             "type": "sensor_msgs/msg/Image" if raw else "sensor_msgs/msg/CompressedImage",
                             "encoding": "rgb8", "height": H, "width": W, **term})
    return type(base).from_dict(d)


def pixels(i, h=H, w=W):
    """Image i: its index in the red channel, a gradient in green (a frame is identifiable)."""
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = i % 256
    img[..., 1] = np.arange(w, dtype=np.uint8)[None, :] * 7
    img[..., 2] = 200
    return img


def png(img):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def camera_bag(path, n=40, cam_ticks=None, raw=False, stamp_offset=0.0, size=(H, W), cam_topic=True,
               cam_lag_s=0.0):
    """Lock-step recording with a camera: state k at t_k (received +0.4 ms), the camera's image of
    tick k stamped t_k + cam_lag_s (received +0.5 ms) for k in cam_ticks (default every tick),
    command k at t_k + 3 ms. stamp_offset moves header stamps to another clock (sim time)."""
    topics = dict(TOPICS)
    if cam_topic:
        topics[RAW if raw else CAM] = "sensor_msgs/msg/Image" if raw else "sensor_msgs/msg/CompressedImage"
    w = EpisodeBagWriter(path, topics, {"task": "curved_reach", "episode_id": 1})
    ticks = set(range(n) if cam_ticks is None else cam_ticks)
    for k in range(n):
        t = T0 + k / RATE
        recv = int(round(t * 1e9))
        w.write("/joint_states", js(k, t + stamp_offset), recv + 400_000)
        w.write("/task_state", ts(k, t + stamp_offset), recv + 450_000)
        if cam_topic and k in ticks:
            img = pixels(k, *size)
            stamp = t + stamp_offset + cam_lag_s
            msg = (ImageData(stamp, size[0], size[1], "rgb8", size[1] * 3, img.tobytes()) if raw
                   else CompressedImageData(stamp, "png", png(img)))
            w.write(RAW if raw else CAM, msg, recv + 500_000)
        w.write(CMD, {"data": cmd(k)}, recv + 3_000_000)
    w.close(success=True, outcome="success")
    return path


def picked(ep):
    """Index of the image each frame got (its red value); -1 for a black (no image) frame."""
    red = ep.images["cam"][:, 0, 0, 0].astype(int)
    return np.where(ep.images["cam"][:, 0, 0, 2] == 200, red, -1)


@pytest.mark.parametrize("raw", [False, True])
def test_every_tick_camera_gives_each_frame_its_own_image(tmp_path, raw):
    camera_bag(tmp_path / "ep", n=30, raw=raw)
    ep, rep = episode_from_bag(tmp_path / "ep", cam_contract(raw=raw))
    assert len(ep) == 30 and ep.labelled.all() and rep["flags"] == []
    assert ep.images["cam"].dtype == np.uint8 and ep.images["cam"].shape == (30, H, W, 3)
    for k in range(30):
        np.testing.assert_array_equal(ep.images["cam"][k], pixels(k))
    r = rep["images"]["cam"]
    assert r["rule"] == "asof" and r["frames_aligned"] == 30 and r["frames_outside"] == 0
    assert r["max_age_seen_s"] == 0.0 and r["max_age_s"] == pytest.approx(0.1)   # stale_after_s
    assert ep.meta["images"]["cam"]["frames_outside"] == 0


def test_slow_camera_asof_nearest_and_max_age(tmp_path):
    """A 10 Hz camera (every 5th tick) at 50 Hz control."""
    camera_bag(tmp_path / "ep", n=40, cam_ticks=range(0, 40, 5))
    c = cam_contract()
    ep, rep = episode_from_bag(tmp_path / "ep", c)                       # asof, tolerance 0.1 s
    assert list(picked(ep)) == [5 * (k // 5) for k in range(40)]         # never a future image
    assert ep.labelled.all() and rep["images"]["cam"]["max_age_seen_s"] == pytest.approx(0.08)
    # a 50 ms tolerance: ages 0.06 and 0.08 s (ticks 3, 4 of every 5) are outside it
    ep, rep = episode_from_bag(tmp_path / "ep", c, image_max_age_s=0.05)
    r = rep["images"]["cam"]
    assert r["frames_outside"] == 16 and r["frames_aligned"] == 24 and rep["image_frames_outside"] == 16
    assert list(np.flatnonzero(~ep.labelled)) == [k for k in range(40) if k % 5 in (3, 4)]
    assert list(picked(ep)) == [5 * (k // 5) for k in range(40)]         # kept as context, not in the loss
    assert rep["flags"] == []                                            # per frame, not an episode flag
    # nearest: ticks 3, 4 take the next image (20/40 ms ahead), within 50 ms
    ep, rep = episode_from_bag(tmp_path / "ep", c, image_alignment="nearest", image_max_age_s=0.05)
    assert list(picked(ep)) == [min(5 * round(k / 5 + 1e-9), 35) if k % 5 < 3 else min(5 * (k // 5 + 1), 35)
                                for k in range(40)]
    assert ep.labelled.sum() == 38                                       # 38, 39: image 35 is 60/80 ms old
    assert rep["images"]["cam"]["max_age_seen_s"] == pytest.approx(0.08)
    # the term's own max_age_s is the default tolerance
    ep, rep = episode_from_bag(tmp_path / "ep", cam_contract(max_age_s=0.05))
    assert rep["images"]["cam"]["max_age_s"] == 0.05 and rep["images"]["cam"]["frames_outside"] == 16


def test_camera_starting_late_and_stopping(tmp_path):
    camera_bag(tmp_path / "ep", n=40, cam_ticks=[k for k in range(3, 40) if not 20 <= k < 30])
    c = cam_contract()
    ep, rep = episode_from_bag(tmp_path / "ep", c)
    r = rep["images"]["cam"]
    p = picked(ep)
    assert list(p[:3]) == [-1, -1, -1] and r["frames_without_image"] == 3     # asof: nothing before tick 3
    assert list(p[20:30]) == [19] * 10                                        # held, never interpolated
    # outside 0.1 s: frames 0-2 (no image) and 25-29 (image 19 is 0.12-0.2 s old)
    assert list(np.flatnonzero(~ep.labelled)) == [0, 1, 2, 25, 26, 27, 28, 29]
    assert r["frames_outside"] == 8 and r["max_age_seen_s"] == pytest.approx(0.2)
    assert len(ep) == 40 and rep["flags"] == []      # state ZOH and frames untouched by the camera
    ep, rep = episode_from_bag(tmp_path / "ep", c, image_alignment="nearest")
    assert list(picked(ep)[:3]) == [3, 3, 3] and ep.labelled[:3].all()         # 60/40/20 ms ahead
    assert list(picked(ep)[20:30]) == [19] * 5 + [30] * 5


def test_sim_clock_lockstep_aligns_on_header_stamps(tmp_path):
    """Header stamps in sim time (another clock than the receive times), as the bridge sends."""
    camera_bag(tmp_path / "ep", n=30, stamp_offset=-T0 + 5.0)
    ep, rep = episode_from_bag(tmp_path / "ep", cam_contract())
    assert rep["frame_clock"] == "header" and rep["images"]["cam"]["clock"] == "header"
    assert list(picked(ep)) == list(range(30)) and rep["images"]["cam"]["max_age_seen_s"] == 0.0
    # a camera stamped 4 ms after the state it shows: as-of takes the previous image (20 ms ->
    # 16 ms old), nearest the image of the tick
    camera_bag(tmp_path / "lag", n=30, stamp_offset=-T0 + 5.0, cam_lag_s=0.004)
    ep, rep = episode_from_bag(tmp_path / "lag", cam_contract())
    assert list(picked(ep)) == [-1] + list(range(29)) and not ep.labelled[0]
    assert rep["images"]["cam"]["max_age_seen_s"] == pytest.approx(0.016)
    ep, rep = episode_from_bag(tmp_path / "lag", cam_contract(), image_alignment="nearest")
    assert list(picked(ep)) == list(range(30)) and ep.labelled.all()


def test_build_report_counts_and_memory_mapped_frames(tmp_path):
    camera_bag(tmp_path / "bags" / "a", n=20)
    camera_bag(tmp_path / "bags" / "b", n=25, cam_ticks=[k for k in range(25) if k < 10 or k >= 20])
    camera_bag(tmp_path / "bags" / "c", n=10, cam_ticks=[])            # topic recorded, never a frame
    ds, rep = build_dataset([tmp_path / "bags"], cam_contract(), tmp_path / "ds")
    assert rep["included"] == 2 and rep["image_alignment"] == "asof"
    cams = rep["cameras"]["cam"]
    assert cams["frames_aligned"] == 20 + 20 and cams["frames_outside"] == 5   # b: ticks 15-19
    assert cams["max_age_seen_s"] == pytest.approx(0.2)
    excluded = [e for e in rep["episodes"] if e["status"] == "excluded"]
    assert len(excluded) == 1 and "no messages on " + CAM in excluded[0]["reasons"][0]
    assert all(isinstance(e.images["cam"], np.memmap) for e in ds.episodes)   # spilled, not in memory
    assert not list((tmp_path / "ds").glob(".frames_scratch_*"))                 # scratch gone
    back = Dataset.load(tmp_path / "ds")
    assert back.content_hash() == ds.content_hash() == rep["hash"]
    np.testing.assert_array_equal(back.episodes[1].images["cam"][12], pixels(9))
    assert back.episodes[1].labelled.sum() == 20
    saved = json.loads((tmp_path / "ds" / "build_report.json").read_text())
    assert saved["cameras"]["cam"]["frames_outside"] == 5


def test_bad_camera_input_names_the_problem(tmp_path):
    c = cam_contract()
    camera_bag(tmp_path / "no_topic", n=10, cam_topic=False)
    camera_bag(tmp_path / "wrong_size", n=10, size=(H + 2, W))
    camera_bag(tmp_path / "raw_instead", n=10, raw=True)
    ds, rep = build_dataset([tmp_path], c)
    reasons = {e["path"].rsplit("/", 1)[1]: " ".join(e["reasons"]) for e in rep["episodes"]}
    assert rep["included"] == 0
    assert "BuildError" in reasons["no_topic"] and CAM in reasons["no_topic"] and "'cam'" in reasons["no_topic"]
    assert "ImageError" in reasons["wrong_size"] and f"frame is {W}x{H + 2}" in reasons["wrong_size"]
    assert "contract expects 12x8" in reasons["wrong_size"]
    assert CAM in reasons["raw_instead"] and "not in the bag" in reasons["raw_instead"]
    with pytest.raises(ValueError, match="image_alignment must be one of"):
        episode_from_bag(tmp_path / "wrong_size", c, image_alignment="linear")


def test_cli_build_with_camera_options(tmp_path, capsys):
    from bc_policy_node.cli import main as cli

    camera_bag(tmp_path / "bags" / "ep", n=40, cam_ticks=range(0, 40, 5))
    cfile = tmp_path / "c.yaml"
    cfile.write_text(json.dumps(cam_contract().to_dict()))       # JSON is YAML
    assert cli(["dataset", "build", str(tmp_path / "bags"), "--contract", str(cfile), "--out",
                str(tmp_path / "ds"), "--image-max-age", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "camera cam (asof, max age 50 ms): 24 frames aligned, 16 outside the tolerance" in out
    assert "max age seen 80 ms" in out
    assert cli(["dataset", "build", str(tmp_path / "bags"), "--contract", str(cfile), "--out",
                str(tmp_path / "ds2"), "--image-max-age", "0.05", "--image-alignment", "nearest"]) == 0
    assert "38 frames aligned, 2 outside" in capsys.readouterr().out
    assert Dataset.load(tmp_path / "ds2").episodes[0].labelled.sum() == 38
    assert not list(tmp_path.glob(".frames_scratch_*"))
