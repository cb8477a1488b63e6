"""Blocking calls into the running ROS graph, for the CLI pipelines (collect, demo, DAgger).

`GraphClient` owns a private rclpy context, one node and a single-threaded executor; every
call spins that executor until its answer arrives or its timeout passes, and raises
`GraphError` with the service/topic name otherwise. Names are the defaults of
docs/design.md "Graph interfaces"::

    with GraphClient("collector") as g:
        g.wait_for_services(["/mujoco_bridge/reset", "/recorder/start_episode"], timeout=30)
        g.start_episode(task="curved_reach", seed=3, episode_id=3)
        ep = g.reset(seed=3).episode_id
        final = g.wait_task_done(ep, timeout=60)
        g.stop_episode(task_success=final.success, outcome=final.status)
"""
from __future__ import annotations

import json
import os
import time
from typing import Callable, Dict, Iterable, Optional, Sequence

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions
from std_msgs.msg import String

from bc_msgs.msg import TaskState
from bc_msgs.srv import LoadPolicy, QueryExpert, ResetEpisode, StartEpisode, StepSim, StopEpisode

from ..nodes import qos

RESET = "/mujoco_bridge/reset"
STEP = "/mujoco_bridge/step"
START_EPISODE = "/recorder/start_episode"
STOP_EPISODE = "/recorder/stop_episode"
RECORDER_STATUS = "/recorder/status"
QUERY_EXPERT = "/expert/query"
LOAD_POLICY = "/policy/load_policy"
TASK_STATE = "/task_state"


class GraphError(RuntimeError):
    """A service was not available, timed out or refused; a topic went silent."""


