"""Named QoS profiles of the graph (passed in by name, never improvised per node)."""
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)

# Joint states and task state: reliable with a deep queue. The recorder must count zero loss at
# 1 kHz and lock-step control must never miss a state (toolchain.md: depth 10 drops at kHz).
STATE = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000, reliability=ReliabilityPolicy.RELIABLE,
                   durability=DurabilityPolicy.VOLATILE)
# Best-effort sensor data for consumers that only want the latest sample (e.g. visualizers).
SENSOR = qos_profile_sensor_data
# Commands to a ros2_control forward controller: reliable and deep. At 0.5-1 kHz on a CPU-starved
# machine depth 100 lost commands (Fast DDS re-sends only after a heartbeat); 1000 lost none
# (bench/bench_recorder_node.py).
COMMAND = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.VOLATILE)
# Status / model info: the latest value is delivered to late joiners.
STATUS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                    durability=DurabilityPolicy.TRANSIENT_LOCAL)
# /clock: like rosgraph's default.
CLOCK = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                   durability=DurabilityPolicy.VOLATILE)
# Camera frames (sensor_msgs/Image, CompressedImage, CameraInfo). A consumer that acts on the
# newest frame (the policy node in free-run, viewers) subscribes best effort, depth 1: a late
# frame is worth nothing, and a reliable reader would make the writer re-send ~27 kB raw frames.
CAMERA_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT,
                        durability=DurabilityPolicy.VOLATILE)
# The bridge's camera publishers, and readers that must not lose a frame (lock-step control,
# the recorder): reliable, a short history (a 224x224 frame is 150 kB; lock-step sends one per
# command). A reliable writer also serves best-effort readers (CAMERA_QOS), not the reverse.
CAMERA_RELIABLE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                                 durability=DurabilityPolicy.VOLATILE)
