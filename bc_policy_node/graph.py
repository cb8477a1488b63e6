"""The ROS graphs this package starts, defined once (no rclpy, no launch imports).

`launch/*.launch.py` turn these specs into launch_ros `Node` actions; `procs.py` turns the same
specs into real processes for the CLI and the process-level tests. So every node name,
executable, parameter and remapping a launch file uses is exercised in CI.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

PACKAGE = "bc_policy_node"


@dataclass(frozen=True)
class LaunchArg:
    name: str
    default: str
    description: str


@dataclass
class NodeSpec:
    executable: str
    name: str
    parameters: Dict[str, object] = field(default_factory=dict)
    remappings: List[Tuple[str, str]] = field(default_factory=list)
    param_file: Optional[str] = None     # config/<file>.yaml keyed by node name


def controller_command_topic(controller: str = "forward_position_controller") -> str:
    """ros2_control forward controller command topic."""
    return f"/{controller.strip('/')}/commands"


def share_dir() -> Path:
    """share/bc_policy_node of the install, or the source tree when run from a checkout."""
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory(PACKAGE))
    except Exception:
        return Path(__file__).resolve().parents[1]


def config_path(*parts: str) -> Path:
    return share_dir() / "config" / Path(*parts)


def model_path(*parts: str) -> Path:
    return share_dir() / "models" / Path(*parts)


def default_model(robot: str, task: str) -> str:
    """The shipped policy of robot/task, models/policies/<robot>_<task>.onnx ('/' -> '_').
    ValueError naming the shipped ones and the remedy where none ships (e.g. any Meta-World task)."""
    p = model_path("policies", f"{robot}_{task}".replace("/", "_") + ".onnx")
    if p.is_file():
        return str(p)
    shipped = sorted(f.stem for f in p.parent.glob("*.onnx"))
    raise ValueError(f"no shipped policy for robot {robot!r}, task {task!r} (no {p.name}; shipped: "
                     f"{', '.join(shipped) or 'none'}): pass model:=<policy.onnx> (bc-policy train + export)")


def contract_path(robot: str, task: str) -> Path:
    return config_path("contracts", f"{robot}_{task}.yaml")


# ------------------------------------------------------------------------ launch args
SIM_ARGS = [
    LaunchArg("robot", "planar3", "Robot model: planar3 (3-link planar) or arm7 (7-DoF), MJCF from models/<robot>.xml; "
                                  "sawyer for metaworld/<name> tasks"),
    LaunchArg("task", "curved_reach", "Sim task: curved_reach | bimodal | long_horizon | metaworld/<name> "
                                      "(robot:=sawyer; any Meta-World v3 task with a scripted policy)"),
    LaunchArg("mode", "free", "Bridge stepping: free (real time x rate) or lockstep (advance per command)"),
    LaunchArg("real_time_factor", "1.0", "Free-run speed as a multiple of real time"),
    LaunchArg("seed", "0", "Seed of the first episode"),
    LaunchArg("controller", "forward_position_controller", "ros2_control controller name: commands on <controller>/commands"),
    LaunchArg("push_magnitude", "0.0", "Sim disturbance test: push the arm by random joint offsets of this norm "
              "(rad) a few times per episode (0 = off)"),
]
EXPERT_ARGS = [
    LaunchArg("drive", "true", "true: the expert drives the arm (demonstrations); false: label service only"),
]
RECORD_ARGS = [
    LaunchArg("output_dir", "bags", "Folder for episode bags (one rosbag2/MCAP per episode)"),
    LaunchArg("contract", "", "Contract YAML naming the topics to record (default: config/contracts/<robot>_<task>.yaml)"),
]
POLICY_ARGS = [
    LaunchArg("model", "", "Exported ONNX policy (default: the shipped models/policies/<robot>_<task>.onnx, "
                           "planar3 tasks only; required for other robots and metaworld/<name>)"),
    LaunchArg("execution_mode", "temporal_ensembling",
              "temporal_ensembling | receding_horizon | latency_aware | mode_consistent"),
    LaunchArg("autostart", "true", "Configure and activate the lifecycle node at start"),
    LaunchArg("use_sim_time", "false", "Judge observation age on /clock: true with the MuJoCo bridge "
              "(it stamps in sim time), false on a real robot"),
]
DAGGER_ARGS = [
    LaunchArg("variant", "classic", "DAgger variant: classic (beta gate) | human_gated (~/intervention) | "
              "robot_gated (uncertainty gate)"),
    LaunchArg("beta", "0.5", "classic: probability that the expert acts at a step"),
    LaunchArg("ensemble_models", "", "robot_gated: comma-separated ONNX ensemble members (empty: the "
              "policy's chunk disagreement)"),
]
# The policy node's command output while the dagger node sits between it and the robot.
DAGGER_POLICY_COMMAND = "/dagger/policy_command"


def _bool(v) -> bool:
    return str(v).lower() in ("1", "true", "yes", "on")


def sim_nodes(robot="planar3", task="curved_reach", mode="free", real_time_factor=1.0, seed=0,
              controller="forward_position_controller", drive=True, push_magnitude=0.0, cameras=(),
              **_) -> List[NodeSpec]:
    """Bridge + expert; `cameras`: the bridge's camera specs (`bridge_cameras` of a contract)."""
    bridge = NodeSpec("mujoco_bridge", "mujoco_bridge", param_file="mujoco_bridge.yaml", parameters={
        "robot": robot, "task": task, "mode": mode, "real_time_factor": float(real_time_factor),
        "seed": int(seed), "controller": controller, "push_magnitude": float(push_magnitude)})
    if cameras:
        bridge.parameters["cameras"] = list(cameras)
    expert = NodeSpec("expert_node", "expert", param_file="expert.yaml", parameters={
        "robot": robot, "task": task, "drive": _bool(drive), "controller": controller})
    return [bridge, expert]


