"""The policy node through the real graph = the in-process rollout, tick for tick, across episodes.

Real processes over DDS: `mujoco_bridge` in lock-step + the policy node (lock-step,
use_sim_time; `pipeline.closed_loop.policy_graph`, i.e. what `run_policy_episodes` starts) run
an ONNX policy for consecutive seeded episodes driven by GraphClient.reset / wait_task_done.
The reference is `core.eval.rollout.rollout` with the node's own engine (`make_controller`) (reset per episode) on the same
ONNX file and seeds in this process. Every commanded action of every episode, every joint
position and every outcome must be identical: the node re-plans at each new episode
(reset_on_change on /task_state episode_id) exactly like the in-process runner's reset.

Between episodes the test waits until the bridge has ignored the node's answer to the final
observation pair: a reset issued before that answer arrives makes it the next episode's first
command (measured: outcomes change), a race any lock-step client must avoid.

The policy is built here with onnx.helper (no torch, no training): a Jacobian-transpose reach
towards the goal (from the observed joint positions, goal and end effector) plus a small fixed
random tanh MLP term; a smooth function of the observation whose chunks move the arm and whose
episodes end in success at different ticks or time out.
"""
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from lockstep_episodes import run_episodes  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402

from bc_msgs.msg import PolicyStatus  # noqa: E402
from bc_policy_node.core.sim.env import SimEnv, load_contract  # noqa: E402
from bc_policy_node.core.control.controller import RESTART_JUMP  # noqa: E402
from bc_policy_node.core.eval.rollout import make_controller, policy_act_fn, rollout  # noqa: E402
from bc_policy_node.core.control.runtime import OnnxPolicy, embed_metadata  # noqa: E402
from bc_policy_node.nodes import qos  # noqa: E402
from bc_policy_node.pipeline.closed_loop import policy_graph  # noqa: E402
from bc_policy_node.pipeline.graph_client import RESET, GraphClient  # noqa: E402
from bc_policy_node.procs import Graph  # noqa: E402

pytestmark = pytest.mark.ros
ROBOT, TASK = "planar3", "curved_reach"
CONTRACT = load_contract(ROBOT, TASK)
SEEDS = (0, 1, 2)
LINKS = (0.30, 0.25, 0.20)      # m; planar3 link lengths (models/planar3.xml), base at the origin
COMMANDS = "/forward_position_controller/commands"
DEEP = QoSProfile(depth=5000, reliability=ReliabilityPolicy.RELIABLE)
WAIT = 120.0                    # s; bounds waits only (the machine may be heavily loaded)


