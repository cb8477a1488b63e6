"""Control of a policy on a robot, with no ROS: the per-tick engine (`controller.PolicyController`),
chunk executors (`ensemble`), the safety filter (`safety`), ONNX runtime and contract checks
(`runtime`, `loader`), the policy node's parameters (`params`) and tick statistics (`stats`)."""
