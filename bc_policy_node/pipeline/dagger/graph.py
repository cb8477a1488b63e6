"""The DAgger graph as real processes: bridge, expert, recorder, policy and dagger nodes, plus
the client that drives them episode by episode (`DaggerGraph`, used by `ros.RosCollector`).

Owns starting the graph and waiting until every link is up, one recorded episode
(`run_episode`: re-arm the policy, start recording, reset, run to done, stop recording, frame
tag counts), the hot swap of a model into the running policy node (`swap`), run-time dagger
parameters (`set_beta`, `set_dagger_params`) and restarting the dagger node with an ensemble.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

import numpy as np
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import Bool, String

from bc_msgs.msg import FrameTag, PolicyStatus, TaskState

from ... import graph
from ...core.sim.disturbance import Pushes
from ...core.types import ACTOR_NAMES
from ...core.sim.env import resolve_contract
from ...nodes import qos
from ...procs import Graph, NodeProcess
from ..graph_client import LOAD_POLICY, QUERY_EXPERT, RESET, START_EPISODE, STOP_EPISODE, GraphClient, GraphError

TRANSITION_ACTIVATE, TRANSITION_DEACTIVATE = Transition.TRANSITION_ACTIVATE, Transition.TRANSITION_DEACTIVATE


class DaggerGraph:
    """The DAgger graph as real processes plus a `GraphClient` that drives it.

    Nodes: bridge (lock-step, auto_reset off), expert (labels only), recorder (into
    `bag_dir`), policy (lock-step on sim time, commands remapped) and dagger (`variant`,
    `dagger_params` on top of config/dagger.yaml; `bridge_params` on top of
    config/mujoco_bridge.yaml). Use as a context manager.
    """

    def __init__(self, robot: str, task: str, model, variant: str, log_dir, bag_dir, beta: float = 0.5,
                 dagger_params: Optional[Mapping[str, Any]] = None,
                 execution_mode: str = "temporal_ensembling", kick_after_s: float = 3.0,
                 episode_timeout_s: float = 120.0, ready_timeout_s: float = 90.0, disturbance=None,
                 bridge_params: Optional[Mapping[str, Any]] = None):
        self.robot, self.task, self.variant = robot, task, variant
        self.log_dir, self.bag_dir = Path(log_dir), Path(bag_dir)
        self.kick_after_s, self.episode_timeout_s = float(kick_after_s), float(episode_timeout_s)
        self.dagger_params = dict(dagger_params or {})
        pushes = Pushes.from_spec(disturbance)
        bridge = {"auto_reset": False, **dict(bridge_params or {})}
        if pushes is not None:
            bridge.update(push_magnitude=pushes.magnitude, push_interval_ticks=float(pushes.interval),
                          push_count=pushes.count)
        specs = (graph.sim_nodes(robot=robot, task=task, mode="lockstep", drive=False)
                 + graph.record_nodes(robot=robot, task=task, output_dir=str(self.bag_dir))
                 + graph.dagger_nodes(robot=robot, task=task, model=str(model), variant=variant, beta=beta,
                                      execution_mode=execution_mode))
        self.specs = {s.name: s for s in specs}
        contract = resolve_contract(graph.contract_param(robot, task))
        self.observed = sorted(set(contract.observation_topics()) | {"/task_state"})
        self.commanded = [part.topic for part in contract.action.parts]
        self.graph = Graph(specs, self.log_dir, extra_params={"mujoco_bridge": bridge,
                                                              "dagger": self.dagger_params})
        try:
            self.client = GraphClient("dagger_loop", check=self.graph.check_alive)
        except Exception:
            self.graph.stop()
            raise
        node = self.client.node
        deep = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        self.tags: Dict[int, Dict[str, Any]] = {}
        self.policy_status = None
        self.dagger_status: Optional[dict] = None
        node.create_subscription(FrameTag, "/dagger/frame_tag", self._on_tag, deep)
        node.create_subscription(PolicyStatus, "/policy/status", self._on_policy_status, qos.STATUS)
        node.create_subscription(String, "/dagger/status", self._on_dagger_status, qos.STATUS)
        node.create_subscription(TaskState, "/task_state", self._on_task_state, qos.STATE)
        self._intervention = node.create_publisher(Bool, "/dagger/intervention",
                                                   QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        self._human = None
        self._human_episode: Optional[int] = None
        self.model_id = ""
        try:
            self.wait_ready(ready_timeout_s)
        except Exception:
            self.close()
            raise

    # ------------------------------------------------------------------ callbacks
    def _on_tag(self, m) -> None:
        s = self.tags.setdefault(int(m.episode_id), {"frames": 0, "labelled": 0, "actors": {}, "reasons": {},
                                                    "steps": [], "anomalies": []})
        s["frames"] += 1
        s["labelled"] += int(m.labelled)
        a = ACTOR_NAMES.get(int(m.actor), str(m.actor))
        s["actors"][a] = s["actors"].get(a, 0) + 1
        r = m.gate_reason or "policy"
        s["reasons"][r] = s["reasons"].get(r, 0) + 1
        s["steps"].append(int(m.step))
        if any(x in r for x in ("timeout", "missing", "error", "unavailable", "hold")) and len(s["anomalies"]) < 50:
            s["anomalies"].append([int(m.step), r])

    def _on_policy_status(self, m) -> None:
        self.policy_status = m

    def _on_dagger_status(self, m) -> None:
        try:
            self.dagger_status = json.loads(m.data)
        except ValueError:
            pass

    def _on_task_state(self, m) -> None:
        """human_gated: the simulated human watches the end effector and flips the switch."""
        if self._human is None or int(m.episode_id) != self._human_episode or m.done:
            return
        active = bool(self._human.observe(np.asarray(m.ee_position, dtype=float)))
        self._intervention.publish(Bool(data=active))

    # ------------------------------------------------------------------ control
    def wait_ready(self, timeout: float) -> None:
        c = self.client
        c.wait_for_services([RESET, START_EPISODE, STOP_EPISODE, QUERY_EXPERT, LOAD_POLICY], timeout)
        for srv, name in ((ChangeState, "/policy/change_state"), (SetParameters, "/dagger/set_parameters")):
            cl = c._client(srv, name)
            c.wait_until(cl.service_is_ready, timeout, f"service {name}")
        c.wait_until(lambda: self.policy_status is not None and self.policy_status.lifecycle_state == "active",
                     timeout, "the policy node to become active")
        c.wait_until(self._dagger_connected, timeout, "the dagger node to see the expert's service, the "
                     "observations and the policy's commands")
        node = c.node
        c.wait_until(lambda: node.count_subscribers("/dagger/frame_tag") >= 2
                     and node.count_publishers("/dagger/policy_command") >= 1
                     and node.count_subscribers("/dagger/policy_command") >= 1, timeout,
                     "the dagger node's topics to connect")
        # the recorder's own subscriptions matched (reliable + volatile: a late match loses the
        # first ticks of the first episode, which the dataset builder then flags as a gap)
        recorded = (*self.observed, "/dagger/frame_tag", *self.commanded)
        c.wait_recorder(lambda s: all(s["publishers"].get(t, 0) >= 1 for t in recorded), timeout,
                        "the recorder to match the bridge's and the dagger node's publishers")
        self.model_id = self.policy_status.model_id
        c.spin(0.3)

    def _dagger_connected(self) -> bool:
        s = self.dagger_status
        return bool(s and s.get("expert_ready") and s.get("links") and all(s["links"].values()))

    def _change_policy_state(self, transition: int) -> None:
        req = ChangeState.Request(transition=Transition(id=transition))
        self.client.call(ChangeState, "/policy/change_state", req, timeout=10.0)

    def rearm_policy(self) -> None:
        """deactivate + activate: the policy node forgets its chunks and last command (a new
        episode starts elsewhere) and its first tick references the measured position."""
        self._change_policy_state(TRANSITION_DEACTIVATE)
        self._change_policy_state(TRANSITION_ACTIVATE)

    def set_beta(self, beta: float) -> None:
        self.set_dagger_params(beta=float(beta))

    def set_dagger_params(self, **values: float) -> None:
        """Set run-time parameters of the dagger node (beta, expert_timeout_periods,
        policy_timeout_periods); GraphError if refused."""
        req = SetParameters.Request(parameters=[Parameter(name=k, value=ParameterValue(
            type=ParameterType.PARAMETER_DOUBLE, double_value=float(v))) for k, v in values.items()])
        resp = self.client.call(SetParameters, "/dagger/set_parameters", req, timeout=10.0)
        bad = [r.reason for r in resp.results if not r.successful]
        if bad or not resp.results:
            raise GraphError(f"dagger refused {values}: {bad}")

    def swap(self, model_path, timeout: float = 60.0) -> Dict[str, Any]:
        """Hot swap into the running policy node (no restart; /policy/load_policy) between two
        episodes; waits until its ~/status reports the new model.

        The node is deactivated around the call: an active lock-step policy node applies a
        loaded model at its next tick, and between episodes no observation arrives, so the
        call would not return until the next episode started."""
        t0 = time.perf_counter()
        self._change_policy_state(TRANSITION_DEACTIVATE)
        try:
            new_id = self.client.load_policy(str(model_path), timeout=timeout)
        finally:
            self._change_policy_state(TRANSITION_ACTIVATE)
        self.client.wait_until(lambda: self.policy_status is not None and self.policy_status.model_id == new_id,
                               timeout, f"/policy/status to report model {new_id}")
        old, self.model_id = self.model_id, new_id
        return {"from": old, "to": new_id, "status_model_id": self.policy_status.model_id,
                "model_swaps": int(self.policy_status.model_swaps), "seconds": time.perf_counter() - t0}

    def restart_dagger(self, params: Mapping[str, Any], timeout: float = 60.0) -> None:
        """Restart the dagger node with other parameters (robot_gated: a new ensemble)."""
        self.dagger_params = {**self.dagger_params, **dict(params)}
        node = self.client.node
        subs = {t: node.count_subscribers(t) for t in self.observed}
        self.graph.procs["dagger"].stop()
        self.dagger_status = None
        self.graph.procs["dagger"] = NodeProcess(self.specs["dagger"], self.log_dir, self.dagger_params)
        self.client.wait_until(self._dagger_connected, timeout, "the restarted dagger node to connect")
        self.client.wait_until(lambda: node.count_subscribers("/dagger/policy_command") >= 1
                               and all(node.count_subscribers(t) >= n for t, n in subs.items()), timeout,
                               "the restarted dagger node's topics")
        self.client.spin(0.3)

    def wait_done(self, episode_id: int, on_spin: Optional[Callable[[], None]] = None):
        """Spin until the episode is done; returns its final TaskState. A lock-step loop that
        does not move for kick_after_s (a subscriber that missed the first pair: volatile
        topics, discovery still settling) gets the current pair re-published (~/step 0), at
        most 3 times; GraphError after that or after episode_timeout_s. `on_spin()` runs at
        every spin (e.g. a test's teleoperator)."""
        try:
            return self.client.wait_task_done(episode_id, timeout=self.episode_timeout_s,
                                              stall_timeout=self.kick_after_s, kick_after_s=self.kick_after_s,
                                              max_kicks=3, on_spin=on_spin)
        except GraphError as e:
            raise GraphError(f"{e} (dagger status {self.dagger_status})") from None

    def run_episode(self, seed: int, episode_id: int, record: bool = True, human=None,
                    notes: str = "") -> Dict[str, Any]:
        """One episode at `seed`: re-arm the policy, (start recording), reset, run until done,
        (stop recording). Returns its outcome and its frame-tag counts."""
        c = self.client
        self.rearm_policy()
        self._human, self._human_episode = None, None
        if self.variant == "human_gated":
            self._intervention.publish(Bool(data=False))
        bag = c.start_episode(self.task, seed, episode_id, source="dagger", notes=notes) if record else ""
        t0 = time.perf_counter()
        try:
            if human is not None:
                human.reset()
                self._human = human
            resp = c.reset(seed=seed, task=self.task)
            ep = int(resp.episode_id)
            self._human_episode = ep
            final = self.wait_done(ep)
        except Exception:
            if record:
                try:
                    c.stop_episode(task_success=False, outcome="aborted", discard=True)
                except Exception:  # noqa: BLE001 - the original error matters
                    pass
            raise
        finally:
            self._human = None
        seconds = time.perf_counter() - t0
        written = 0
        if record:
            # one FrameTag per acted step: stop only once the recorder holds them all (on a busy
            # machine the last tags can still be in flight when /task_state says done)
            try:
                c.wait_recorder(lambda st: ((st.get("episode") or {}).get("written", {})
                                            .get("/dagger/frame_tag", 0) >= int(final.step)),
                                10.0, "the episode's frame tags")
            except GraphError:
                pass   # stop anyway; the builder reports what is missing
            stop = c.stop_episode(task_success=bool(final.success), outcome=str(final.status), notes=notes)
            bag, written = stop.bag_path or bag, int(stop.messages_written)
        c.spin(0.05)
        tags = self.tags.pop(ep, {"frames": 0, "labelled": 0, "actors": {}, "reasons": {}, "steps": [],
                                  "anomalies": []})
        steps = tags.pop("steps")
        tags["missing_steps"] = len(set(range(int(final.step))) - set(steps))   # frames without a tag
        return {"seed": int(seed), "episode_id": int(episode_id), "bridge_episode": ep, "status": str(final.status),
                "success": bool(final.success), "steps": int(final.step), "bag": str(bag),
                "messages": written, "seconds": seconds, **tags}

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            self.graph.stop()

    def __enter__(self) -> "DaggerGraph":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