def reach_policy(path, contract=CONTRACT, gain=20.0, amp=0.8, wiggle=0.01, hidden=16, seed=0):
    """chunk[k] = q + (k + 1) / K * (amp * tanh(gain * J(q)^T (goal - ee)) + wiggle * tanh(MLP(obs)))."""
    K, A, D = contract.chunk_length, contract.act_dim, contract.obs_dim
    sl = contract.slices()
    q_sl, g_sl, e_sl = sl["joint_pos"], sl["goal"], sl["ee_position"]
    Q = np.zeros((D, A))
    Q[np.arange(q_sl.start, q_sl.stop), np.arange(A)] = 1
    Ex, Ey = np.zeros((D, 1)), np.zeros((D, 1))
    Ex[g_sl.start, 0], Ex[e_sl.start, 0] = 1, -1
    Ey[g_sl.start + 1, 0], Ey[e_sl.start + 1, 0] = 1, -1
    T = np.zeros((A, K * A))
    for k in range(K):
        T[np.arange(A), k * A + np.arange(A)] = 1
    rng = np.random.default_rng(seed)
    W1, b1 = rng.normal(0, 1.0, (D, hidden)), rng.normal(0, 0.3, hidden)
    W2 = rng.normal(0, 1.0, (hidden, A)) / np.sqrt(hidden)

    def f(a, name):
        return numpy_helper.from_array(np.asarray(a, np.float32), name)
    inits = [f(Q, "Q"), f(Ex, "Ex"), f(Ey, "Ey"), f(np.triu(np.ones((A, A))), "Lc"),  # phi_j = sum_{i<=j} q_i
             f(np.tril(np.ones((A, A))), "U"),                                            # dq_i = sum_{j>=i} t_j
             f(T, "T"), f(np.repeat(np.arange(1, K + 1) / K, A), "S"), f(LINKS, "L"), f(gain, "g"),
             f(amp, "amp"), f(W1, "W1"), f(b1, "b1"), f(W2, "W2"), f(wiggle, "wig"),
             numpy_helper.from_array(np.array([-1, K, A], np.int64), "shape")]
    n = helper.make_node
    nodes = [n("MatMul", ["obs", "Q"], ["q"]), n("MatMul", ["q", "Lc"], ["phi"]),
             n("Sin", ["phi"], ["s"]), n("Cos", ["phi"], ["c"]),
             n("MatMul", ["obs", "Ex"], ["ex"]), n("MatMul", ["obs", "Ey"], ["ey"]),
             n("Mul", ["c", "ey"], ["cy"]), n("Mul", ["s", "ex"], ["sx"]), n("Sub", ["cy", "sx"], ["t0"]),
             n("Mul", ["t0", "L"], ["t"]), n("MatMul", ["t", "U"], ["jte"]),          # J^T (goal - ee)
             n("Mul", ["jte", "g"], ["gj"]), n("Tanh", ["gj"], ["tj"]), n("Mul", ["tj", "amp"], ["d0"]),
             n("MatMul", ["obs", "W1"], ["m1"]), n("Add", ["m1", "b1"], ["a1"]), n("Tanh", ["a1"], ["h"]),
             n("MatMul", ["h", "W2"], ["m2"]), n("Tanh", ["m2"], ["h2"]), n("Mul", ["h2", "wig"], ["w"]),
             n("Add", ["d0", "w"], ["d"]), n("MatMul", ["d", "T"], ["dt"]), n("Mul", ["dt", "S"], ["ds"]),
             n("MatMul", ["q", "T"], ["qt"]), n("Add", ["qt", "ds"], ["flat"]),
             n("Reshape", ["flat", "shape"], ["actions"])]
    graph = helper.make_graph(nodes, "reach", [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["B", D])],
                              [helper.make_tensor_value_info("actions", TensorProto.FLOAT, ["B", K, A])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    embed_metadata(model, contract, {"kind": "chunk_mlp", "chunk_length": K})
    onnx.save(model, str(path))
    return Path(path)


def in_process(model, seeds):
    env, ctl = SimEnv(ROBOT, TASK), make_controller(OnnxPolicy(model), CONTRACT)
    out = []
    for s in seeds:
        ctl.reset(seed=s)
        out.append(rollout(env, CONTRACT, policy_act_fn(ctl, CONTRACT.dt), s))
    assert ctl.restarts[RESTART_JUMP] == 0
    return out


def stamp_ns(stamp):
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def test_policy_node_in_lockstep_commands_exactly_the_in_process_rollout(tmp_path):
    model = reach_policy(tmp_path / "reach.onnx")
    refs = in_process(model, SEEDS)
    for r in refs:
        assert np.abs(r.q[-1] - r.q[0]).max() > 0.3, "the test policy must move the arm"
    assert np.abs(refs[1].q[0] - refs[0].q[-1]).max() > 0.5, \
        "consecutive episodes must start far from where the previous one ended (or the test proves little)"

    specs = policy_graph(ROBOT, TASK, model, lockstep=True)
    # No start-up episode: the bridge would run it with the policy while we wait, and a command
    # answering its last pair could land in our first episode.
    extra = {"mujoco_bridge": {"auto_reset": False}, "policy": {"status_rate_hz": 5.0}}
    cmds, js, status, diag, bridge = [], {}, {}, {}, {}

    def on_diag(msg):
        for s in msg.status:
            if s.name.startswith("policy:"):
                diag.update({kv.key: kv.value for kv in s.values})
            elif s.name.startswith("mujoco_bridge:"):
                bridge.update({kv.key: kv.value for kv in s.values})

    with Graph(specs, tmp_path / "logs", extra_params=extra) as g, \
            GraphClient("parity", check=g.check_alive) as client:
        node = client.node
        node.create_subscription(Float64MultiArray, COMMANDS, lambda m: cmds.append(np.array(m.data)), DEEP)
        node.create_subscription(JointState, "/joint_states",
                                 lambda m: js.setdefault(stamp_ns(m.header.stamp), np.array(m.position)), DEEP)
        node.create_subscription(PolicyStatus, "/policy/status", lambda m: status.__setitem__("last", m), qos.STATUS)
        node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
        client.wait_for_services([RESET], timeout=WAIT)
        client.wait_until(lambda: "last" in status and status["last"].lifecycle_state == "active", WAIT,
                          "the policy node to become active")
        client.wait_until(lambda: node.count_subscribers("/joint_states") >= 2
                          and node.count_subscribers("/task_state") >= 2
                          and node.count_publishers(COMMANDS) >= 1 and node.count_subscribers(COMMANDS) >= 2,
                          WAIT, "the bridge, the policy node and this client to connect")
        client.spin(0.5)
        # the node also answers each episode's final pair; run_episodes waits until the bridge ignored it
        episodes = [(f, stamp_ns(r.state.header.stamp), n0)
                    for f, r, n0 in run_episodes(client, cmds, bridge, SEEDS, TASK, WAIT)]
        client.spin(0.5)
        client.wait_until(lambda: diag.get("new_plan_episode") == str(len(SEEDS) - 1), WAIT,
                          f"/diagnostics to count {len(SEEDS) - 1} new plans (last: {diag})")
        assert len(cmds) == sum(int(f.step) + 1 for f, _, _ in episodes), "one command per observation pair"
        assert bridge["ignored_not_running"] == str(len(SEEDS)) and bridge["accepted"] == str(len(cmds) - len(SEEDS))

    stamps = sorted(js)
    worst = 0.0
    for i, ((final, first, n0), ref) in enumerate(zip(episodes, refs)):
        assert (final.status, int(final.step), bool(final.success)) == (ref.status, ref.steps, ref.success), \
            f"episode {i} (seed {SEEDS[i]}): node {final.status}@{final.step} vs in-process {ref.status}@{ref.steps}"
        node_cmds = np.array(cmds[n0:n0 + ref.steps])
        diff = np.abs(node_cmds - ref.actions).max(axis=1)
        worst = max(worst, float(diff.max()))
        assert diff.max() < 1e-9, (f"episode {i} (seed {SEEDS[i]}): commands differ from tick "
                                   f"{int(np.argmax(diff > 1e-9))} on, max {diff.max():.3g} rad")
        end = episodes[i + 1][1] if i + 1 < len(episodes) else None
        q = np.array([js[s] for s in stamps if s >= first and (end is None or s < end)])
        np.testing.assert_array_equal(q, ref.q, err_msg=f"episode {i}: joint trajectory")
    assert worst < 1e-9
    assert diag.get("new_plan_jump") == "0"
