# Source me:  source env.sh   — a shell with bc_policy_node, its venv and its ROS 2 on the paths.
# Safe under `set -u`. Keeps DDS on loopback (hard rule for these machines; harmless on a robot,
# override ROS_AUTOMATIC_DISCOVERY_RANGE afterwards if your robot is on another host).
_bcp_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)"
_bcp_venv="${BCP_VENV:-$_bcp_root/.venv}"
if [ ! -f "$_bcp_root/install/setup.bash" ]; then
  echo "bc_policy_node is not set up yet: run  $_bcp_root/scripts/setup.sh  (or ./run demo)" >&2
  return 1 2>/dev/null || exit 1
fi
# DDS stays on this machine: Jazzy+ spelling, Humble spelling, and a loopback-only Fast DDS profile.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
if [ "${ROS_DISTRO:-}" = "humble" ]; then export ROS_LOCALHOST_ONLY=1; fi
export FASTRTPS_DEFAULT_PROFILES_FILE="$_bcp_root/config/fastdds_localhost.xml"
export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
# shellcheck disable=SC1091
. "$_bcp_venv/bin/activate"
if [ -z "${ROS_DISTRO:-}" ] || [ "${_BCP_WHEEL_ROS:-0}" = 1 ]; then
  # ROS from the venv's wheels: their prefix is the venv itself.
  export _BCP_WHEEL_ROS=1
  export AMENT_PREFIX_PATH="$_bcp_venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
fi
_bcp_u=$-; set +u
# shellcheck disable=SC1091
. "$_bcp_root/install/setup.bash"
case $_bcp_u in *u*) set -u;; esac
export PATH="$_bcp_root/install/bc_policy_node/lib/bc_policy_node:$PATH"
export MPLBACKEND="${MPLBACKEND:-Agg}"
unset _bcp_u
