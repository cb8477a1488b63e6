#!/usr/bin/env bash
# Run the test suite inside the project environment (./run test calls this after set-up).
# Where we may (root with unshare), the whole run happens in a private network namespace that
# has only a loopback interface: a hard guarantee that no DDS packet can leave this machine, on
# top of ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST (set by env.sh and test/conftest.py).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
args=(-q -ra "$@")
[ $# -gt 0 ] || args=(-q -ra test)
if [ "${BCP_NO_NETNS:-0}" != 1 ] && command -v unshare >/dev/null && command -v ip >/dev/null \
   && unshare -n true 2>/dev/null; then
  echo "[test] running in a private network namespace (loopback only)" >&2
  exec unshare -n bash -c 'ip link set lo up && exec python -m pytest "$@"' bash "${args[@]}"
fi
exec python -m pytest "${args[@]}"
