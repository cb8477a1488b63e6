"""Hot-path subscriptions taken on a dedicated thread, outside the rclpy executor.

rclpy's executors spend ~100-120 µs of Python per delivered message (wait-set rebuild,
generators, task wrappers; measured on this machine kind), which caps a lock-step loop
between two Python processes near 1,000 ticks/s before any work is done. A `FastLane`
waits on its own rcl wait set holding only its subscriptions and takes messages directly
(~20 µs each): the same loop then runs at ~4,000 ticks/s. Everything else of the node
(services, timers, parameters, /clock) stays on the normal executor.

The lane's subscriptions live in a callback group the executors never select, so each
message is taken exactly once. If this rclpy lacks the wait-set API used here (it is
rclpy's internal `_rclpy.WaitSet`, stable from Humble to Kilted), the lane degrades to
ordinary executor subscriptions with the same callbacks: slower, same behaviour.
Callbacks run on the lane thread (or the executor thread in the fallback): they must be
thread-safe with respect to the node's other callbacks.
"""
from __future__ import annotations

import threading
from typing import Callable, List, Optional

from rclpy.callback_groups import CallbackGroup
from rclpy.guard_condition import GuardCondition

try:
    from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
    _HAVE_WAITSET = hasattr(_rclpy, "WaitSet")
except ImportError:  # pragma: no cover - other rclpy layouts
    _rclpy, _HAVE_WAITSET = None, False


class NeverExecutedGroup(CallbackGroup):
    """Callback group that no executor ever runs (its entities are taken by their owner: a
    FastLane thread, or the policy node's control tick)."""

    def can_execute(self, entity) -> bool:
        return False

    def beginning_execution(self, entity) -> bool:
        return False

    def ending_execution(self, entity) -> None:
        pass


class FastLane:
    """Subscriptions served by one private thread.

    Usage::

        lane = FastLane(node)
        lane.create_subscription(Float64MultiArray, topic, self.on_command, qos.COMMAND)
        lane.start()      # after every lane subscription is created
        ...
        lane.stop()       # before destroying the node

    on_error(exc) is called (on the lane thread) when a callback raises; the lane keeps going.
    """

    def __init__(self, node, name: str = "fastlane", on_error: Optional[Callable[[BaseException], None]] = None):
        self.node = node
        self.name = name
        self.on_error = on_error
        self.active = _HAVE_WAITSET
        self._group = NeverExecutedGroup() if self.active else None
        self._subs: List = []
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._wake: Optional[GuardCondition] = None

    def create_subscription(self, msg_type, topic: str, callback, qos_profile):
        if self._thread is not None:
            raise RuntimeError("FastLane: create every subscription before start()")
        if not self.active:
            return self.node.create_subscription(msg_type, topic, self._guarded(callback), qos_profile)
        sub = self.node.create_subscription(msg_type, topic, callback, qos_profile,
                                            callback_group=self._group)
        self._subs.append(sub)
        return sub

    def _guarded(self, callback):
        def run(msg):
            try:
                callback(msg)
            except Exception as e:  # noqa: BLE001 - a bad message must not kill the node
                if self.on_error is not None:
                    self.on_error(e)
                else:
                    raise
        return run

    def start(self) -> None:
        if not self.active or not self._subs or self._thread is not None:
            return
        self._wake = GuardCondition(None, None, self.node.context)
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        if self._thread is None:
            return
        self._stop.set()
        try:
            self._wake.trigger()
        except Exception:  # noqa: BLE001 - context already shut down: the timeout ends the wait
            pass
        self._thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        subs = list(self._subs)
        calls = [self._guarded(s.callback) for s in subs]
        ctx = self.node.context
        while not self._stop.is_set() and ctx.ok():
            try:
                with ctx.handle, self._wake.handle:
                    handles = []
                    for s in subs:
                        s.handle.__enter__()
                        handles.append(s.handle)
                    try:
                        ws = _rclpy.WaitSet(len(subs), 1, 0, 0, 0, 0, ctx.handle)
                        while not self._stop.is_set():
                            ws.clear_entities()
                            for h in handles:
                                ws.add_subscription(h)
                            ws.add_guard_condition(self._wake.handle)
                            ws.wait(200_000_000)          # ns; also re-checks the stop flag
                            for s, h, call in zip(subs, handles, calls):
                                while True:
                                    taken = h.take_message(s.msg_type, s.raw)
                                    if taken is None:
                                        break
                                    call(taken[0])
                    finally:
                        for h in handles:
                            h.__exit__(None, None, None)
            except Exception as e:  # noqa: BLE001 - shutdown races (invalid handle / context)
                if self._stop.is_set() or not ctx.ok():
                    return
                if self.on_error is not None:
                    self.on_error(e)
                self._stop.wait(0.05)
