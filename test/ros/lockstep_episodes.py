"""Consecutive seeded lock-step episodes driven by a GraphClient (shared by the parity tests)."""


def run_episodes(client, cmds, bridge, seeds, task, wait):
    """Reset each seed, wait until the task is done and until the node's answer to the
    episode's final pair is in (`cmds`, the commands seen so far) and ignored by the bridge
    (`bridge`, its latest diagnostics): arriving after the next reset, it would be that
    episode's first tick. Every wait bounded by `wait` s. Returns [(final TaskState, reset
    response, index of the episode's first command in cmds)]."""
    out = []
    for i, seed in enumerate(seeds):
        n0 = len(cmds)
        resp = client.reset(seed=seed, task=task, timeout=wait)
        final = client.wait_task_done(resp.episode_id, timeout=600.0, stall_timeout=wait, kick_after_s=20.0)
        client.wait_until(lambda: len(cmds) >= n0 + final.step + 1
                          and int(bridge.get("ignored_not_running", -1)) >= i + 1, wait,
                          "the answer to the final pair, ignored by the bridge")
        out.append((final, resp, n0))
    return out
