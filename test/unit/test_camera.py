"""core/sim/camera.py: camera specs, intrinsics and the offscreen renderer (MUJOCO_GL=egl).

The renderer tests need offscreen OpenGL; they skip (with the reason) only where EGL cannot
render at all - on this project's machines it can, so they run.
"""
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from bc_policy_node.core.sim.camera import (CameraError, CameraRenderer, CameraSpec, FrameSchedule,
                                            camera_names, encode_jpeg, goal_world, intrinsics,
                                            parse_camera_specs)
from bc_policy_node.core.sim.env import MODELS_DIR, SimEnv

SIZE = 64


def test_camera_spec_parsing():
    assert CameraSpec.parse("overhead:96x64@10") == CameraSpec("overhead", 96, 64, 10.0)
    assert CameraSpec.parse("front") == CameraSpec("front", 96, 96, 0.0)
    assert CameraSpec.parse("front@0") == CameraSpec("front", 96, 96, 0.0)
    assert CameraSpec.parse(" overhead : 32x48 ") == CameraSpec("overhead", 32, 48, 0.0)
    assert CameraSpec.parse("overhead@10").period_ns == 100_000_000
    for bad in ("", "over head", "overhead:64", "overhead:64x64@-1", "overhead:0x64", "1cam"):
        with pytest.raises(ValueError):
            CameraSpec.parse(bad)
    with pytest.raises(ValueError, match="more than once"):
        parse_camera_specs(["overhead:64x64", "overhead@5"])
    assert parse_camera_specs([]) == ()


def test_frame_schedule_in_sim_time():
    every = FrameSchedule(0)
    assert all(every.due(t) for t in (0, 0, 20, 40))
    s = FrameSchedule(100)                   # 10 Hz on 20 ns ticks: ticks 0, 5, 10, ...
    due = [t for t in range(0, 301, 20) if s.due(t)]
    assert due == [0, 100, 200, 300]
    s.reset()
    assert s.due(40) and not s.due(60)


def test_shipped_models_have_cameras_and_intrinsics():
    env = SimEnv("planar3", "curved_reach")
    assert "overhead" in camera_names(env.sim.model)
    assert {"overhead", "front"} <= set(camera_names(SimEnv("arm7", "curved_reach").sim.model))
    fx, fy, cx, cy = intrinsics(env.sim.model, "overhead", 64, 48)
    fovy = float(env.sim.model.cam_fovy[0])
    assert fx == fy == pytest.approx(24 / math.tan(math.radians(fovy) / 2))
    assert (cx, cy) == (31.5, 23.5)


def test_unknown_camera_lists_the_model_cameras():
    env = SimEnv("planar3", "curved_reach")
    with pytest.raises(CameraError, match=r"no camera named 'nadir'.*\['overhead'\]"):
        CameraRenderer(env.sim.model, "nadir", SIZE, SIZE, source="planar3.xml")


def test_no_gl_says_to_set_mujoco_gl_egl(tmp_path):
    """A GL backend that cannot render here (OSMesa is not installed) gives the clear message."""
    code = ("from bc_policy_node.core.sim.env import SimEnv\n"
            "from bc_policy_node.core.sim.camera import CameraRenderer, CameraError\n"
            "env = SimEnv('planar3', 'curved_reach')\n"
            "try:\n    CameraRenderer(env.sim.model, 'overhead', 32, 32)\nexcept CameraError as e:\n"
            "    print('CAMERA_ERROR', e)\n")
    env = {**os.environ, "MUJOCO_GL": "glfw"}
    env.pop("DISPLAY", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "CAMERA_ERROR" in out.stdout, out.stdout + out.stderr
    assert "MUJOCO_GL=egl" in out.stdout and "'glfw'" in out.stdout, out.stdout


@pytest.fixture(scope="module")
def renderer():
    env = SimEnv("planar3", "curved_reach")
    try:
        r = CameraRenderer(env.sim.model, "overhead", SIZE, SIZE, source=str(env.sim.path))
    except CameraError as e:
        pytest.skip(f"offscreen rendering unavailable on this machine: {e}")
    yield env, r
    r.close()


def test_render_shape_dtype_and_the_arm_moving_changes_the_image(renderer):
    env, r = renderer
    env.reset(3)
    a = r.capture(env.sim.data)
    assert a.shape == (SIZE, SIZE, 3) and a.dtype == np.uint8
    assert a.std() > 5, "not a blank image"
    assert np.array_equal(a, r.capture(env.sim.data)), "same state, same pixels"
    env.sim.set_state(env.sim.qpos + np.array([0.6, -0.5, 0.4]))
    b = r.capture(env.sim.data)
    assert np.abs(a.astype(int) - b.astype(int)).sum(axis=2).astype(bool).sum() > 20


def test_goal_marker_is_visible(renderer):
    """Moving only the goal changes pixels; the drawn marker (scene without a goal geom) too."""
    env, r = renderer
    env.reset(0)
    a = r.capture(env.sim.data)
    env.sim.set_goal_marker(env.task.goal + np.array([0.0, 0.15]))     # no forward pass: stale xpos
    b = r.capture(env.sim.data)
    changed = np.abs(a.astype(int) - b.astype(int)).sum(axis=2) > 30
    assert 1 <= changed.sum() <= 40, changed.sum()                     # the marker, nothing else
    assert b[changed][:, 1].mean() > b[changed][:, 0].mean()           # greenish where it moved to

    drawn = CameraRenderer(env.sim.model, "overhead", SIZE, SIZE, draw_goal=True)
    try:
        c = drawn.capture(env.sim.data, goal_world(env.sim, [0.2, -0.4]))
        d = drawn.capture(env.sim.data, goal_world(env.sim, [0.2, 0.4]))
        assert (np.abs(c.astype(int) - d.astype(int)).sum(axis=2) > 30).sum() >= 4
    finally:
        drawn.close()


def test_jpeg_round_trip(renderer):
    from PIL import Image
    import io

    env, r = renderer
    env.reset(1)
    img = r.capture(env.sim.data)
    jpg = encode_jpeg(img, 90)
    back = np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB"))
    assert back.shape == img.shape and np.abs(back.astype(int) - img.astype(int)).mean() < 6


def test_custom_scene_without_goal_geom_draws_the_goal(tmp_path):
    xml = (MODELS_DIR / "planar3.xml").read_text().replace('<include file="common/task_objects.xml"/>', "")
    path = tmp_path / "planar3_nogoal.xml"
    path.write_text(xml)
    import mujoco
    m = mujoco.MjModel.from_xml_path(str(path))
    try:
        r = CameraRenderer(m, "overhead", SIZE, SIZE)
    except CameraError as e:
        pytest.skip(f"offscreen rendering unavailable on this machine: {e}")
    try:
        assert r.draw_goal
        d = mujoco.MjData(m)
        mujoco.mj_forward(m, d)
        a = r.capture(d)
        b = r.capture(d, [0.45, 0.1, 0.02])
        assert (np.abs(a.astype(int) - b.astype(int)).sum(axis=2) > 30).sum() >= 2
    finally:
        r.close()
