"""Node plumbing written once, used by every node of the package.

Owns: the process lifetime of a node (`run_node`: rclpy init, SIGINT/SIGTERM, spin, clean
shutdown, exit code), run-time message type lookup (`normalize_type`, `message_class`), per-key throttled logging
(`ThrottledLog`), ``/diagnostics`` (`diagnostic_array`, `Diagnostics`), JSON ``~/status``
(`JsonStatus`) and the guard of run-time parameter changes (`refuse_static_parameters`, from the
``runtime=True`` flag of `core.params.doc`). Parameter declaration is `nodes.params`.
"""
from __future__ import annotations

import importlib
import json
import signal
import threading
import time
from typing import Callable, Dict, Iterable, Mapping, Optional, Tuple, Type

import rclpy
import rclpy.logging
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.exceptions import InvalidParameterTypeException
from rclpy.executors import Executor, ExternalShutdownException, SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions
from std_msgs.msg import String

from ..core.params import runtime_names
from . import qos

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR
SPIN_POLL_S = 0.1     # s; the executor wakes at least this often to see a stop signal


# ------------------------------------------------------------------------------ run_node
def run_node(make_node: Callable[[], object], name: str,
             startup_errors: Tuple[Type[BaseException], ...] = (), args=None,
             executor: Callable[[object], Executor] = lambda node: SingleThreadedExecutor()) -> int:
    """The whole ``main()`` of a node. Returns the process exit code.

    rclpy init -> ``make_node()`` (one of `startup_errors` or a parameter type error: fatal log
    ``cannot start: ...``, exit code 1) -> ``node.start()`` if it has one -> spin ``executor(node)``
    until SIGINT, SIGTERM or an external ``rclpy.shutdown`` -> ``node.shutdown(reason)`` if it
    has one (reason: ``SIGINT`` | ``SIGTERM`` | ``context shutdown``), with the context still up
    (it may drain subscriptions and publish a last status) -> executor shutdown, destroy, exit 0.

    Signals: rclpy's own handlers (``SignalHandlerOptions.ALL``, which in rclpy 7 covers SIGTERM
    too) shut the context down from the signal, so nothing can be published or taken afterwards,
    and a SIGINT can raise KeyboardInterrupt inside a callback (e.g. half-way through a bag
    write). Here rclpy installs none; SIGINT and SIGTERM (what ``ros2 launch`` escalates to)
    only set a flag, the spin loop sees it between two callbacks (within `SPIN_POLL_S`) and the
    node shuts down exactly the same way for both. A repeated signal is ignored (SIGKILL is the
    last resort).
    """
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    received = {"sig": ""}

    def on_signal(signum, _frame):
        received["sig"] = received["sig"] or signal.Signals(signum).name
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            node = make_node()
        except startup_errors + (InvalidParameterTypeException,) as e:
            rclpy.logging.get_logger(name).fatal(f"cannot start: {e}")
            return 1
        ex = executor(node)
        try:
            ex.add_node(node)
            start = getattr(node, "start", None)
            if start is not None:
                start()
            while not stop.is_set() and rclpy.ok():
                ex.spin_once(timeout_sec=SPIN_POLL_S)
        except ExternalShutdownException:
            pass
        finally:
            reason = received["sig"] or "context shutdown"
            if stop.is_set():
                node.get_logger().info(f"{reason}: shutting down")
            shutdown = getattr(node, "shutdown", None)
            if shutdown is not None:
                shutdown(reason)
            ex.shutdown(timeout_sec=1.0)
            node.destroy_node()
        return 0
    finally:
        rclpy.try_shutdown()
        for s, h in previous.items():
            signal.signal(s, h)


# ------------------------------------------------------------------------------ messages
def normalize_type(type_name: str) -> str:
    """'pkg/msg/Name' or 'pkg/Name' -> 'pkg/msg/Name' (ValueError if malformed)."""
    parts = type_name.strip().strip("/").split("/")
    if len(parts) == 2:
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3 or parts[1] != "msg" or not all(parts):
        raise ValueError(f"message type {type_name!r} is not of the form pkg/msg/Name")
    return "/".join(parts)


def message_class(type_name: str):
    """``pkg/msg/Name`` (or ``pkg/Name``) -> the rclpy message class, imported at run time.

    Raises ValueError naming the type when it is malformed or its package / message is not
    available here.
    """
    pkg, _, name = normalize_type(type_name).split("/")
    try:
        module = importlib.import_module(f"{pkg}.msg")
    except ImportError:
        raise ValueError(f"message type {type_name!r} is not available here: package {pkg!r} has no "
                         f"Python messages (is it built and sourced?)") from None
    cls = getattr(module, name, None)
    if cls is None or not hasattr(cls, "_TYPE_SUPPORT"):
        raise ValueError(f"message type {type_name!r} is not available here: package {pkg!r} has no "
                         f"message {name!r}")
    return cls


