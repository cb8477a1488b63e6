"""Numpy-only core: contract, sim, tasks, experts, chunk execution, safety, ONNX runtime, data IO.

Never imports rclpy or torch (a test checks this in a fresh interpreter).
"""
