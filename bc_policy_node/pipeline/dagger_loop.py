"""`bc-policy dagger`: DAgger rounds through the real ROS graph.

One graph runs for all rounds (real processes, lock-step)::

    mujoco_bridge (lockstep, no auto reset) --/joint_states,/task_state--> policy, dagger, recorder
    policy (lock-step on sim time) --/dagger/policy_command--> dagger --/<controller>/commands--> bridge
    dagger --/expert/query--> expert (drive:=false: labels only)
    dagger --/dagger/frame_tag--> recorder (one MCAP bag per episode, contract topics + frame tags)

Round i (1..R), in its folder ``<out>/round_<i>/``:

1. roll the current policy on N seeded episodes through the graph (the dagger node's gate
   decides who acts; classic: beta_i = `core.dagger.gates.beta_schedule(i)`, set on the running
   dagger node; human_gated: a `core.dagger.gates.SimulatedHuman` in this process watches
   /task_state and drives /dagger/intervention; robot_gated: an ensemble trained on the
   aggregate, the dagger node restarted with it and its calibrated threshold);
2. build the round's dataset from its bags (`core.data.dataset_builder`: FrameTag alignment, expert
   labels where `labelled`; classic with a chunked model: the expert's planned chunk from each
   labelled observation, `Episode.chunk_labels`, see `run_dagger_ros(chunk_labels=...)`);
3. aggregate with all earlier data, retrain from scratch, export ONNX (the in-process DAgger's
   `aggregate` / `retrain` / `export_policy`, unchanged);
4. hot-swap the new model into the RUNNING policy node (``/policy/load_policy``; its
   ~/status must then report the new model id);
5. evaluate: in-process `evaluate_policy` on many seeds, plus the round's ROS episodes'
   success (and optionally `ros_eval_episodes` policy-only episodes through the graph).

Round 0 is the initial policy (given, or BC trained on the initial dataset) and its
evaluation. Resumable: a finished round has ``record.json``; a partial round keeps the
episodes listed in ``episodes.json`` and continues with the next seed, and training resumes
from its checkpoint. At the end: a per-round table, ``summary.json`` and
``success_vs_round.png`` (success and cumulative expert labels vs round).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from ..core.dagger.gates import beta_schedule
from ..core.sim.disturbance import Pushes
from ..core.sim.env import load_contract
from ..core.data.episodes import Dataset, Episode
from ..core.types import ACTOR_NAMES
from .dagger_eval import cached_eval, disturbance_key, expert_references, progress_bar as _bar, say as _say
from .dagger_inprocess import (RECORD_FILE, VARIANTS, RoundRecord, aggregate, check_round_config, expert_demos,
                               export_policy, format_table, labels_of, load_round_data, retrain, round_configs,
                               save_round_data, train_round)

EPISODES_FILE = "episodes.json"
SUMMARY_FILE = "summary.json"
PLOT_FILE = "success_vs_round.png"
ROLLOUT_SEED0 = 200_000          # round i, episode j: seed ROLLOUT_SEED0 + 1000 i + j
ROS_EVAL_SEED0 = 300_000
TRANSITION_ACTIVATE, TRANSITION_DEACTIVATE = 3, 4   # lifecycle_msgs/msg/Transition ids


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
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from std_msgs.msg import Bool, String

        from bc_msgs.msg import FrameTag, PolicyStatus, TaskState

        from .. import graph
        from ..nodes import qos
        from ..procs import Graph
        from .graph_client import GraphClient

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
        self._Bool = Bool
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
        self._intervention.publish(self._Bool(data=active))

    # ------------------------------------------------------------------ control
    def wait_ready(self, timeout: float) -> None:
        from lifecycle_msgs.srv import ChangeState
        from rcl_interfaces.srv import SetParameters

        from ..graph import controller_command_topic
        from .graph_client import LOAD_POLICY, QUERY_EXPERT, RESET, START_EPISODE, STOP_EPISODE

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
        recorded = ("/joint_states", "/task_state", "/dagger/frame_tag", controller_command_topic())
        c.wait_recorder(lambda s: all(s["publishers"].get(t, 0) >= 1 for t in recorded), timeout,
                        "the recorder to match the bridge's and the dagger node's publishers")
        self.model_id = self.policy_status.model_id
        c.spin(0.3)

    def _dagger_connected(self) -> bool:
        s = self.dagger_status
        return bool(s and s.get("expert_ready") and s.get("links") and all(s["links"].values()))

    def _change_policy_state(self, transition: int) -> None:
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

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
        from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
        from rcl_interfaces.srv import SetParameters

        from .graph_client import GraphError

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
        from ..procs import NodeProcess

        self.dagger_params = {**self.dagger_params, **dict(params)}
        node = self.client.node
        subs = {t: node.count_subscribers(t) for t in ("/joint_states", "/task_state")}
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
        from .graph_client import GraphError

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
            self._intervention.publish(self._Bool(data=False))
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
            from .graph_client import GraphError
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


# ============================================================================ helpers
def _json(path: Path, data) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=_default))
    tmp.replace(path)


def _default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return float(o)


def _rate(s: Mapping[str, Any]) -> str:
    return f"{100 * s['rate']:.0f}% [{100 * s['ci_low']:.0f}, {100 * s['ci_high']:.0f}] (n={s['n']})"


def _add(dst: Dict[str, int], src: Mapping[str, int]) -> None:
    for k, v in src.items():
        dst[k] = dst.get(k, 0) + int(v)


def summarize_episodes(episodes: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """ROS rollout statistics of one round (success of the gated episodes, who acted, why)."""
    from ..core.eval.metrics import success_summary

    actors: Dict[str, int] = {}
    reasons: Dict[str, int] = {}
    for e in episodes:
        _add(actors, e.get("actors", {}))
        _add(reasons, e.get("reasons", {}))
    frames = sum(int(e.get("frames", 0)) for e in episodes)
    return {"episodes": len(episodes), "ros_success": success_summary([bool(e["success"]) for e in episodes]),
            "frames_tagged": frames, "labelled_tagged": sum(int(e.get("labelled", 0)) for e in episodes),
            "actors": actors, "gate_reasons": reasons,
            "expert_share": (actors.get("expert", 0) + actors.get("intervention", 0)) / max(frames, 1),
            "missing_steps": sum(int(e.get("missing_steps", 0)) for e in episodes),
            "statuses": {s: sum(e["status"] == s for e in episodes) for s in sorted({e["status"] for e in episodes})},
            "seconds": sum(float(e.get("seconds", 0.0)) for e in episodes)}


def plot_rounds(records: Sequence[RoundRecord], path: Path, title: str = "") -> Path:
    """Success (95% CI, in-process evaluation) and cumulative expert labels vs round."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = [rec.round for rec in records]
    rate = np.array([rec.success["rate"] for rec in records]) * 100
    lo = np.array([rec.success["ci_low"] for rec in records]) * 100
    hi = np.array([rec.success["ci_high"] for rec in records]) * 100
    labels = [rec.labels_total for rec in records]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.errorbar(r, rate, yerr=[rate - lo, hi - rate], marker="o", capsize=3, color="C0",
                label="success (in-process eval, 95% CI)")
    ros = [(rec.round, 100 * rec.collect["ros_success"]["rate"]) for rec in records
           if rec.collect.get("ros_success")]
    if ros:
        ax.plot([x for x, _ in ros], [y for _, y in ros], "s--", color="C2", alpha=0.8,
                label="success of the round's ROS rollouts (gated)")
    ax.set_xlabel("DAgger round")
    ax.set_ylabel("success (%)")
    ax.set_ylim(-2, 102)
    ax.set_xticks(r)
    ax2 = ax.twinx()
    ax2.bar(r, labels, alpha=0.25, color="C1", width=0.5, label="expert labels (cumulative)")
    ax2.set_ylabel("expert labels (cumulative)")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="lower right", fontsize=8)
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.set_title(title or "DAgger through the ROS graph")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _round_row(rec: RoundRecord) -> Dict[str, Any]:
    ros = rec.collect.get("ros_success") or {}
    return {"round": rec.round, "beta": rec.beta, "success": rec.success, "labels_new": rec.labels_new,
            "labels_cumulative": rec.labels_total, "frames_cumulative": rec.frames_total,
            "ros_success": ros, "ros_eval_success": rec.extra.get("ros_eval_success"),
            "model_id": rec.extra.get("model_id"), "policy": rec.policy,
            "expert_share": rec.collect.get("expert_share"), "gate_reasons": rec.collect.get("gate_reasons"),
            "deviation_cm": 100 * rec.deviation["mean"] if rec.deviation else None,
            "timing": rec.timing}