# ------------------------------------------------------------------------------ logging
class ThrottledLog:
    """Warnings / errors throttled per key: at most one per `period_s` (monotonic) for each key.

    Why not rclpy's ``logger.warning(text, throttle_duration_sec=...)`` directly: its throttle
    is tied to the call site, so one call site logging several keys (e.g. each safety event
    kind) would share one throttle; and it identifies the call site by inspecting frames and
    reading the caller's source line on *every* call, suppressed or not (measured ~0.4 ms per
    call with rclpy 7.1 here), which a 1 kHz control tick or a per-message callback cannot pay.
    The gate here is a dict lookup; a message that passes goes to rclpy's logger unfiltered.
    Cold call sites with one message each keep using rclpy's ``throttle_duration_sec``.
    """

    def __init__(self, logger, period_s: float):
        self._logger = logger
        self.period_s = float(period_s)
        self._next: Dict[str, float] = {}

    def _due(self, key: str) -> bool:
        now = time.monotonic()
        if now < self._next.get(key, 0.0):
            return False
        self._next[key] = now + self.period_s
        return True

    # one call site per severity (rclpy refuses a severity change at a call site)
    def warning(self, key: str, text: str) -> bool:
        if self._due(key):
            self._logger.warning(text)
            return True
        return False

    def error(self, key: str, text: str) -> bool:
        if self._due(key):
            self._logger.error(text)
            return True
        return False


# ------------------------------------------------------------------------------ diagnostics
def _value(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def diagnostic_array(stamp, name: str, level, message: str, hardware_id: str = "",
                     values: Optional[Mapping[str, object]] = None) -> DiagnosticArray:
    """One-status DiagnosticArray: level `OK` | `WARN` | `ERROR`; `values` as key/value strings
    (floats as ``%.6g``, everything else ``str``), in the mapping's order."""
    status = DiagnosticStatus(name=name, hardware_id=hardware_id, level=level, message=message)
    status.values = [KeyValue(key=str(k), value=_value(v)) for k, v in (values or {}).items()]
    arr = DiagnosticArray(status=[status])
    arr.header.stamp = stamp
    return arr


class Diagnostics:
    """The node's ``/diagnostics`` publisher (depth 10) for one status named ``<node>: <what>``,
    stamped with the node clock."""

    def __init__(self, node, what: str, hardware_id: str = ""):
        self._node = node
        self.name = f"{node.get_name()}: {what}"
        self.hardware_id = hardware_id
        self.pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)

    def publish(self, level, message: str, values: Optional[Mapping[str, object]] = None,
                hardware_id: Optional[str] = None, stamp=None) -> None:
        self.pub.publish(diagnostic_array(
            stamp if stamp is not None else self._node.get_clock().now().to_msg(), self.name, level,
            message, self.hardware_id if hardware_id is None else hardware_id, values))


class JsonStatus:
    """``~/status`` as std_msgs/String holding a JSON object (qos.STATUS: late joiners get the
    latest), keys sorted."""

    def __init__(self, node, topic: str = "~/status"):
        self.pub = node.create_publisher(String, topic, qos.STATUS)

    def publish(self, status: Mapping[str, object]) -> None:
        self.pub.publish(String(data=json.dumps(status, sort_keys=True)))


# ------------------------------------------------------------------------------ parameters
class LateJoinerResend:
    """Lock-step bridge: the pair it waits on, published again for subscribers that joined late.

    State topics are volatile (no history), so a subscriber matched after a lock-step pair went
    out never gets it and, nothing answering, the loop waits forever: seen with a graph started
    from two launches (sim.launch.py, then dagger.launch.py), where the bridge's start-up pair
    reached only the sim launch's own expert. Every `period_s` (a node timer) this compares the
    subscriber counts of `publishers` with the counts when the current pair was last sent
    (`sent()`, called by the backend after each publication, its lock held): while the episode
    waits for a command (`waiting()`) and every publisher has a subscriber, a new one gets the
    pair again (`republish()`, the same stamp as ~/step 0). The start-up pair is the case with no
    publication yet. Lock-step receivers drop a repeated stamp (`core.sync.StampSync`), and a
    recording takes frames from commands, so a repeat adds none (`core.data.alignment`).
    """

    def __init__(self, node, publishers, lock, waiting: Callable[[], bool], republish: Callable[[], None],
                 period_s: float = 0.05):
        self._pubs, self._lock, self._waiting, self._republish = list(publishers), lock, waiting, republish
        self._counts: Optional[list] = None          # subscriber counts at the last publication
        self.resends = 0
        node.create_timer(period_s, self._poll)

    def sent(self) -> None:
        self._counts = [p.get_subscription_count() for p in self._pubs]

    def _poll(self) -> None:
        with self._lock:
            now = [p.get_subscription_count() for p in self._pubs]
            if not all(now) or not self._waiting():
                return
            if self._counts is None or any(n > c for n, c in zip(now, self._counts)):
                self.resends += self._counts is not None
                self._republish()                    # calls sent()


def refuse_static_parameters(params: Iterable, cls, note: str = "") -> Optional[SetParametersResult]:
    """For an ``on_set_parameters`` callback: a refusal naming the first parameter of dataclass
    `cls` not declared ``runtime=True`` (`core.params.doc`), or None if all may change now.
    ``use_sim_time`` is rclpy's own and always passes. `note` follows the list of run-time
    parameters in the reason, e.g. ``" (hot swap)"``."""
    allowed = runtime_names(cls)
    for p in params:
        if p.name != "use_sim_time" and p.name not in allowed:
            verb = "changes" if len(allowed) == 1 else "change"
            only = f"only {', '.join(allowed)}{note} {verb} at run time" if allowed else "none changes at run time"
            return SetParametersResult(successful=False, reason=f"{p.name} is read once at startup; {only}")
    return None
