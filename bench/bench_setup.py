"""Wall time of set-up from a clean clone (cold: new venv, install, build) and of a second run (warm).

    python bench/bench_setup.py [--keep]

Clones this repository's HEAD into a temp dir and runs scripts/setup.sh twice. "Cold" still
benefits from pip's download cache if this machine has one (the figure says which).
Writes bench/results/setup.json.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd, cwd, env):
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--keep", action="store_true", help="keep the temp clone")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bcp-setup-bench-"))
    clone = tmp / "bc_policy_node"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VIRTUAL_ENV", "AMENT_", "COLCON_", "ROS_", "CMAKE_PREFIX", "_BCP"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    pip_cache = Path.home() / ".cache" / "pip"
    cold = timed(["bash", "scripts/setup.sh"], clone, env)
    warm = timed(["bash", "scripts/setup.sh"], clone, env)
    res = {"cold_s": round(cold, 1), "warm_s": round(warm, 2), "pip_cache_present": pip_cache.is_dir(),
           "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                    text=True).stdout.strip()}
    print(f"set-up from a clean clone: cold {cold:.1f} s, warm {warm:.2f} s "
          f"(pip cache {'present' if res['pip_cache_present'] else 'absent'})")
    out = ROOT / "bench" / "results" / "setup.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
