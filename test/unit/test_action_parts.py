"""Actions beyond joint positions: an end-effector velocity (TwistStamped, what MoveIt Servo
takes) plus a gripper command in one contract; their safety rules (speed and acceleration
bounds, a stop - not a held velocity - on trouble, the workspace box, the gripper's range and
rest) and the control engine on such a contract, with a real ONNX policy."""
import numpy as np
import pytest

from bc_policy_node.core.contract import Contract, ContractError
from bc_policy_node.core.control.controller import ActionReference, PolicyController
from bc_policy_node.core.control.params import PolicyParams
from bc_policy_node.core.control.runtime import OnnxPolicy
from bc_policy_node.core.control.safety import (EVENT_NONFINITE, EVENT_STALE, EVENT_STEP_LIMIT, EVENT_WORKSPACE,
                                                SafetyFilter, SafetyLimits)
from bc_policy_node.core.sim.env import load_contract

from onnx_policies import const_policy

DT = 0.02
TWIST = {"kind": "ee_velocity", "topic": "/servo_node/delta_twist_cmds", "type": "geometry_msgs/msg/TwistStamped",
         "frame_id": "base_link", "names": ["vx", "vy", "vz"], "lower": -0.5, "upper": 0.5, "max_step": 0.1,
         "workspace": {"ee_term": "ee", "lower": [-0.5, 0.4, 0.05], "upper": [0.5, 0.9, 0.3]}}
GRIP = {"kind": "gripper", "topic": "/gripper_controller/commands", "type": "std_msgs/msg/Float64MultiArray",
        "names": ["gripper"], "lower": -1.0, "upper": 1.0, "max_step": 0.5, "rest": -1.0}


def spec(twist=None, grip=None, **top):
    d = {"contract_version": 1, "name": "sawyer_push", "robot": "sawyer", "task": "metaworld/push-v3",
         "control_rate_hz": 1 / DT, "chunk_length": 4, "stale_after_s": 0.1,
         "observation": [{"name": "ee", "topic": "/ee_pose", "type": "geometry_msgs/msg/PoseStamped",
                          "field": "pose.position", "size": 3},
                         {"name": "goal", "topic": "/task_state", "type": "bc_msgs/msg/TaskState", "field": "goal",
                          "size": 3}],
         "action": {"parts": [dict(TWIST, **(twist or {})), dict(GRIP, **(grip or {}))]}}
    d.update(top)
    return d


def test_a_two_part_action_is_the_parts_in_order():
    c = Contract.from_dict(spec())
    a = c.action
    assert (a.kind, a.dim, a.joints, a.joint_names) == ("ee_velocity+gripper", 4, ("vx", "vy", "vz", "gripper"), ())
    assert a.lower == (-0.5, -0.5, -0.5, -1.0) and a.max_step == (0.1, 0.1, 0.1, 0.5)
    assert c.topics()["/servo_node/delta_twist_cmds"] == "geometry_msgs/msg/TwistStamped"
    assert c.topics()["/gripper_controller/commands"] == "std_msgs/msg/Float64MultiArray"
    again = Contract.from_json(c.to_json())
    assert again == c and again.fingerprint() == c.fingerprint()
    with pytest.raises(ContractError, match="relative action frame needs joint_position"):
        c.action_reference_index()


def test_a_one_part_contract_reads_and_hashes_as_before():
    c = load_contract("planar3", "curved_reach")
    d = c.to_dict()["action"]
    assert "parts" not in d and set(d) == {"kind", "topic", "type", "joints", "lower", "upper", "max_step"}
    assert Contract.from_dict({**c.to_dict(), "action": {"parts": [d]}}).fingerprint() == c.fingerprint()


@pytest.mark.parametrize("change, text", [
    ({"twist": {"kind": "ee_pose"}}, r"kind 'ee_pose' not supported \(supported: \('joint_position', 'ee_velocity'"),
    ({"twist": {"type": "std_msgs/msg/Float64MultiArray"}}, "not supported for ee_velocity"),
    ({"twist": {"names": ["vx", "vz"]}}, "names of an ee_velocity part must be"),
    ({"twist": {"lower": 0.1}}, "must allow zero"),
    ({"twist": {"workspace": {"ee_term": "goal_x", "lower": [0, 0, 0], "upper": [1, 1, 1]}}}, "workspace.ee_term"),
    ({"twist": {"workspace": {"ee_term": "ee", "lower": [0, 0, 1], "upper": [1, 1, 1]}}}, "lower must be < upper"),
    ({"grip": {"rest": 2.0}}, "rest must lie within"),
    ({"grip": {"topic": "/servo_node/delta_twist_cmds"}}, "different topics"),
    ({"grip": {"names": ["vx"]}}, "unique across parts"),
    ({"grip": {"frame_id": "x"}}, "frame_id is for ee_velocity"),
])
def test_bad_parts_are_refused_with_the_reason(change, text):
    with pytest.raises(ContractError, match=text):
        Contract.from_dict(spec(**change))


