"""Bounded reads from a child process's stdout pipe for the ROS tests.

`pipe.readline()` blocks for as long as the child neither prints nor exits, so a hung peer
would hang the test run. Here every read has a deadline; on expiry the child is killed (which
also ends the blocked reader thread) and the test fails with what the child was doing.
"""
import subprocess
import threading

import pytest


def kill(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGKILL if still running, reaped with a deadline (never raises)."""
    if proc.poll() is None:
        proc.kill()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass


def read_line(proc: subprocess.Popen, timeout: float, what: str) -> str:
    """The next line of proc.stdout; pytest.fail (child killed) if none within `timeout` s."""
    box = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not box:
        kill(proc)
        pytest.fail(f"{what}: no line from pid {proc.pid} within {timeout:g} s "
                    f"(exit code {proc.returncode})")
    if not box[0]:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill(proc)
        pytest.fail(f"{what}: pid {proc.pid} closed its stdout (exit code {proc.returncode})")
    return box[0]


def wait_or_kill(proc: subprocess.Popen, timeout: float, what: str) -> int:
    """proc.wait() with a deadline: on expiry SIGKILL and pytest.fail with `what`."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill(proc)
        pytest.fail(f"{what}: pid {proc.pid} did not exit within {timeout:g} s (killed)")