def contract_param(robot: str, task: str) -> str:
    """The `contract` parameter of robot/task: its YAML in config/contracts/, or
    ``metaworld/<task>`` (the nodes generate a Meta-World task's contract)."""
    from .core.sim.metaworld_task import is_metaworld   # numpy only; keeps this module's imports light

    return task if is_metaworld(task) else str(contract_path(robot, task))


def bridge_cameras(contract) -> List[str]:
    """The bridge's ``cameras`` parameter that publishes what `contract`'s image terms read:
    ``<name>:<W>x<H>`` per camera, a frame every tick (ValueError for a non-sim camera topic)."""
    from .core.sim.camera import camera_of_topic   # numpy only

    return [f"{camera_of_topic(t.topic)[0]}:{t.width}x{t.height}" for t in contract.images]


def record_nodes(robot="planar3", task="curved_reach", output_dir="bags", contract="", **_) -> List[NodeSpec]:
    return [NodeSpec("recorder_node", "recorder", param_file="recorder.yaml", parameters={
        "contract": contract or contract_param(robot, task), "output_dir": output_dir})]


def policy_nodes(robot="planar3", task="curved_reach", model="", execution_mode="temporal_ensembling",
                 autostart=True, controller="forward_position_controller", lockstep=False,
                 command_topic="", use_sim_time=False, contract="", **_) -> List[NodeSpec]:
    """The policy node. lockstep: tick per observation stamp; command_topic: remap its command
    output (``/<controller>/commands``) there, e.g. to the dagger node's input; use_sim_time:
    required against the sim bridge, which stamps observations in sim time (on the wall clock
    every observation would look stale and the policy would hold); contract: a contract YAML
    (default: the robot/task's shipped one)."""
    params = {"model_path": model or default_model(robot, task),
              "contract": contract or contract_param(robot, task), "execution_mode": execution_mode,
              "autostart": _bool(autostart), "controller": controller}
    if _bool(lockstep):
        params["lockstep"] = True
    if _bool(use_sim_time):
        params["use_sim_time"] = True
    remaps = [(controller_command_topic(controller), command_topic)] if command_topic else []
    return [NodeSpec("policy_node", "policy", param_file="policy.yaml", parameters=params, remappings=remaps)]


def dagger_nodes(robot="planar3", task="curved_reach", model="", execution_mode="temporal_ensembling",
                 controller="forward_position_controller", variant="classic", beta=0.5,
                 ensemble_models="", seed=0, sim_time=True, **_) -> List[NodeSpec]:
    """Policy (lock-step, its whole action vector remapped to DAGGER_POLICY_COMMAND) + the dagger
    node, which sends the executed commands to /<controller>/commands (or, for a Cartesian +
    gripper contract, to the contract's part topics). Run with sim_nodes(mode="lockstep",
    drive=False) and record_nodes (the recorder takes /dagger/frame_tag by default).
    sim_time: the policy node judges observation age on /clock (the bridge stamps in sim time;
    on the wall clock every lock-step observation would look stale and the policy would hold)."""
    policy = policy_nodes(robot, task, model, execution_mode, autostart=True, controller=controller,
                          lockstep=True, command_topic=DAGGER_POLICY_COMMAND, use_sim_time=sim_time)[0]
    policy.parameters["command_interface"] = "vector"      # one message per tick, every action part
    params = {"contract": contract_param(robot, task), "variant": variant, "beta": float(beta),
              "controller": controller, "seed": int(seed),
              "policy_command_topic": DAGGER_POLICY_COMMAND}
    members = [m for m in (ensemble_models.split(",") if isinstance(ensemble_models, str)
                           else list(ensemble_models)) if m]
    if members:
        params["ensemble_models"] = members
    return [policy, NodeSpec("dagger_node", "dagger", param_file="dagger.yaml", parameters=params)]


def demo_nodes(**kw) -> List[NodeSpec]:
    """Sim + policy + recorder; the expert only serves labels (it must not fight the policy).
    The policy runs on sim time and, with the bridge in lock-step, ticks per observation."""
    policy = {**kw, "use_sim_time": True, "lockstep": kw.get("mode", "free") == "lockstep"}
    return sim_nodes(**{**kw, "drive": False}) + policy_nodes(**policy) + record_nodes(**kw)


GRAPHS = {
    "sim": (SIM_ARGS + EXPERT_ARGS, sim_nodes),
    "demo": (SIM_ARGS + POLICY_ARGS + RECORD_ARGS, demo_nodes),
    "record": (SIM_ARGS[:2] + RECORD_ARGS, record_nodes),
    "policy": (SIM_ARGS[:2] + POLICY_ARGS, policy_nodes),
    "dagger": (SIM_ARGS[:2] + POLICY_ARGS[:2] + [SIM_ARGS[5]] + DAGGER_ARGS, dagger_nodes),
}