def test_a_model_for_another_action_kind_is_refused_with_every_mismatch():
    cart = Contract.from_dict(spec())
    joints = load_contract("planar3", "curved_reach")
    out = cart.mismatches(joints)
    assert any(m.startswith("action.kind: model ee_velocity+gripper vs robot joint_position") for m in out), out
    assert any(m.startswith("action.joints") for m in out) and any(m.startswith("robot") for m in out), out


def filt(**kw):
    return SafetyFilter(SafetyLimits.from_contract(Contract.from_dict(spec(**kw))))


EE_IN = np.array([0.0, 0.6, 0.2])


def test_the_first_reference_is_rest_and_velocities_change_by_at_most_max_step():
    f, ref = filt(), ActionReference(Contract.from_dict(spec()))
    obs = np.r_[EE_IN, 0.0, 0.7, 0.1]
    assert ref(obs).tolist() == [0.0, 0.0, 0.0, -1.0]                  # stopped, gripper at rest
    cmd, ev = f.filter([0.4, 0.0, -0.05, 1.0], 0.0, 0.0, ref(obs), EE_IN)
    assert cmd.tolist() == [0.1, 0.0, -0.05, -0.5] and ev == (EVENT_STEP_LIMIT,)
    cmd, _ = f.filter([0.4, 0.0, -0.05, 1.0], 0.0, 0.0, None, EE_IN)
    assert cmd.tolist() == pytest.approx([0.2, 0.0, -0.05, 0.0])


@pytest.mark.parametrize("bad, event", [([np.nan, 0, 0, 0], EVENT_NONFINITE), (None, EVENT_STALE)])
def test_trouble_stops_the_arm_and_holds_the_gripper(bad, event):
    f = filt()
    f.filter([0.1, 0.1, 0.0, 0.5], 0.0, 0.0, [0, 0, 0, 0.5], EE_IN)
    proposed, stamp = (bad, 0.0) if bad is not None else ([0.1, 0.1, 0.0, 0.5], -1.0)   # -1 s: stale
    cmd, ev = f.filter(proposed, 0.0, stamp, None, EE_IN)
    assert cmd.tolist() == [0.0, 0.0, 0.0, 0.5] and event in ev      # a held velocity would keep it moving
    assert f.hold().tolist() == [0.0, 0.0, 0.0, 0.5]


def test_the_workspace_box_cuts_velocities_that_would_leave_it():
    f = filt()
    at_top = np.array([0.0, 0.6, 0.3 - 0.001])                       # 1 mm below the top
    cmd, ev = f.filter([0.1, 0.0, 0.1, -1.0], 0.0, 0.0, [0.0, 0.0, 0.09, -1.0], at_top)
    assert cmd[2] == pytest.approx(0.001 / DT) and cmd[0] == 0.1 and EVENT_WORKSPACE in ev
    above = np.array([0.0, 0.6, 0.35])                                # outside: only back toward the box
    cmd, ev = f.filter([0.0, 0.0, 0.05, -1.0], 0.0, 0.0, None, above)
    assert cmd[2] == 0.0 and EVENT_WORKSPACE in ev
    cmd, ev = f.filter([0.0, 0.0, -0.05, -1.0], 0.0, 0.0, None, above)
    assert cmd[2] == -0.05 and EVENT_WORKSPACE not in ev


def test_the_engine_runs_a_policy_on_a_cartesian_gripper_contract(tmp_path):
    """A real ONNX policy asking for 0.3 m/s along x and a closed gripper: the controller ramps
    the speed by max_step per tick, the gripper by its own step, never restarts on a 'jump'
    (no joints), and a stale observation stops the arm."""
    c = Contract.from_dict(spec())
    ctl = PolicyController(c, OnnxPolicy(const_policy(tmp_path / "p.onnx", c, [0.3, 0.0, 0.0, 1.0])),
                           PolicyParams(execution_mode="receding_horizon", n_execute=4))
    obs = np.r_[EE_IN, 0.0, 0.7, 0.1]
    cmds = [ctl.step(obs, stamp=t * DT).command for t in range(5)]   # (the ONNX graph is float32)
    assert [round(float(x[0]), 6) for x in cmds] == [0.1, 0.2, 0.3, 0.3, 0.3]
    assert [round(float(x[3]), 6) for x in cmds] == [-0.5, 0.0, 0.5, 1.0, 1.0]
    r = ctl.step(obs, stamp=0.0, now=10.0)                           # stale
    assert r.command.tolist() == [0.0, 0.0, 0.0, 1.0] and EVENT_STALE in r.events
    assert ctl.restarts["jump"] == 0
