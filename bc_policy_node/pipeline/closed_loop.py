"""Run an exported policy in closed loop through the real ROS graph (bridge + policy node).

Lock-step episodes give success over seeds at faster than real time; a free-run segment at
real time gives the control rate and latency the policy node achieves (its ~/status).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from diagnostic_msgs.msg import DiagnosticArray

from bc_msgs.msg import PolicyStatus

from .. import graph
from ..core.sim.env import load_contract
from ..nodes import qos
from ..procs import Graph
from .graph_client import GraphClient, RESET

STATUS_FIELDS = ("achieved_rate_hz", "target_rate_hz", "ticks", "missed_ticks", "tick_time_p50_us",
                 "tick_time_p99_us", "inference_time_p50_us", "inference_time_p99_us",
                 "obs_to_cmd_latency_p50_us", "obs_to_cmd_latency_p99_us", "period_jitter_p99_us",
                 "safety_stale", "safety_nan", "safety_limit_clamps", "safety_step_clamps", "model_swaps")


def status_dict(msg: PolicyStatus) -> Dict:
    d = {k: getattr(msg, k) for k in STATUS_FIELDS}
    d.update(model_id=msg.model_id, execution_mode=msg.execution_mode, lifecycle_state=msg.lifecycle_state)
    return d


def _contract(robot: str, task: str, contract_file=None):
    from ..core.contract import Contract

    return Contract.load(contract_file) if contract_file else load_contract(robot, task)


def policy_graph(robot: str, task: str, model: str, lockstep: bool, rtf: float = 1.0,
                 execution_mode: str = "temporal_ensembling", contract_file=None):
    """Bridge (no expert) + policy node; `contract_file` (default: the shipped contract) is the
    node's contract, and its camera terms make the bridge publish those cameras."""
    specs = graph.sim_nodes(robot=robot, task=task, mode="lockstep" if lockstep else "free",
                            real_time_factor=rtf, drive=False,
                            cameras=graph.bridge_cameras(_contract(robot, task, contract_file)))
    specs = [s for s in specs if s.executable != "expert_node"]
    specs[0].parameters["auto_reset"] = False   # episodes start only when we reset them
    specs[0].parameters["diagnostics_rate_hz"] = 20.0   # its counters gate our resets (below)
    specs += graph.policy_nodes(robot=robot, task=task, model=str(model), execution_mode=execution_mode,
                                autostart=True, lockstep=lockstep, use_sim_time=True,
                                contract=str(Path(contract_file).resolve()) if contract_file else "")
    return specs


def run_policy_episodes(model, robot: str, task: str, seeds: Sequence[int], log_dir: Path,
                        lockstep: bool = True, progress=None, timeout_per_episode: float = 120.0,
                        execution_mode: str = "temporal_ensembling", contract_file=None) -> Dict:
    """Episodes driven by the policy node; returns outcomes per seed and the final policy status."""
    specs = policy_graph(robot, task, model, lockstep, execution_mode=execution_mode, contract_file=contract_file)
    status: Dict[str, Optional[PolicyStatus]] = {"last": None}
    outcomes = []
    bridge: Dict[str, str] = {}

    def on_diag(msg):
        for s in msg.status:
            if s.name.startswith("mujoco_bridge"):
                bridge.update({kv.key: kv.value for kv in s.values})

    with Graph(specs, Path(log_dir)) as g, GraphClient("closed_loop", check=g.check_alive) as client:
        client.node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 50)
        client.node.create_subscription(PolicyStatus, "/policy/status",
                                        lambda m: status.__setitem__("last", m), qos.STATUS)
        client.wait_for_services([RESET], timeout=60.0)
        client.wait_until(lambda: status["last"] is not None and status["last"].lifecycle_state == "active",
                          60.0, "the policy node to become active")
        contract = _contract(robot, task, contract_file)
        obs, cmds = list(contract.observation_topics()), [p.topic for p in contract.action.parts]
        node = client.node
        client.wait_until(lambda: (all(node.count_subscribers(t) >= 1 for t in obs)
                                   and node.count_subscribers("/task_state") >= 2
                                   and all(node.count_publishers(t) >= 1 and node.count_subscribers(t) >= 1
                                           for t in cmds)), 60.0,
                          "the policy node and the bridge to discover each other")
        it = progress(seeds) if progress else seeds
        for i, seed in enumerate(it):
            t0 = time.perf_counter()
            ep = client.reset(seed=seed, task=task).episode_id
            final = client.wait_task_done(ep, timeout=timeout_per_episode, stall_timeout=30.0,
                                          kick_after_s=2.0)
            # Lock-step: the node answers every observation, the final (done) one included. Reset
            # only once the BRIDGE has received (and ignored) that answer, or it would become the
            # next episode's first command.
            client.wait_until(lambda: int(bridge.get("ignored_not_running", -1)) >= i + 1, 10.0,
                              "the bridge to receive the policy's answer to the final observation")
            outcomes.append({"seed": int(seed), "status": final.status, "success": bool(final.success),
                             "steps": int(final.step),
                             "ms_per_tick": 1e3 * (time.perf_counter() - t0) / max(1, int(final.step))})
        client.spin(1.2)  # one more status period
        last = status["last"]
    # wall time per lock-step tick = bridge -> policy node -> bridge round trip (+ physics step)
    ms = [o["ms_per_tick"] for o in outcomes]
    return {"episodes": outcomes, "successes": sum(o["success"] for o in outcomes), "n": len(outcomes),
            "round_trip_ms_median": float(np.median(ms)) if ms else float("nan"),
            "status": status_dict(last) if last is not None else {}}


def measure_free_run(model, robot: str, task: str, seconds: float, log_dir: Path, seed: int = 0) -> Dict:
    """Policy node + bridge in free-run at real time for `seconds`: the node's timing status."""
    specs = policy_graph(robot, task, model, lockstep=False)
    status: Dict[str, Optional[PolicyStatus]] = {"last": None}
    with Graph(specs, Path(log_dir)) as g, GraphClient("free_run", check=g.check_alive) as client:
        client.node.create_subscription(PolicyStatus, "/policy/status",
                                        lambda m: status.__setitem__("last", m), qos.STATUS)
        client.wait_for_services([RESET], timeout=60.0)
        client.wait_until(lambda: status["last"] is not None and status["last"].lifecycle_state == "active",
                          60.0, "the policy node to become active")
        client.reset(seed=seed, task=task)
        client.spin(seconds)
        last = status["last"]
    return status_dict(last) if last is not None else {}
