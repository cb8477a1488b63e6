"""bc_policy_node: behavioral cloning for robot arms, ROS 2-native."""
from ._version import __version__  # noqa: F401
