"""Messages <-> numpy / core types, in one place (the only module that knows both sides)."""
from __future__ import annotations

import array
from typing import Sequence, Tuple

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseStamped
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, JointState
from std_msgs.msg import Float64MultiArray, MultiArrayDimension
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from bc_msgs.msg import ActionChunk, TaskState

from ..core.types import JointStateData, TaskStateData
from .common import message_class  # noqa: F401  (re-exported until dagger_node imports it from .common)


def to_time(seconds: float) -> Time:
    sec = int(np.floor(seconds))
    return Time(sec=sec, nanosec=min(int(round((seconds - sec) * 1e9)), 999_999_999))


def to_sec(stamp: Time) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def joint_state_msg(js: JointStateData, frame_id: str = "") -> JointState:
    msg = JointState()
    msg.header.stamp = to_time(js.stamp)
    msg.header.frame_id = frame_id
    msg.name = list(js.name)
    msg.position = np.asarray(js.position, dtype=float).tolist()
    msg.velocity = np.asarray(js.velocity, dtype=float).tolist()
    msg.effort = np.asarray(js.effort, dtype=float).tolist()
    return msg


def joint_state_data(msg: JointState) -> JointStateData:
    return JointStateData(stamp=to_sec(msg.header.stamp), name=list(msg.name),
                          position=np.asarray(msg.position, dtype=float),
                          velocity=np.asarray(msg.velocity, dtype=float),
                          effort=np.asarray(msg.effort, dtype=float))


def pose_stamped_msg(ps) -> PoseStamped:
    """`core.sim.metaworld_task.PoseStampedData` (stamp in s, frame_id, pose.position xyz,
    pose.orientation xyzw) -> geometry_msgs/PoseStamped."""
    msg = PoseStamped()
    msg.header.stamp = to_time(ps.stamp)
    msg.header.frame_id = str(ps.frame_id)
    p = np.asarray(ps.pose.position, dtype=float).reshape(3)
    q = np.asarray(ps.pose.orientation, dtype=float).reshape(4)
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in p)
    (msg.pose.orientation.x, msg.pose.orientation.y, msg.pose.orientation.z,
     msg.pose.orientation.w) = (float(v) for v in q)
    return msg


_TASK_ARRAYS = ("goal", "obstacle", "waypoints", "ee_position")
_TASK_SCALARS = ("task", "episode_id", "seed", "variant", "phase", "num_phases", "mode", "step",
                 "status", "success", "done", "reason")


def task_state_msg(ts: TaskStateData) -> TaskState:
    msg = TaskState()
    msg.header.stamp = to_time(ts.stamp)
    for k in _TASK_SCALARS:
        v = getattr(ts, k)
        setattr(msg, k, type(getattr(msg, k))(v))
    for k in _TASK_ARRAYS:
        setattr(msg, k, np.asarray(getattr(ts, k), dtype=float).ravel().tolist())
    return msg


def task_state_data(msg: TaskState) -> TaskStateData:
    kw = {k: getattr(msg, k) for k in _TASK_SCALARS}
    kw.update({k: np.asarray(getattr(msg, k), dtype=float) for k in _TASK_ARRAYS})
    return TaskStateData(stamp=to_sec(msg.header.stamp), **kw)


def command_msg(values: Sequence[float], joint_names: Sequence[str] = ()) -> Float64MultiArray:
    """A ros2_control forward-controller command (one value per joint, in controller order)."""
    msg = Float64MultiArray()
    if joint_names:
        msg.layout.dim = [MultiArrayDimension(label="joints", size=len(joint_names), stride=len(joint_names))]
    msg.data = np.asarray(values, dtype=float).tolist()
    return msg


def trajectory_msg(values: Sequence[float], joint_names: Sequence[str], time_from_start: float,
                   stamp: Time | None = None) -> JointTrajectory:
    msg = JointTrajectory()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.joint_names = list(joint_names)
    pt = JointTrajectoryPoint()
    pt.positions = np.asarray(values, dtype=float).tolist()
    sec = int(time_from_start)
    pt.time_from_start.sec = sec
    pt.time_from_start.nanosec = int(round((time_from_start - sec) * 1e9))
    msg.points = [pt]
    return msg


def trajectory_first_point(msg: JointTrajectory, joint_order: Sequence[str]) -> Tuple[np.ndarray, str]:
    """Positions of the first point reordered to `joint_order`; ('', reason) style errors."""
    if not msg.points:
        return np.zeros(0), "trajectory has no points"
    names = list(msg.joint_names)
    unknown = [n for n in names if n not in joint_order]
    if unknown:
        return np.zeros(0), f"unknown joint names {unknown}"
    if set(names) != set(joint_order):
        return np.zeros(0), f"trajectory names {names} do not cover joints {list(joint_order)}"
    pos = np.asarray(msg.points[0].positions, dtype=float)
    if pos.shape != (len(names),):
        return np.zeros(0), f"{len(pos)} positions for {len(names)} joint names"
    return pos[[names.index(j) for j in joint_order]], ""


def action_chunk_msg(chunk: np.ndarray, joint_names: Sequence[str], dt: float, model_id: str,
                     stamp: Time) -> ActionChunk:
    msg = ActionChunk()
    msg.header.stamp = stamp
    msg.model_id = model_id
    msg.joint_names = list(joint_names)
    msg.chunk_length = int(chunk.shape[0])
    msg.dt = float(dt)
    msg.actions = np.asarray(chunk, dtype=float).ravel().tolist()
    return msg


def has_header(msg_class) -> bool:
    """True if messages of this class carry ``header.stamp``."""
    return "header" in getattr(msg_class, "_fields_and_field_types", {})


# ---------------------------------------------------------------------------- camera images
def image_msg(rgb: np.ndarray, stamp: Time, frame_id: str = "") -> Image:
    """uint8 RGB (H, W, 3) -> sensor_msgs/Image rgb8 (one memcpy into the message)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w = rgb.shape[:2]
    msg = Image(height=int(h), width=int(w), encoding="rgb8", is_bigendian=0, step=int(w) * 3)
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.data = array.array("B", rgb.tobytes())
    return msg


def image_array(msg: Image) -> np.ndarray:
    """sensor_msgs/Image rgb8 -> uint8 (H, W, 3)."""
    if msg.encoding != "rgb8":
        raise ValueError(f"expected an rgb8 image, got {msg.encoding!r}")
    flat = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    return flat.reshape(msg.height, msg.step)[:, :msg.width * 3].reshape(msg.height, msg.width, 3)


def compressed_image_msg(jpeg: bytes, stamp: Time, frame_id: str = "") -> CompressedImage:
    """JPEG bytes of an rgb8 image -> sensor_msgs/CompressedImage (image_transport's format string)."""
    msg = CompressedImage(format="rgb8; jpeg compressed bgr8")
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.data = array.array("B", jpeg)
    return msg


def camera_info_msg(width: int, height: int, fx: float, fy: float, cx: float, cy: float,
                    frame_id: str = "") -> CameraInfo:
    """Pinhole sensor_msgs/CameraInfo without distortion (a rendered camera)."""
    msg = CameraInfo(width=int(width), height=int(height), distortion_model="plumb_bob")
    msg.header.frame_id = frame_id
    msg.d = [0.0] * 5
    msg.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg
