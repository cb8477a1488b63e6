"""The expert node serving a Meta-World task (the installed executable, real DDS): ~/query
labels for contract observations equal the in-process expert's (Meta-World's scripted policy
on the task's generated contract), at states the expert never visited too; a K-step plan for
an observation that is not its replayed copy's state is refused with the reason (the plans
themselves: test_dagger_metaworld.py); an unknown task stops the node with the close matches."""
import subprocess

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("metaworld")

from bc_msgs.srv import QueryExpert  # noqa: E402
from bc_policy_node.core.contract import ObservationAssembler  # noqa: E402
from bc_policy_node.core.sim.metaworld_task import ROBOT, MetaWorldSimEnv  # noqa: E402
from bc_policy_node.graph import NodeSpec  # noqa: E402
from bc_policy_node.pipeline.graph_client import GraphClient  # noqa: E402
from bc_policy_node.procs import NodeProcess  # noqa: E402

pytestmark = pytest.mark.ros
TASK = "metaworld/pick-place-v3"
WAIT = 60.0


def expert_spec(task: str) -> NodeSpec:
    return NodeSpec("expert_node", "expert", param_file="expert.yaml",
                    parameters={"robot": ROBOT, "task": task, "drive": False})


def visited_and_unvisited_states(env: MetaWorldSimEnv, n: int = 6) -> np.ndarray:
    """Observations along an expert episode and along random commands (states it never visits)."""
    c, asm, rng = env.contract, ObservationAssembler(env.contract), np.random.default_rng(0)
    expert, out = env.make_expert(), []
    msgs = env.reset(2)
    for t in range(40):
        obs = asm.assemble(msgs)
        if t % 8 == 0:
            out.append(obs)
        msgs = env.step(expert.act_obs(obs, c) if t < 20 else rng.uniform(c.action.lower, c.action.upper))
    return np.array(out[:n])


def test_query_labels_equal_the_in_process_expert(tmp_path):
    env = MetaWorldSimEnv(ROBOT, TASK)
    obs = visited_and_unvisited_states(env)
    node = NodeProcess(expert_spec(TASK), tmp_path / "logs")
    try:
        with GraphClient("mw_expert_test", check=lambda: node.alive() or pytest.fail(node.log()[-3000:])) as c:
            req = QueryExpert.Request(count=len(obs), observations=obs.ravel().tolist(), modes=[], chunk_length=1)
            resp = c.call(QueryExpert, "/expert/query", req, timeout=WAIT, check_success=False)
            assert resp.success, resp.message
            got = np.array(resp.actions).reshape(len(obs), 4)
            want = np.array([env.make_expert().act_obs(o, env.contract) for o in obs])
            np.testing.assert_array_equal(got, want)
            req.chunk_length = 5
            resp = c.call(QueryExpert, "/expert/query", req, timeout=WAIT, check_success=False)
            assert not resp.success and "no simulation state for a K-step plan" in resp.message, resp.message
    finally:
        assert node.stop() == 0, node.log()[-3000:]


def test_an_unknown_task_stops_the_node_with_the_close_matches(tmp_path):
    node = NodeProcess(expert_spec("metaworld/pick-plac-v3"), tmp_path / "logs")
    try:
        code = node.proc.wait(timeout=WAIT)
    except subprocess.TimeoutExpired:
        node.stop()
        pytest.fail(f"the expert node did not exit on an unknown task:\n{node.log()[-3000:]}")
    assert code == 1 and "pick-place-v3" in node.log(), node.log()[-3000:]
