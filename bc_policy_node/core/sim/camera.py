"""Named MJCF cameras rendered offscreen (numpy + mujoco + Pillow; no rclpy).

`CameraSpec` is one entry of the bridge's ``cameras`` parameter, ``"<name>[:<W>x<H>][@<rate>]"``
(e.g. ``"overhead:96x96@10"``; size default 96x96, rate in Hz of sim time, 0 or omitted = every
control tick). `CameraRenderer` renders one named camera of an `ArmSim` model into uint8 RGB
(H, W, 3) through `mujoco.Renderer`.

OpenGL: MuJoCo picks its GL backend from ``MUJOCO_GL`` when ``mujoco`` is imported. The first
`CameraRenderer` of a process with ``MUJOCO_GL`` unset switches the process to ``egl`` (headless:
Mesa's software renderer, or a GPU), see `ensure_gl_backend`. Every GL call of every renderer
runs on one private thread (`_gl_thread`): an EGL context is current on one thread only, and the
bridge renders from its command, service and physics threads.

Goal marker: the shipped scenes have a goal geom (models/common/task_objects.xml, on the mocap
body ``goal``), so the camera sees it. For a scene without one, `update()` draws a sphere at the
goal it is given (`goal_world`), into the scene only (physics and collisions untouched).
"""
from __future__ import annotations

import importlib
import io
import math
import os
import re
import threading
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple

import mujoco
import numpy as np

from .sim import SimError

DEFAULT_SIZE = (96, 96)          # width, height
GOAL_BODY = "goal"
GOAL_RADIUS = 0.025              # m; the marker drawn when the scene has no goal geom
GOAL_RGBA = (0.1, 0.8, 0.2, 1.0)
_SPEC = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*(?::\s*(\d+)\s*x\s*(\d+))?\s*(?:@\s*([0-9]*\.?[0-9]+))?\s*$")


class CameraError(SimError):
    """Unknown camera, bad camera spec, or offscreen rendering unavailable."""


@dataclass(frozen=True)
class CameraSpec:
    """One camera to publish: MJCF camera name, image size (px), rate (Hz sim time; 0 = every tick)."""

    name: str
    width: int = DEFAULT_SIZE[0]
    height: int = DEFAULT_SIZE[1]
    rate_hz: float = 0.0

    def __post_init__(self):
        if not (1 <= self.width <= 4096 and 1 <= self.height <= 4096):
            raise ValueError(f"camera {self.name!r}: size {self.width}x{self.height} must be 1..4096 px")
        if not (math.isfinite(self.rate_hz) and self.rate_hz >= 0):
            raise ValueError(f"camera {self.name!r}: rate {self.rate_hz} must be >= 0 Hz (0 = every tick)")

    @classmethod
    def parse(cls, text: str) -> "CameraSpec":
        """``"overhead"``, ``"overhead:64x64"``, ``"overhead@10"``, ``"overhead:96x96@10"``."""
        m = _SPEC.match(str(text))
        if not m:
            raise ValueError(f"camera spec {text!r} is not '<name>[:<W>x<H>][@<rate_hz>]' "
                             f"(e.g. 'overhead:96x96@10')")
        name, w, h, rate = m.groups()
        return cls(name, int(w) if w else DEFAULT_SIZE[0], int(h) if h else DEFAULT_SIZE[1],
                   float(rate) if rate else 0.0)

    @property
    def period_ns(self) -> int:
        """Sim-time frame period (ns); 0 = a frame at every published control tick."""
        return 0 if self.rate_hz == 0 else max(1, int(round(1e9 / self.rate_hz)))

    def __str__(self) -> str:
        return f"{self.name}:{self.width}x{self.height}@{self.rate_hz:g}"


def camera_topic(name: str, compressed: bool = False) -> str:
    """The bridge's topic for camera `name`: ``/camera/<name>/image_raw[/compressed]``."""
    return f"/camera/{name}/image_raw" + ("/compressed" if compressed else "")


_TOPIC = re.compile(r"^/camera/([^/]+)/image_raw(/compressed)?$")


def camera_of_topic(topic: str) -> Tuple[str, bool]:
    """(camera name, compressed) of a bridge camera topic; ValueError for any other topic."""
    m = _TOPIC.match(topic)
    if not m:
        raise ValueError(f"{topic!r} is not a simulated camera topic (/camera/<name>/image_raw[/compressed])")
    return m.group(1), bool(m.group(2))


def parse_camera_specs(items: Iterable[str]) -> Tuple[CameraSpec, ...]:
    """The ``cameras`` parameter -> specs; ValueError on a bad entry or a repeated name."""
    specs = tuple(CameraSpec.parse(s) for s in items)
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"camera(s) {dup} listed more than once")
    return specs


class FrameSchedule:
    """When a camera is due, on the episode's sim time (ns): every call if period 0, else at the
    first published state at or after each multiple of the period."""

    def __init__(self, period_ns: int):
        self.period_ns = int(period_ns)
        self.next_ns = 0

    def reset(self) -> None:
        self.next_ns = 0

    def due(self, t_ns: int) -> bool:
        if self.period_ns == 0:
            return True
        if t_ns < self.next_ns:
            return False
        self.next_ns = (t_ns // self.period_ns + 1) * self.period_ns
        return True


def camera_names(model) -> List[str]:
    """Names of the model's cameras (`model.ncam`, unnamed ones as '#<id>')."""
    out = []
    for i in range(model.ncam):
        n = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i)
        out.append(n if n else f"#{i}")
    return out


def intrinsics(model, camera: str, width: int, height: int) -> Tuple[float, float, float, float]:
    """Pinhole (fx, fy, cx, cy) in px of MJCF camera `camera` rendered at width x height.

    MuJoCo's `fovy` is the vertical field of view with square pixels and a centred principal
    point: fy = fx = (height / 2) / tan(fovy / 2); cx, cy = the image centre in the ROS
    convention (pixel centres at integers): ((width - 1) / 2, (height - 1) / 2).
    """
    cam = _camera_id(model, camera)
    f = 0.5 * height / math.tan(math.radians(float(model.cam_fovy[cam])) / 2)
    return f, f, (width - 1) / 2.0, (height - 1) / 2.0


def _camera_id(model, camera: str, source: str = "") -> int:
    i = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
    if i < 0:
        where = f"{source}: " if source else ""
        raise CameraError(f"{where}no camera named {camera!r}; the model's cameras: {camera_names(model)}")
    return int(i)