def format_ros_table(records: Sequence[RoundRecord]) -> str:
    """Per-round markdown table: the ROS rollouts (gated), the policy-only ROS episodes (if
    any), labels and the in-process evaluation."""
    policy_only = any(rec.extra.get("ros_eval_success") for rec in records)
    head = ("| round | beta | ROS rollouts success | expert share | "
            + ("ROS policy-only success | " if policy_only else "")
            + "new labels | labels (cum.) | in-process success (95% CI) | model |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for rec in records:
        ros = rec.collect.get("ros_success")
        share = rec.collect.get("expert_share")
        ev = rec.extra.get("ros_eval_success")
        cells = [str(rec.round), "" if rec.beta is None else f"{rec.beta:.3g}",
                 "" if not ros else f"{ros['successes']}/{ros['n']}",
                 "" if share is None else f"{100 * share:.0f}%"]
        if policy_only:
            cells.append("" if not ev else f"{ev['successes']}/{ev['n']}")
        cells += [str(rec.labels_new), str(rec.labels_total), _rate(rec.success), rec.extra.get("model_id", "")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ============================================================================ the loop
def run_dagger_ros(robot: str = "planar3", task: str = "curved_reach", dataset=None, model=None,
                   variant: str = "classic", rounds: int = 3, episodes_per_round: int = 10,
                   out="runs/dagger", log_dir=None, eval_seeds: Sequence[int] = tuple(range(10_000, 10_100)),
                   progress: bool = True, beta_kind: str = "exponential", beta0: float = 1.0,
                   beta_decay: float = 0.5, initial_demos: int = 20, rollout_seed0: int = ROLLOUT_SEED0,
                   model_cfg=None, train_cfg=None, execution_mode: str = "temporal_ensembling",
                   ros_eval_episodes: int = 0, ensemble_size: int = 3, threshold: Optional[float] = None,
                   threshold_quantile: float = 0.99, query_budget: int = 150,
                   human: Optional[Mapping[str, Any]] = None, dagger_params: Optional[Mapping[str, Any]] = None,
                   episode_timeout_s: float = 120.0,
                   on_round: Optional[Callable[[RoundRecord, "DaggerGraph"], None]] = None,
                   chunk_labels: Optional[bool] = None, disturbance=None) -> Dict[str, Any]:
    """DAgger through the ROS graph (module docstring). Returns a JSON-ready summary:
    ``rounds`` (round, beta, success, labels_new, labels_cumulative, ros_success, model_id, ...),
    ``table`` (markdown), ``plot`` (PNG path), ``out``.

    dataset: initial (expert) dataset folder; None = `initial_demos` in-process expert demos
    (seeds 0..initial_demos-1). model: initial ONNX policy; None = BC trained on that dataset.
    model_cfg / train_cfg: as `dagger_inprocess.retrain` (dicts over its defaults).
    dagger_params: extra dagger-node parameters (e.g. expert_timeout_periods).
    on_round(record, graph): called after each finished round while the graph runs (tests).
    chunk_labels: label each frame with the expert's PLANNED K-step chunk from its observation
    (K = the retrained model's chunk_length; the dagger node's ``label_chunk_length``), carried
    by FrameTag.expert_action into `Episode.chunk_labels` by the dataset builder, as in-process
    `run_dagger(chunk_labels=...)`. None = on with K > 1, every variant (measured in-process,
    results/report.md: without them classic DAgger's chunk targets follow the learner's own
    drifting path, and a gated variant's short expert segments leave most of each chunk
    unlabelled). An explicit ``dagger_params["label_chunk_length"]`` wins.
    disturbance: `core.sim.disturbance.Pushes` (or dict): the bridge pushes the arm during the
    rollouts (its push_* parameters) and the in-process evaluation is pushed alike; the
    round-0 demonstrations stay calm.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} not in {VARIANTS}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log_dir = Path(log_dir) if log_dir is not None else out / "logs"
    contract = load_contract(robot, task)
    k_label = int(round_configs(model_cfg, train_cfg)[0].chunk_length)
    if chunk_labels is None:
        chunk_labels = k_label > 1
    dagger_params = dict(dagger_params or {})
    dagger_params.setdefault("label_chunk_length", k_label if chunk_labels and k_label > 1 else 0)
    # resuming is for the same loop only: rounds made calm and pushed (or by another variant) never mix
    check_round_config(out, {"robot": robot, "task": task, "variant": variant,
                             "disturbance": disturbance_key(disturbance)})
    eval_seeds = [int(s) for s in eval_seeds]
    refs = (expert_references(robot, task, eval_seeds, out / "expert_eval.npz", contract, disturbance)
            if eval_seeds else {})

    # ------------------------------------------------------------------ round 0
    r0 = out / "round_00"
    r0.mkdir(parents=True, exist_ok=True)
    timing: Dict[str, float] = {}
    t0 = time.perf_counter()
    if dataset is not None:
        ds0 = Dataset.load(dataset)
        if ds0.contract.fingerprint() != contract.fingerprint():
            raise ValueError(f"dataset {dataset} was built on contract {ds0.contract.name!r}, not the "
                             f"shipped {contract.name!r}: " + "; ".join(ds0.contract.mismatches(contract)))
        demos: List[Episode] = ds0.episodes
    elif (r0 / "data" / "meta.json").is_file():
        demos = load_round_data(r0 / "data")
    else:
        _say(progress, f"[dagger] no initial dataset: {initial_demos} in-process expert demonstrations")
        demos = expert_demos(robot, task, range(initial_demos), contract)
        save_round_data(demos, contract, r0 / "data")
    timing["data"] = time.perf_counter() - t0
    if model is not None:
        policy = Path(model)
    else:
        t0 = time.perf_counter()
        run = retrain(aggregate([demos], contract), model_cfg, train_cfg, r0 / "run", progress=progress)
        policy = export_policy(run.run_dir, r0 / "policy.onnx")
        timing["train"] = time.perf_counter() - t0
    records: List[RoundRecord] = []
    rec_file = r0 / RECORD_FILE
    if rec_file.is_file() and json.loads(rec_file.read_text()).get("policy") == str(policy):
        rec0 = RoundRecord(**json.loads(rec_file.read_text()))
    else:
        t0 = time.perf_counter()
        ev = cached_eval(policy, robot, task, eval_seeds, refs, execution_mode, r0, progress, "eval round 0",
                         disturbance)[0]
        timing["eval"] = time.perf_counter() - t0
        n = labels_of(demos)
        frames = sum(len(e) for e in demos)
        rec0 = RoundRecord(0, variant, None, len(demos), frames, n, frames, n, ev["success"], ev["deviation"],
                           ev["final_distance"], ev["statuses"], {}, timing, str(policy),
                           ev.get("deviation_mean_by_t", []), {"model_id": _model_id(policy)})
        _json(rec_file, asdict(rec0))
    records.append(rec0)
    _say(progress, f"[dagger {task}/{variant}] round 0 (initial policy, {rec0.labels_total} labels): "
                   f"in-process success {_rate(rec0.success)}")

    parts: List[List[Episode]] = [demos]
    cur_dir = r0
    dg: Optional[DaggerGraph] = None
    try:
        for i in range(1, rounds + 1):
            d = out / f"round_{i:02d}"
            d.mkdir(parents=True, exist_ok=True)
            rec_file = d / RECORD_FILE
            if rec_file.is_file():
                rec = RoundRecord(**json.loads(rec_file.read_text()))
                parts.append(load_round_data(d / "data"))
                records.append(rec)
                policy, cur_dir = Path(rec.policy), d
                _say(progress, f"[dagger {task}/{variant}] round {i}: done earlier ({_rate(rec.success)}, "
                               f"{rec.labels_total} labels)")
                continue
            timing = {}
            beta = beta_schedule(i, beta_kind, beta0, beta_decay) if variant == "classic" else None
            seeds = [rollout_seed0 + 1000 * i + j for j in range(episodes_per_round)]
            extra: Dict[str, Any] = {}
            data_dir = d / "data"
            if not (data_dir / "meta.json").is_file():
                # ---- 1. rollouts through the graph
                if dg is None:
                    pushes = Pushes.from_spec(disturbance)
                    _say(progress, f"[dagger] starting the graph (logs in {log_dir})" + (
                        "" if pushes is None else f"; the bridge pushes the arm {pushes.magnitude:g} rad about every "
                        f"{pushes.interval:g} ticks, at most {pushes.count} per episode (evaluation pushed alike)"))
                    t0 = time.perf_counter()
                    dg = DaggerGraph(robot, task, policy, variant, log_dir, out / "bags",
                                     beta=beta if beta is not None else 0.0, dagger_params=dagger_params,
                                     execution_mode=execution_mode, episode_timeout_s=episode_timeout_s,
                                     disturbance=disturbance)
                    timing["graph_start"] = time.perf_counter() - t0
                elif dg.model_id != _model_id(policy):
                    extra["swap_in"] = dg.swap(policy)
                if beta is not None:
                    dg.set_beta(beta)
                human_refs = None
                if variant == "robot_gated":
                    extra.update(_ensemble_round(dg, cur_dir, aggregate(parts, contract), policy, ensemble_size,
                                                 model_cfg, train_cfg, threshold, threshold_quantile,
                                                 query_budget, progress))
                elif variant == "human_gated":
                    human_refs = expert_references(robot, task, seeds, d / "expert_paths.npz", contract, disturbance)
                done = _load_episodes(d)
                todo = [(j, s) for j, s in enumerate(seeds) if s not in {e["seed"] for e in done}]
                bar = _bar(progress, f"round {i} ROS rollouts")
                it = bar(todo) if bar else todo
                t0 = time.perf_counter()
                for j, s in it:
                    hum = None
                    if human_refs is not None:
                        from ..core.dagger.gates import SimulatedHuman
                        hum = SimulatedHuman(human_refs[s].ee, **dict(human or {}))
                    e = dg.run_episode(s, episode_id=1000 * i + j, record=True, human=hum,
                                       notes=f"dagger round {i} {variant}"
                                             + ("" if beta is None else f" beta={beta:.4g}"))
                    done.append(e)
                    _json(d / EPISODES_FILE, done)
                    if bar is not None and hasattr(it, "set_postfix"):
                        it.set_postfix(success=f"{sum(x['success'] for x in done)}/{len(done)}",
                                       labels=sum(x["labelled"] for x in done))
                timing["rollout"] = time.perf_counter() - t0
                # ---- 2. dataset from the round's bags
                t0 = time.perf_counter()
                new = _build_round_dataset(done, contract, data_dir, i, variant, beta)
                timing["dataset"] = time.perf_counter() - t0
            else:
                done = _load_episodes(d)
                new = load_round_data(data_dir)
            stats = summarize_episodes(done)
            stats["build"] = json.loads((data_dir / "build_summary.json").read_text()) \
                if (data_dir / "build_summary.json").is_file() else {}
            parts.append(new)
            ds = aggregate(parts, contract)
            labels_new = labels_of(new)
            _say(progress, f"[dagger {task}/{variant}] round {i}: {len(new)} ROS rollouts"
                           f"{'' if beta is None else f' (beta {beta:.3g})'}, success "
                           f"{stats['ros_success']['successes']}/{stats['ros_success']['n']}, {labels_new} new labels "
                           f"(expert acted {100 * stats['expert_share']:.0f}%, {stats['gate_reasons']}); "
                           f"aggregate {ds.num_frames} frames -> training")
            # ---- 3. retrain on the aggregate, export
            policy = train_round(ds, model_cfg, train_cfg, d, progress, timing)
            extra["model_id"] = _model_id(policy)
            # ---- 4. hot swap into the running policy node
            if dg is not None:
                extra["swap"] = dg.swap(policy)
                timing["swap"] = extra["swap"]["seconds"]
                _say(progress, f"[dagger] hot swap {extra['swap']['from']} -> {extra['swap']['to']} "
                               f"(policy status reports {extra['swap']['status_model_id']})")
            # ---- 5. evaluate
            t0 = time.perf_counter()
            ev = cached_eval(policy, robot, task, eval_seeds, refs, execution_mode, d, progress, f"eval round {i}",
                             disturbance)[0]
            timing["eval"] = time.perf_counter() - t0
            if ros_eval_episodes and dg is not None:
                t0 = time.perf_counter()
                extra["ros_eval"] = _ros_eval(dg, variant, ros_eval_episodes, i, progress)
                extra["ros_eval_success"] = extra["ros_eval"]["ros_success"]
                timing["ros_eval"] = time.perf_counter() - t0
            rec = RoundRecord(i, variant, beta, len(new), sum(len(e) for e in new), labels_new, ds.num_frames,
                              labels_of(ds.episodes), ev["success"], ev["deviation"], ev["final_distance"],
                              ev["statuses"], stats, timing, str(policy), ev.get("deviation_mean_by_t", []), extra)
            _json(rec_file, asdict(rec))
            records.append(rec)
            cur_dir = d
            _say(progress, f"[dagger {task}/{variant}] round {i}: in-process success {_rate(rec.success)}, "
                           f"labels {rec.labels_total} (rollouts {timing.get('rollout', 0):.0f} s, "
                           f"train {timing['train']:.0f} s, eval {timing['eval']:.0f} s)")
            if on_round is not None and dg is not None:
                on_round(rec, dg)
    finally:
        if dg is not None:
            dg.close()

    table = format_ros_table(records)
    plot = plot_rounds(records, out / PLOT_FILE, f"DAgger ({variant}) through ROS: {robot}/{task}")
    summary = {"robot": robot, "task": task, "variant": variant, "out": str(out), "plot": str(plot),
               "label_chunk_length": int(dagger_params["label_chunk_length"]),
               "disturbance": disturbance_key(disturbance),
               "rounds": [_round_row(r) for r in records], "table": table,
               "table_inprocess_format": format_table(records)}
    _json(out / SUMMARY_FILE, summary)
    _say(progress, "\n" + table + f"\n\nplot: {plot}")
    return summary


def _model_id(path) -> str:
    from ..core.control.runtime import OnnxPolicy
    return OnnxPolicy(path).model_id


def _load_episodes(d: Path) -> List[Dict[str, Any]]:
    f = d / EPISODES_FILE
    return json.loads(f.read_text()) if f.is_file() else []


def _build_round_dataset(done: Sequence[Mapping[str, Any]], contract, data_dir: Path, round_index: int,
                         variant: str, beta: Optional[float]) -> List[Episode]:
    """The round's bags -> its dataset (FrameTag alignment), meta like the in-process rounds'."""
    from ..core.data.dataset_builder import build_dataset

    bags = [e["bag"] for e in done if e.get("bag")]
    ds, report = build_dataset(bags, contract, out_dir=None)
    by_bag = {str(Path(e["bag"])): e for e in done}
    for ep in ds.episodes:
        src = by_bag.get(str(Path(ep.meta.get("bag", ""))), {})
        ep.meta.update(round=round_index, variant=variant, source=f"dagger_{variant}",
                       seed=src.get("seed", ep.meta.get("seed")), labels=int(ep.labelled.sum()),
                       status=src.get("status"), success=src.get("success"),
                       actors=src.get("actors", {}), gate_reasons=src.get("reasons", {}))
        if beta is not None:
            ep.meta["beta"] = float(beta)
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "build_report.json").write_text(json.dumps(report, indent=1, default=str))
    summary = {"bags": report["bags"], "included": report["included"], "excluded": report["excluded"],
               "frames": report["frames"],
               "alignments": sorted({e.get("alignment", "") for e in report["episodes"] if e.get("alignment")}),
               "excluded_reasons": [e.get("reasons") for e in report["episodes"] if e.get("status") == "excluded"]}
    _json(data_dir / "build_summary.json", summary)
    if not ds.episodes:
        raise RuntimeError(f"round {round_index}: no usable episode in {len(bags)} bags "
                           f"({summary['excluded_reasons']}); see {data_dir / 'build_report.json'}")
    save_round_data(ds.episodes, contract, data_dir)    # meta.json last: the round's data is complete
    return ds.episodes


def _ensemble_round(dg: DaggerGraph, cur_dir: Path, prev: Dataset, policy: Path, size: int, model_cfg, train_cfg,
                    threshold: Optional[float], quantile: float, query_budget: int, progress: bool) -> Dict[str, Any]:
    """robot_gated: train/calibrate the ensemble on the aggregate (in-process DAgger's helper)
    and restart the dagger node with it."""
    from .dagger_inprocess import _ensemble_for

    members, cal, _scale = _ensemble_for(cur_dir, prev, policy, size, model_cfg, train_cfg, quantile, progress)
    thr = float(threshold if threshold is not None else cal["threshold"])
    dg.restart_dagger({"variant": "robot_gated", "ensemble_models": [str(m) for m in members],
                       "uncertainty_source": "ensemble", "uncertainty_threshold": thr,
                       "query_budget": int(query_budget)})
    return {"threshold": thr, "calibration": cal, "ensemble": [str(m) for m in members]}


def _ros_eval(dg: DaggerGraph, variant: str, n: int, round_index: int, progress: bool) -> Dict[str, Any]:
    """n policy-only episodes through the graph after the swap (beta 0 / no intervention),
    not recorded."""
    if variant != "classic":
        return {"skipped": "policy-only ROS evaluation is run for the classic variant (beta 0)"}
    dg.set_beta(0.0)
    seeds = [ROS_EVAL_SEED0 + 1000 * round_index + j for j in range(n)]
    bar = _bar(progress, f"round {round_index} ROS eval (policy only)")
    eps = [dg.run_episode(s, episode_id=900_000 + 1000 * round_index + j, record=False)
           for j, s in enumerate(bar(seeds) if bar else seeds)]
    return summarize_episodes(eps)


# ============================================================================ CLI
def _terminate(signum, frame):
    raise SystemExit(128 + signum)


def main(args) -> int:
    """`bc-policy dagger` (arguments in cli.py). SIGTERM ends it like Ctrl-C: the graph's node
    processes are stopped and the round folders stay resumable."""
    import signal
    signal.signal(signal.SIGTERM, _terminate)
    train_cfg = {}
    if getattr(args, "train_steps", None):
        train_cfg["max_steps"] = int(args.train_steps)
    eval_n = int(getattr(args, "eval_episodes", 100))
    eval0 = int(getattr(args, "eval_seed", 10_000))
    summary = run_dagger_ros(
        robot=args.robot, task=args.task, dataset=args.dataset, model=args.model, variant=args.variant,
        rounds=args.rounds, episodes_per_round=args.episodes_per_round, out=args.out,
        log_dir=getattr(args, "log_dir", None), eval_seeds=range(eval0, eval0 + eval_n),
        beta_kind=getattr(args, "beta_schedule", "exponential"), beta0=getattr(args, "beta0", 1.0),
        beta_decay=getattr(args, "beta_decay", 0.5), initial_demos=getattr(args, "demos", 20),
        rollout_seed0=getattr(args, "seed", ROLLOUT_SEED0), train_cfg=train_cfg or None,
        ros_eval_episodes=getattr(args, "ros_eval_episodes", 0),
        dagger_params={"expert_timeout_periods": float(args.expert_timeout_periods)}
        if getattr(args, "expert_timeout_periods", None) else None,
        disturbance=Pushes.from_cli(args))
    return 0 if summary["rounds"] else 1


if __name__ == "__main__":  # pragma: no cover
    import sys
    from ..cli import main as cli_main
    sys.exit(cli_main(["dagger"] + sys.argv[1:]))
