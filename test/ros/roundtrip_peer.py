"""Peer process for the bc_msgs round-trip test.

Echoes every bc_msgs message from /rt/<Name> to /rt/<Name>/echo, and serves every bc_msgs
service on /rt/<Name>: if the request equals fill(Request, seed) it answers
fill(Response, seed), otherwise a default Response (so the client sees the mismatch).
"""
import sys
from pathlib import Path

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

sys.path.insert(0, str(Path(__file__).resolve().parent))
from msgfill import fill  # noqa: E402

import bc_msgs.msg as M  # noqa: E402
import bc_msgs.srv as S  # noqa: E402

SEED = 1234
MSGS = [n for n in dir(M) if not n.startswith("_") and hasattr(getattr(M, n), "get_fields_and_field_types")]
SRVS = [n for n in dir(S) if not n.startswith("_") and hasattr(getattr(S, n), "Request")
        and not n.endswith(("_Request", "_Response", "_Event"))]


def main():
    rclpy.init()
    node = Node("bc_msgs_roundtrip_peer")
    keep = []
    for name in MSGS:
        cls = getattr(M, name)
        pub = node.create_publisher(cls, f"/rt/{name}/echo", 10)
        keep.append(node.create_subscription(cls, f"/rt/{name}", pub.publish, 10))
    for name in SRVS:
        cls = getattr(S, name)

        def handle(req, resp, cls=cls):
            return fill(cls.Response, SEED) if req == fill(cls.Request, SEED) else cls.Response()
        keep.append(node.create_service(cls, f"/rt/{name}", handle))
    print("ready", flush=True)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):   # SIGINT / SIGTERM from the test
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
