"""rclpy nodes: thin shells around bc_policy_node.core (never import torch here)."""
