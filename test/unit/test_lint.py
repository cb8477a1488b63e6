"""Static checks as tests: ruff on all Python code of the repo (rules in ruff.toml) and mypy on
`bc_policy_node/core` (settings in setup.cfg). Both are pinned in requirements/python.txt."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PATHS = ["bc_policy_node", "test", "bench", "scripts", "launch"]
TIMEOUT_S = 600


def _tool(name: str) -> str:
    exe = Path(sys.executable).parent / name
    found = str(exe) if exe.is_file() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed (it is pinned in requirements/python.txt: run ./run test)")
    return found


def _run(cmd):
    try:
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(cmd)} did not finish within {TIMEOUT_S} s")


def test_ruff_finds_nothing():
    r = _run([_tool("ruff"), "check", "--no-cache", *PATHS])
    assert r.returncode == 0, f"ruff found problems (fix, or `ruff check --fix`):\n{r.stdout}{r.stderr}"


def test_mypy_on_core_finds_nothing():
    r = _run([_tool("mypy"), "--cache-dir", str(ROOT / "build" / "mypy_cache"), "bc_policy_node/core"])
    assert r.returncode == 0, f"mypy found problems in bc_policy_node/core:\n{r.stdout}{r.stderr}"
