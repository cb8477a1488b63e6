"""Loading policies off the control thread (stdlib threads only; no rclpy)."""
from __future__ import annotations

import collections
import queue
import threading
from typing import Callable

from .controller import load_policy


class PolicyLoader:
    """Loads and validates policies on a worker thread, one request at a time.

    `submit(request)` queues an object with ``path``, ``contract`` and ``params``; the worker
    sets ``request.policy`` (or ``request.error``), appends it to `done` and calls `notify`
    (thread-safe, e.g. a guard condition's ``trigger``). `before_load()` runs on the worker
    right before each load (the node uses it to start just after a control tick).
    """

    def __init__(self, notify: Callable[[], None], before_load: Callable[[], None] = lambda: None):
        self.done: "collections.deque" = collections.deque()
        self._notify, self._before = notify, before_load
        self._queue: "queue.Queue" = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="policy_loader", daemon=True)
        self._thread.start()

    def submit(self, request) -> None:
        self._queue.put(request)

    def close(self, timeout: float = 5.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout=timeout)

    def _work(self) -> None:
        while True:
            req = self._queue.get()
            if req is None:
                return
            self._before()
            try:
                req.policy = load_policy(req.path, req.contract, req.params)
            except Exception as e:  # the reason goes back to the caller verbatim
                req.error = str(e) or type(e).__name__
            self.done.append(req)
            self._notify()
