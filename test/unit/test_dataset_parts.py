"""Datasets of a Cartesian + gripper contract from a bag written by rosbags' own writer (MCAP,
as `ros2 bag record` leaves it): PoseStamped observations, TwistStamped and gripper commands on
two topics, one of each per lock-step tick. The builder pairs each twist with the gripper
command of the same tick (not the one before it), holds and counts a missing one; the
recorder's per-part check refuses a wrong-size gripper command."""
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer

from bc_policy_node.core.contract import Contract, ContractError
from bc_policy_node.core.data.alignment import part_command
from bc_policy_node.core.data.dataset_builder import build_dataset

from test_action_parts import DT, spec
from test_foreign_bags import foreign_store

T0 = 1_700_000_000 * 10**9
N = 40
CONTRACT = Contract.from_dict(spec())


def _stamp(store, ns):
    return store.types["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9)


def _header(store, ns):
    return store.types["std_msgs/msg/Header"](stamp=_stamp(store, ns), frame_id="base_link")


def cartesian_bag(path: Path, drop_gripper_at=()):
    """Tick k: ee pose + task state stamped t_k; the answer twist (vx = k/100) and gripper
    (k/N) 2 ms later, the gripper 50 us after the twist."""
    st = store = foreign_store()
    T = store.types
    w = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
    w.open()
    conns = {t: w.add_connection(t, ty, typestore=store) for t, ty in (
        ("/ee_pose", "geometry_msgs/msg/PoseStamped"), ("/task_state", "bc_msgs/msg/TaskState"),
        ("/servo_node/delta_twist_cmds", "geometry_msgs/msg/TwistStamped"),
        ("/gripper_controller/commands", "std_msgs/msg/Float64MultiArray"))}
    ts_fields = _task_state_defaults(T)
    for k in range(N):
        t = T0 + int(round(k * DT * 1e9))
        pose = T["geometry_msgs/msg/PoseStamped"](header=_header(st, t), pose=T["geometry_msgs/msg/Pose"](
            position=T["geometry_msgs/msg/Point"](x=0.01 * k, y=0.6, z=0.1),
            orientation=T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0)))
        tsm = T["bc_msgs/msg/TaskState"](**{**ts_fields, "header": _header(st, t), "step": k,
                                            "goal": np.array([0.1, 0.7, 0.1]), "done": k == N - 1})
        w.write(conns["/ee_pose"], t, store.serialize_cdr(pose, "geometry_msgs/msg/PoseStamped"))
        w.write(conns["/task_state"], t + 1000, store.serialize_cdr(tsm, "bc_msgs/msg/TaskState"))
        if k == N - 1:
            break
        tw = T["geometry_msgs/msg/TwistStamped"](header=_header(st, t + 2_000_000), twist=T["geometry_msgs/msg/Twist"](
            linear=T["geometry_msgs/msg/Vector3"](x=k / 100, y=0.0, z=-k / 200),
            angular=T["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0)))
        w.write(conns["/servo_node/delta_twist_cmds"], t + 2_000_000,
                store.serialize_cdr(tw, "geometry_msgs/msg/TwistStamped"))
        if k not in drop_gripper_at:
            g = T["std_msgs/msg/Float64MultiArray"](layout=T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0),
                                                   data=np.array([k / N]))
            w.write(conns["/gripper_controller/commands"], t + 2_050_000,
                    store.serialize_cdr(g, "std_msgs/msg/Float64MultiArray"))
    w.close()
    return path


def _task_state_defaults(T):
    return dict(task="push", episode_id=1, seed=0, variant="", obstacle=np.zeros(0), waypoints=np.zeros(0),
                phase=0, num_phases=1, mode=-1, status="running", success=False, reason="",
                ee_position=np.zeros(3))


def test_each_twist_is_paired_with_the_gripper_command_of_its_tick(tmp_path):
    ds, rep = build_dataset([cartesian_bag(tmp_path / "bag")], CONTRACT)
    (ep,) = ds.episodes
    k = np.arange(len(ep))
    assert len(ep) == N - 1, rep
    assert np.allclose(ep.act, np.c_[k / 100, 0 * k, -k / 200, k / N], rtol=0, atol=1e-12)
    assert np.allclose(ep.obs[:, 0], 0.01 * k) and np.allclose(ep.obs[:, 3:6], [0.1, 0.7, 0.1])
    assert rep["episodes"][0]["part_commands_held"] == 0


def test_a_missing_gripper_command_is_held_and_counted(tmp_path):
    ds, rep = build_dataset([cartesian_bag(tmp_path / "bag", drop_gripper_at=(10,))], CONTRACT, keep_flagged=True)
    (ep,) = ds.episodes
    assert ep.act[10, 3] == pytest.approx(9 / N) and ep.act[11, 3] == pytest.approx(11 / N)
    assert rep["episodes"][0]["part_commands_held"] == 1


def test_the_recorders_part_check_names_the_part():
    store = foreign_store()
    T = store.types
    bad = T["std_msgs/msg/Float64MultiArray"](layout=T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0),
                                             data=np.array([0.1, 0.2]))
    with pytest.raises(ContractError, match=r"the gripper part expects \(1,\) finite"):
        part_command(CONTRACT, "/gripper_controller/commands", bad)
    with pytest.raises(ContractError, match="is not a command topic"):
        part_command(CONTRACT, "/ee_pose", bad)
