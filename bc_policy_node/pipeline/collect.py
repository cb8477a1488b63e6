"""`bc-policy collect`: seeded expert demonstrations recorded through the real ROS graph.

Starts `mujoco_bridge` (mode lockstep, no start-up episode), `expert` (drive true) and
`recorder` as processes from the same `graph` specs the launch files use, then per episode:
start_episode -> reset(seed) -> wait until /task_state is done -> stop_episode(task_success).
One rosbag2 per episode in `out` (episode ids continue after the bags already there).
An episode the recorder did not get whole is discarded and recorded again (same seed, same
episode id; at most RECORD_RETRIES times, then kept and reported as `recorder_short`).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Dict, List

from .. import graph, procs

EPISODE_TIMEOUT_S = 300.0     # wall-clock limit of one episode
READY_TIMEOUT_S = 60.0        # graph start-up (processes, discovery)
KICK_AFTER_S = 2.0            # lock-step loop without progress: ask the bridge to re-publish
SETTLE_TIMEOUT_S = 10.0       # wait for the recorder to hold the whole episode before stopping
# Re-record an episode the recorder holds only part of. The likely cause of a rare CI failure
# (a dataset one frame short): the recorder's subscriptions report their publishers matched
# (reader side) before the publishers have matched the recorder (writer side, discovered
# separately), so the first message of the first episode can reach everyone but the recorder;
# the episode's first command then has no observation before it and gives no frame. The
# lock-step loop recovers from such a miss by the re-publish kick; a recording cannot.
RECORD_RETRIES = 2
CMD = "/forward_position_controller/commands"


class CollectError(RuntimeError):
    """The graph could not be started or an episode could not be recorded (message says why)."""


def next_episode_id(out: Path) -> int:
    """One past the largest episode_id of the bags already in `out` (0 if none)."""
    from ..core.data.bagread import find_bags, read_episode_meta

    ids = []
    if out.is_dir():
        for bag in find_bags([out]):
            eid = read_episode_meta(bag).get("episode_id")
            if isinstance(eid, int):
                ids.append(eid)
    return max(ids) + 1 if ids else 0


def _wait_ready(client, contract, timeout: float) -> None:
    """Services up, and the topics of the lock-step loop connected (expert, recorder, bridge)."""
    from .graph_client import RESET, START_EPISODE, STEP, STOP_EPISODE

    client.wait_for_services([RESET, STEP, START_EPISODE, STOP_EPISODE], timeout)
    node = client.node
    obs, cmds = list(contract.observation_topics()), [p.topic for p in contract.action.parts]
    state, cams = [t.topic for t in contract.observation], list(contract.image_topics())
    client.wait_until(lambda: all(node.count_subscribers(t) >= 2 for t in state)   # expert + recorder
                      and all(node.count_subscribers(t) >= 1 and node.count_publishers(t) >= 1
                              for t in cams)                                     # recorder; the bridge
                      and node.count_subscribers("/task_state") >= 3            # + this client
                      and all(node.count_publishers(t) >= 1 and node.count_subscribers(t) >= 2 for t in cmds),
                      timeout, "the bridge, expert and recorder topics to connect")
    client.wait_recorder(lambda s: all(s["publishers"].get(t, 0) >= 1 for t in obs + cmds),
                         timeout, "the recorder to match the bridge and expert publishers")


def _wait_recorded(client, contract, steps: int) -> str:
    """Until the recorder holds the episode's steps + 1 observations per topic and `steps`
    commands per action part (the lock-step protocol's counts), so stop_episode never cuts data
    still in flight on a busy machine. Returns '' or what was missing after SETTLE_TIMEOUT_S
    (then it stops anyway)."""
    from .graph_client import GraphError

    need = {t: steps + 1 for t in contract.observation_topics()}
    need.update({p.topic: steps for p in contract.action.parts})

    def have(s):
        w = (s.get("episode") or {}).get("written", {})
        return all(w.get(t, 0) >= n for t, n in need.items())
    try:
        client.wait_recorder(have, SETTLE_TIMEOUT_S, "the episode's messages")
        return ""
    except GraphError:
        w = ((client.recorder or {}).get("episode") or {}).get("written", {})
        return ", ".join(f"{t} {w.get(t, 0)}/{n}" for t, n in need.items() if w.get(t, 0) < n)


def _log_tails(g, n: int = 1500) -> str:
    out = []
    for name, p in g.procs.items():
        try:
            text = p.log_path.read_text(errors="replace")
        except OSError:
            continue
        out.append(f"--- {name} ({p.log_path}):\n{text[-n:]}")
    return "\n".join(out)


def collect(robot: str, task: str, episodes: int, seed: int, out, log_dir, progress: bool = True,
            variant: str = "", episode_timeout_s: float = EPISODE_TIMEOUT_S,
            contract_file=None) -> Dict[str, Any]:
    """Record `episodes` expert episodes (seeds seed, seed+1, ...) into `out`.

    `contract_file`: the contract YAML whose topics are recorded (default: the robot/task's
    shipped one); its camera terms make the bridge render and publish those cameras.

    Returns a summary: episodes, successes, success_rate, frames (control ticks = commands),
    messages, bag_dir, bags, wall_s, per-episode rows (recorder_short: what the recorder still
    missed at stop after RECORD_RETRIES re-recordings, '' if nothing; re_recorded: what it
    missed in the discarded attempts), log_dir. Raises CollectError (with the
    nodes' log tails) if the graph does not come up, a node dies or an episode stalls.
    """
    from .graph_client import GraphClient, GraphError

    out, log_dir = Path(out).resolve(), Path(log_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    first_id = next_episode_id(out)
    from ..core.sim.env import load_contract

    from ..core.contract import Contract

    contract = Contract.load(contract_file) if contract_file else load_contract(robot, task)
    specs = graph.sim_nodes(robot=robot, task=task, mode="lockstep", seed=seed, drive=True,
                            cameras=graph.bridge_cameras(contract)) + \
        graph.record_nodes(robot=robot, task=task, output_dir=str(out),
                           contract=str(Path(contract_file).resolve()) if contract_file else "")
    extra = {"mujoco_bridge": {"auto_reset": False}, "recorder": {"status_period_s": 0.1}}
    t0 = time.monotonic()
    rows: List[Dict[str, Any]] = []
    bar = None
    try:
        with procs.Graph(specs, log_dir, extra) as g, GraphClient("collect", check=g.check_alive) as c:
            try:
                _wait_ready(c, contract, READY_TIMEOUT_S)
                if progress:
                    from tqdm.auto import tqdm
                    bar = tqdm(total=episodes, desc=f"collect {robot}/{task}", unit="ep", dynamic_ncols=True)
                for i in range(episodes):
                    s, eid = seed + i, first_id + i
                    retried: List[str] = []
                    for attempt in range(RECORD_RETRIES + 1):
                        bag = c.start_episode(task=task, seed=s, episode_id=eid, source="expert",
                                              notes=f"bc-policy collect {robot}/{task}")
                        try:
                            r = c.reset(seed=s, task=task, variant=variant)
                            final = c.wait_task_done(r.episode_id, timeout=episode_timeout_s,
                                                     kick_after_s=KICK_AFTER_S,
                                                     stall_timeout=4 * KICK_AFTER_S)
                        except BaseException:
                            c.stop_episode(task_success=False, outcome="collect error", discard=True)
                            raise
                        short = _wait_recorded(c, contract, int(final.step))
                        if not short or attempt == RECORD_RETRIES:
                            break
                        retried.append(short)
                        c.stop_episode(task_success=False, outcome=f"recorder short: {short}", discard=True)
                    resp = c.stop_episode(task_success=bool(final.success), outcome=final.status,
                                          notes=final.reason)
                    rows.append({"episode_id": eid, "seed": s, "success": bool(final.success),
                                 "status": final.status, "frames": int(final.step),
                                 "messages": int(resp.messages_written), "bag": resp.bag_path or bag,
                                 "recorder_short": short, "re_recorded": retried})
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(success=f"{sum(r_['success'] for r_ in rows)}/{len(rows)}")
            except (GraphError, RuntimeError) as e:
                raise CollectError(f"{e}\n{_log_tails(g)}") from e
    finally:
        if bar is not None:
            bar.close()
    n_ok = sum(r["success"] for r in rows)
    return {"robot": robot, "task": task, "episodes": len(rows), "successes": n_ok,
            "success_rate": n_ok / len(rows) if rows else 0.0,
            "frames": sum(r["frames"] for r in rows), "messages": sum(r["messages"] for r in rows),
            "bag_dir": str(out), "bags": [r["bag"] for r in rows], "first_seed": seed,
            "wall_s": time.monotonic() - t0, "rows": rows, "log_dir": str(log_dir)}


def format_summary(s: Dict[str, Any], max_rows: int = 12) -> str:
    lines = [f"collected {s['episodes']} expert episodes of {s['robot']}/{s['task']} "
             f"(seeds {s['first_seed']}..{s['first_seed'] + s['episodes'] - 1}) in {s['wall_s']:.1f} s",
             f"  success   {s['successes']}/{s['episodes']} ({100 * s['success_rate']:.0f}%)",
             f"  frames    {s['frames']} control ticks, {s['messages']} messages recorded",
             f"  bags      {s['bag_dir']}",
             f"  logs      {s['log_dir']}"]
    for r in [r for r in s["rows"] if r.get("re_recorded")][:max_rows]:
        lines.append(f"  episode {r['episode_id']} recorded {len(r['re_recorded']) + 1} times (recorder "
                     f"had only {'; '.join(r['re_recorded'])})")
    for r in [r for r in s["rows"] if r.get("recorder_short")][:max_rows]:
        lines.append(f"  WARNING episode {r['episode_id']}: recorder had only {r['recorder_short']} at stop")
    failed = [r for r in s["rows"] if not r["success"]]
    for r in failed[:max_rows]:
        lines.append(f"  not successful: episode {r['episode_id']} seed {r['seed']}: {r['status']}")
    if len(failed) > max_rows:
        lines.append(f"  ... {len(failed) - max_rows} more unsuccessful")
    lines.append("next: bc-policy dataset build " + s["bag_dir"] + " --out <dataset folder>")
    return "\n".join(lines)


def main(args) -> int:
    out = Path(args.out)
    log_dir = out.parent / "logs" / f"collect_{out.name}"
    try:
        summary = collect(args.robot, args.task, args.episodes, args.seed, out, log_dir, progress=True,
                          contract_file=args.contract)
    except CollectError as e:
        print(f"collect failed: {e}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    return 0