def goal_world(sim, goal: Sequence[float]) -> np.ndarray:
    """World position of a task goal ((x, y) goals of planar arms at the tool tip's height,
    as `ArmSim.set_goal_marker` places the marker)."""
    g = np.asarray(goal, dtype=float).ravel()
    if g.size == 2:
        return np.array([g[0], g[1], sim.ee_position()[2]])
    return g[:3].copy()


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """uint8 RGB (H, W, 3) -> JPEG bytes (Pillow)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb), "RGB").save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


# ---------------------------------------------------------------------------- OpenGL
_gl_lock = threading.Lock()
_gl_pool: Optional[ThreadPoolExecutor] = None


_live: "weakref.WeakSet[CameraRenderer]" = weakref.WeakSet()


def _close_all() -> None:
    """Interpreter exit: free every renderer's GL context on the GL thread while it still runs
    (a context freed later by the garbage collector, from another thread, raises EGL errors)."""
    for r in list(_live):
        try:
            r.close()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def _gl_thread() -> ThreadPoolExecutor:
    """The one thread that owns every GL context of this process."""
    global _gl_pool
    with _gl_lock:
        if _gl_pool is None:
            _gl_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mujoco-gl")
            # Runs before concurrent.futures joins its workers (its hooks run in reverse order
            # of registration; the executor module registered its own at import).
            threading._register_atexit(_close_all)   # type: ignore[attr-defined]
        return _gl_pool


def gl_call(fn: Callable[..., Any], *args: Any) -> Any:
    """Run `fn(*args)` on the GL thread and return its result (exceptions propagate)."""
    if threading.current_thread().name.startswith("mujoco-gl"):
        return fn(*args)
    return _gl_thread().submit(fn, *args).result()


def gl_submit(fn: Callable[..., Any], *args: Any) -> "Future[Any]":
    """Queue `fn(*args)` on the GL thread (free-running bridge: render without holding the sim)."""
    return _gl_thread().submit(fn, *args)


def gl_backend() -> str:
    return os.environ.get("MUJOCO_GL", "").strip().lower()


def ensure_gl_backend() -> str:
    """Use EGL when ``MUJOCO_GL`` is unset (headless default); returns the backend in use.

    ``mujoco`` chose its GL context class when it was imported, so with MUJOCO_GL unset at that
    time (GLFW, which needs an X display) its `gl_context` module is re-evaluated for EGL.
    """
    if gl_backend():
        return gl_backend()
    os.environ["MUJOCO_GL"] = "egl"
    importlib.reload(mujoco.gl_context)
    return "egl"


class CameraRenderer:
    """One MJCF camera of `model` rendered offscreen at width x height (uint8 RGB (H, W, 3)).

    Args:
        model: the `mujoco.MjModel` (of an `ArmSim`: ``sim.model``).
        camera: MJCF camera name; an unknown one raises `CameraError` listing the model's cameras.
        width, height: image size (px); at most the model's offscreen buffer
            (``<visual><global offwidth offheight>``, default 640 x 480).
        source: where the model comes from (for error messages), e.g. the MJCF path.
        draw_goal: draw a goal sphere at the goal given to `update()`; None = only if the scene
            has no goal geom (no geom on body ``goal``).
        shadows: render shadows. Off by default: with Mesa's software renderer the shadow pass
            is most of a frame (64x64 overhead: 16 ms with, 3.8 ms without, measured here), and
            a policy learns nothing from it that the lit scene does not show.

    Raises `CameraError` if offscreen rendering does not work (no GL): the message says to set
    ``MUJOCO_GL=egl``. Call `close()` when done (frees the GL context on the GL thread).
    """

    def __init__(self, model, camera: str, width: int = DEFAULT_SIZE[0], height: int = DEFAULT_SIZE[1],
                 source: str = "", draw_goal: Optional[bool] = None, shadows: bool = False):
        self.model = model
        self.camera = camera
        self.camera_id = _camera_id(model, camera, source)
        self.width, self.height = int(width), int(height)
        gb = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, GOAL_BODY)
        has_goal_geom = gb >= 0 and any(int(model.geom_bodyid[g]) == gb for g in range(model.ngeom))
        self.draw_goal = (not has_goal_geom) if draw_goal is None else bool(draw_goal)
        self.shadows = bool(shadows)
        self._d = mujoco.MjData(model)   # the rendered state (kinematics only; the live data untouched)
        backend = ensure_gl_backend()
        try:
            self._r = gl_call(self._make)
        except ValueError as e:        # size above the offscreen buffer: mujoco says how to fix it
            raise CameraError(f"camera {camera!r} {self.width}x{self.height}: {e}") from None
        except Exception as e:  # noqa: BLE001 - FatalError, EGL/GLFW errors, ImportError: one message
            raise CameraError(
                f"offscreen rendering of camera {camera!r} failed with MUJOCO_GL={backend!r} "
                f"({type(e).__name__}: {e}). On a headless machine set MUJOCO_GL=egl "
                f"(needs libEGL, e.g. Mesa's software renderer).") from None
        self.fx, self.fy, self.cx, self.cy = intrinsics(model, camera, self.width, self.height)
        _live.add(self)

    def _make(self):
        q = self.model.vis.quality
        size = q.shadowsize
        if not self.shadows:   # the GL context allocates its shadow map from this at creation
            q.shadowsize = 0
        try:
            r = mujoco.Renderer(self.model, self.height, self.width)
        finally:
            q.shadowsize = size
        r.update_scene(mujoco.MjData(self.model), self.camera_id)
        r.render()                     # fails here, not at the first frame, if GL does not work
        return r

    @property
    def scene(self):
        return self._r.scene

    def update(self, data, goal: Optional[Sequence[float]] = None) -> None:
        """Take the scene of `data` (CPU only, ~0.1 ms; call it with the simulation consistent)
        and, if draw_goal and `goal` (world xyz) is given, add the goal sphere.

        The positions (qpos, mocap bodies) are copied and their kinematics recomputed, so the
        image shows exactly that state even where `data`'s derived positions are stale (a task
        reset moves the goal's mocap body without a forward pass) and `data` may change while
        `render()` runs.
        """
        m, d = self.model, self._d
        d.time = data.time
        d.qpos[:] = data.qpos
        d.mocap_pos[:] = data.mocap_pos
        d.mocap_quat[:] = data.mocap_quat
        mujoco.mj_kinematics(m, d)
        mujoco.mj_comPos(m, d)
        mujoco.mj_camlight(m, d)
        self._r.update_scene(d, self.camera_id)
        self._r.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = int(self.shadows)
        if self.draw_goal and goal is not None:
            scn = self._r.scene
            if scn.ngeom < scn.maxgeom:
                mujoco.mjv_initGeom(scn.geoms[scn.ngeom], int(mujoco.mjtGeom.mjGEOM_SPHERE),
                                    np.array([GOAL_RADIUS, 0.0, 0.0]), np.asarray(goal, dtype=float)[:3],
                                    np.eye(3).ravel(), np.array(GOAL_RGBA, dtype=np.float32))
                scn.ngeom += 1

    def render(self) -> np.ndarray:
        """Pixels of the scene taken by the last `update()`: uint8 (H, W, 3), row 0 at the top."""
        return gl_call(self._r.render)

    def capture(self, data, goal: Optional[Sequence[float]] = None) -> np.ndarray:
        """`update()` + `render()`."""
        self.update(data, goal)
        return self.render()

    def close(self) -> None:
        r, self._r = getattr(self, "_r", None), None
        if r is not None:
            gl_call(r.close)

    def __enter__(self) -> "CameraRenderer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
