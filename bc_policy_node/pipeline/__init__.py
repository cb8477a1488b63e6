"""CLI pipelines (`bc-policy collect`, `dataset`, ...): drive the ROS graph and the core tools.

Modules here may import rclpy (graph_client, collect) or only core (dataset_cli); never torch
outside the training stages.
"""
