"""The shared `main()` body of the plain (non-lifecycle) nodes."""
from __future__ import annotations

from typing import Callable, Tuple, Type

import rclpy
from rclpy.exceptions import InvalidParameterTypeException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor


def run_node(make_node: Callable[[], object], name: str, startup_errors: Tuple[Type[BaseException], ...],
             args=None) -> int:
    """Init rclpy, build the node (a startup error -> fatal log, exit code 1), `start()` it, spin a
    single-threaded executor until Ctrl-C / shutdown, then `shutdown()` + destroy. Returns 0."""
    rclpy.init(args=args)
    try:
        node = make_node()
    except startup_errors + (InvalidParameterTypeException,) as e:
        rclpy.logging.get_logger(name).fatal(f"cannot start: {e}")
        rclpy.try_shutdown()
        return 1
    try:
        node.start()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