class GraphClient:
    """One rclpy node in its own context with blocking, time-limited helpers.

    check: optional callable run while waiting (e.g. `procs.Graph.check_alive`), so a crashed
    node process surfaces as its own error instead of a timeout.
    """

    def __init__(self, node_name: str = "bc_policy_client", check: Optional[Callable[[], None]] = None,
                 task_state_topic: str = TASK_STATE, recorder_status_topic: str = RECORDER_STATUS):
        self.context = rclpy.Context()
        rclpy.init(context=self.context, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node(node_name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.check = check
        self._clients: Dict[str, object] = {}
        self.task_states: Dict[int, TaskState] = {}    # latest TaskState per episode_id
        self.last_task_state: Optional[TaskState] = None
        self._task_state_time = time.monotonic()
        self.recorder: Optional[dict] = None
        self.node.create_subscription(TaskState, task_state_topic, self._on_task_state, qos.STATE)
        self.node.create_subscription(String, recorder_status_topic, self._on_recorder_status,
                                      qos.STATUS)

    # ------------------------------------------------------------------ plumbing
    def _on_task_state(self, msg: TaskState) -> None:
        self.task_states[int(msg.episode_id)] = msg
        self.last_task_state = msg
        self._task_state_time = time.monotonic()

    def _on_recorder_status(self, msg: String) -> None:
        try:
            self.recorder = json.loads(msg.data)
        except ValueError:
            pass

    def spin(self, seconds: float) -> None:
        """Process callbacks for `seconds`."""
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            self.executor.spin_once(timeout_sec=min(left, 0.05))

    def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Spin until predicate() is true; GraphError(what) after timeout s."""
        end = time.monotonic() + timeout
        while not predicate():
            if self.check is not None:
                self.check()
            if time.monotonic() > end:
                raise GraphError(f"timed out after {timeout:g} s waiting for {what}")
            self.executor.spin_once(timeout_sec=0.05)

    def _client(self, srv_type, name: str):
        c = self._clients.get(name)
        if c is None:
            c = self._clients[name] = self.node.create_client(srv_type, name)
        return c

    def wait_for_services(self, services: Iterable[str], timeout: float = 30.0) -> None:
        types = {RESET: ResetEpisode, STEP: StepSim, START_EPISODE: StartEpisode,
                 STOP_EPISODE: StopEpisode, QUERY_EXPERT: QueryExpert, LOAD_POLICY: LoadPolicy}
        for name in services:
            c = self._client(types[name], name)
            self.wait_until(c.service_is_ready, timeout, f"service {name}")
        self.check_single_graph(services)

    def check_single_graph(self, services: Iterable[str]) -> None:
        """GraphError if a node serving one of `services` (``/<node>/<srv>``) exists twice: another
        graph runs on this ROS_DOMAIN_ID (another `bc-policy` run, a launch), and its nodes would
        answer this run's calls and commands."""
        names = [n for n, ns in self.node.get_node_names_and_namespaces() if ns == "/"]
        twice = sorted({srv.strip("/").split("/")[0] for srv in services
                        if names.count(srv.strip("/").split("/")[0]) > 1})
        if twice:
            domain = os.environ.get("ROS_DOMAIN_ID", "0")
            raise GraphError(f"{len(twice)} node name(s) found twice on ROS_DOMAIN_ID={domain}: "
                             f"{', '.join('/' + n for n in twice)}. Another graph runs on this domain (another "
                             f"bc-policy run or a launch); stop it, or run this one on a free domain "
                             f"(ROS_DOMAIN_ID=<0-101> ./run ...)")

    def call(self, srv_type, name: str, request, timeout: float = 10.0, check_success: bool = True):
        """Call a service and return its response (GraphError on timeout / success=false)."""
        c = self._client(srv_type, name)
        self.wait_until(c.service_is_ready, timeout, f"service {name}")
        future = c.call_async(request)
        self.wait_until(future.done, timeout, f"the answer of {name}")
        resp = future.result()
        if resp is None:
            raise GraphError(f"{name}: call failed ({future.exception()})")
        if check_success and hasattr(resp, "success") and not resp.success:
            raise GraphError(f"{name} refused: {getattr(resp, 'message', '')}")
        return resp

    # ------------------------------------------------------------------ graph calls
    def reset(self, seed: int, task: str = "", variant: str = "", timeout: float = 10.0):
        """/mujoco_bridge/reset -> ResetEpisode.Response (episode_id, first TaskState)."""
        return self.call(ResetEpisode, RESET, ResetEpisode.Request(task=task, variant=variant,
                                                                   seed=int(seed)), timeout)

    def step(self, ticks: int = 0, timeout: float = 10.0):
        """/mujoco_bridge/step (lock-step): advance `ticks` periods; 0 re-publishes the current
        /task_state + /joint_states pair (for a controller that missed it)."""
        return self.call(StepSim, STEP, StepSim.Request(ticks=int(ticks)), timeout, check_success=False)

    def start_episode(self, task: str, seed: int, episode_id: int, source: str = "expert",
                      notes: str = "", timeout: float = 10.0) -> str:
        """/recorder/start_episode -> bag path."""
        req = StartEpisode.Request(task=task, seed=int(seed), episode_id=int(episode_id),
                                   source=source, notes=notes)
        return self.call(StartEpisode, START_EPISODE, req, timeout).bag_path

    def stop_episode(self, task_success: bool, outcome: str = "", notes: str = "",
                     discard: bool = False, timeout: float = 30.0):
        """/recorder/stop_episode -> StopEpisode.Response (bag_path, messages_written)."""
        req = StopEpisode.Request(task_success=bool(task_success), outcome=outcome, notes=notes,
                                  discard=bool(discard))
        return self.call(StopEpisode, STOP_EPISODE, req, timeout)

    def wait_task_done(self, episode_id: int, timeout: float = 120.0,
                       stall_timeout: Optional[float] = None, kick_after_s: Optional[float] = None,
                       max_kicks: int = 3, on_spin: Optional[Callable[[], None]] = None) -> TaskState:
        """Spin until /task_state of `episode_id` says done; returns that TaskState.

        kick_after_s: lock-step loops only — if the episode's step has not moved for that long
        (a subscriber missed a pair, e.g. discovery still settling), ask the bridge to
        re-publish the current pair (`step(0)`), at most `max_kicks` times.
        stall_timeout: fail if the step has not moved for that long (after any kicks).
        on_spin: called at every spin (e.g. a test's teleoperator).
        """
        start = last_change = time.monotonic()
        last_step, kicks = None, 0
        while True:
            ts = self.task_states.get(int(episode_id))
            if ts is not None and ts.done:
                return ts
            if self.check is not None:
                self.check()
            if on_spin is not None:
                on_spin()
            now = time.monotonic()
            step = None if ts is None else int(ts.step)
            if step != last_step:
                last_step, last_change = step, now
            last = "none" if ts is None else f"step {ts.step}, status {ts.status!r}"
            if kick_after_s is not None and now - last_change > kick_after_s and kicks < max_kicks:
                kicks += 1
                self.step(0)
                last_change = time.monotonic()
            elif stall_timeout is not None and now - last_change > stall_timeout:
                raise GraphError(f"episode {episode_id}: no progress for {stall_timeout:g} s "
                                 f"(last /task_state: {last}, {kicks} re-publish requests)")
            if now - start > timeout:
                raise GraphError(f"episode {episode_id} not done after {timeout:g} s "
                                 f"(last /task_state: {last})")
            self.executor.spin_once(timeout_sec=0.02)

    def query_expert(self, observations: np.ndarray, chunk_length: int = 1,
                     modes: Sequence[int] = (), timeout: float = 10.0) -> np.ndarray:
        """/expert/query: labels (count, chunk_length, action_dim) for observations (count, obs_dim)."""
        obs = np.atleast_2d(np.asarray(observations, dtype=float))
        req = QueryExpert.Request(count=obs.shape[0], observations=obs.ravel().tolist(),
                                  modes=[int(m) for m in modes], chunk_length=int(chunk_length))
        resp = self.call(QueryExpert, QUERY_EXPERT, req, timeout)
        return np.asarray(resp.actions, dtype=float).reshape(obs.shape[0], resp.chunk_length,
                                                             resp.action_dim)

    def load_policy(self, path: str, timeout: float = 30.0) -> str:
        """/policy/load_policy -> model_id (GraphError with the node's reason if refused)."""
        return self.call(LoadPolicy, LOAD_POLICY, LoadPolicy.Request(model_path=str(path)), timeout).model_id

    def wait_recorder(self, predicate: Callable[[dict], bool], timeout: float, what: str) -> dict:
        """Spin until the latest /recorder/status JSON satisfies predicate; returns it."""
        self.wait_until(lambda: self.recorder is not None and predicate(self.recorder), timeout,
                        f"recorder status: {what}")
        return self.recorder

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        try:
            self.executor.shutdown(timeout_sec=1.0)
            self.node.destroy_node()
        finally:
            rclpy.try_shutdown(context=self.context)

    def __enter__(self) -> "GraphClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
