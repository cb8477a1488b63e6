"""Parallel evaluation (core/eval/parallel.py): Ray workers give the serial results exactly, in
input order, re-raise a worker's error, and every socket Ray opens is on loopback."""
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")

from bc_policy_node.core.eval import parallel  # noqa: E402
from bc_policy_node.core.eval.rollout import evaluate  # noqa: E402
from bc_policy_node.core.sim.disturbance import Pushes  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "models" / "policies"
SEEDS = list(range(10_000, 10_006))
WAIT_S = 120.0   # bound of every wait for a Ray task
ARRAYS = ("ee", "q", "obs", "actions", "actors")


@pytest.fixture(scope="module")
def ray_up():
    """One local Ray instance (2 workers) for the module; the sockets of this process tree
    before it started (the loopback test looks only at sockets opened since)."""
    before = {s["inode"] for s in parallel.sockets(parallel.ray_process_ids())}
    with parallel.ray_session(2) as ray:
        # this module's helpers by value: the workers cannot import test files
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        yield before


def _slow_square(x):
    time.sleep(0.05 * (5 - x))     # later items finish first
    return x * x


def _fails_on_three(x):
    if x == 3:
        raise ValueError(f"item {x} is bad")
    return x


def _same_episodes(a, b):
    assert [r.seed for r in a] == [r.seed for r in b]
    for x, y in zip(a, b):
        assert (x.status, x.steps) == (y.status, y.steps)
        for k in ARRAYS:
            assert np.array_equal(getattr(x, k), getattr(y, k)), f"seed {x.seed}: {k} differs"
        assert x.meta["final_error"] == y.meta["final_error"]
        assert np.array_equal(x.meta["goal"], y.meta["goal"]) and x.meta["pushes"] == y.meta["pushes"]


def _same_evaluation(serial, par):
    _same_episodes(serial["results"], par["results"])
    _same_episodes(serial["experts"], par["experts"])
    for k in ("success", "collision_rate", "statuses", "steps", "final_error", "deviation"):
        assert serial.get(k) == par.get(k), k
    assert np.array_equal(serial.get("deviation_mean_by_t", []), par.get("deviation_mean_by_t", []),
                          equal_nan=True)


@pytest.mark.parametrize("name, kw", [
    ("planar3_curved_reach", {"execution_mode": "temporal_ensembling", "m": 0.01}),
    # gmm, modes sampled from the per-seed generator, and pushes: nothing may leak across seeds
    ("planar3_bimodal", {"execution_mode": "mode_consistent", "mode_select": "sample",
                         "disturbance": Pushes(magnitude=0.2)}),
])
def test_two_workers_give_the_serial_results_exactly(ray_up, name, kw):
    model = POLICIES / f"{name}.onnx"
    assert model.is_file(), "shipped policy missing (scripts/train_shipped_policies.py)"
    from bc_policy_node.core.control.runtime import OnnxPolicy
    c = OnnxPolicy(model).contract
    serial = evaluate(str(model), c.robot, c.task, SEEDS, **kw)
    par = evaluate(str(model), c.robot, c.task, SEEDS, workers=2, timeout=WAIT_S, **kw)
    assert len(par["results"]) == len(SEEDS) and len(par["experts"]) == len(SEEDS)
    if "disturbance" in kw:
        assert any(r.meta["pushes"] for r in par["results"]), "no push happened: the case tests nothing"
    _same_evaluation(serial, par)


def test_expert_demonstrations_over_two_workers_are_the_serial_ones(ray_up):
    from bc_policy_node.core.eval.rollout import expert_rollouts

    serial = expert_rollouts("planar3", "bimodal", range(5))
    par = expert_rollouts("planar3", "bimodal", range(5), workers=2)
    _same_episodes(serial, par)


def test_parallel_map_keeps_input_order(ray_up):
    done = []
    out = parallel.parallel_map(_slow_square, range(6), workers=2, timeout=WAIT_S,
                                progress=lambda it: (done.append(len(it)) or it))
    assert out == [x * x for x in range(6)]
    assert done == [6]


def test_parallel_map_reraises_a_workers_exception_with_its_message(ray_up):
    with pytest.raises(ValueError, match="item 3 is bad"):
        parallel.parallel_map(_fails_on_three, range(6), workers=2, timeout=WAIT_S)
    # Ray is still usable afterwards
    assert parallel.parallel_map(_slow_square, [4, 5], workers=2, timeout=WAIT_S) == [16, 25]


def test_every_socket_ray_opened_is_on_loopback(ray_up):
    assert parallel.parallel_map(_slow_square, [1, 2, 3, 4], workers=2, timeout=WAIT_S) == [1, 4, 9, 16]
    pids = parallel.ray_process_ids()
    new = [s for s in parallel.sockets(pids) if s["inode"] not in ray_up]
    listening = [s for s in new if s["state"] == "LISTEN"]
    names = {s["name"] for s in listening}
    assert "gcs_server" in names and "raylet" in names, f"Ray's servers not found: {listening}"
    assert parallel.off_loopback(new) == [], "Ray opened sockets off loopback"


def test_one_worker_runs_in_process_without_ray():
    code = ("import sys; from bc_policy_node.core.eval.parallel import parallel_map; "
            "assert parallel_map(abs, [-2, 1, -3]) == [2, 1, 3]; "
            "from bc_policy_node.core.eval import rollout; "
            "assert 'ray' not in sys.modules, 'ray imported'")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_chunks_are_contiguous_and_cover_the_seeds():
    assert parallel.chunks(range(7), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert parallel.chunks(range(2), 8) == [[0], [1]]
    assert parallel.chunks([], 4) == []
