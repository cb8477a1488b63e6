"""The three layers stay clean: core never loads rclpy or torch; nodes never load torch."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "bc_policy_node"


def _loaded_after_import(module: str):
    code = (f"import sys, importlib; importlib.import_module({module!r}); "
            "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in ('rclpy', 'torch'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def _modules(sub: str):
    return sorted(f"bc_policy_node.{sub}.{p.stem}" for p in (PKG / sub).glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("module", ["bc_policy_node.core"] + _modules("core"))
def test_core_loads_neither_rclpy_nor_torch(module):
    assert _loaded_after_import(module) == set()


def test_nodes_never_import_torch():
    offenders = [p.name for p in (PKG / "nodes").glob("*.py")
                 if any(line.strip().startswith(("import torch", "from torch"))
                        for line in p.read_text().splitlines())]
    assert offenders == []


def test_core_sources_do_not_import_upper_layers():
    bad = []
    for p in (PKG / "core").glob("*.py"):
        for line in p.read_text().splitlines():
            s = line.strip()
            if s.startswith(("import ", "from ")) and any(
                    k in s.split("#")[0] for k in ("rclpy", "torch", ".learning", ".nodes", "bc_msgs")):
                bad.append(f"{p.name}: {s}")
    assert bad == []
