"""Lock-step pairing: the one place that decides when a set of stamped messages is complete.

In lock-step the sim bridge publishes one observation pair per control period, all with the
same stamp; a controller acts once per stamp, when every topic it observes has delivered it.
The policy node, the DAgger node and the expert node pair their inputs with `StampSync`.
"""
from __future__ import annotations

import collections
from typing import Hashable, Iterable, List, Optional, Tuple


class StampSync:
    """Lock-step intake: a stamp is released once every topic has delivered a message with it.

    ``add(topic, key, item)`` returns ``[(topic, item), ...]`` for every topic (in the order
    given) when `key` completes, else None. Older pending stamps are dropped on release;
    stamps at or before the last released one are ignored; at most `max_pending` unmatched
    stamps are kept per topic.
    """

    def __init__(self, topics: Iterable[str], max_pending: int = 64):
        self.topics = list(topics)
        self.max_pending = int(max_pending)
        self.reset()

    def reset(self) -> None:
        self._pending = {t: collections.OrderedDict() for t in self.topics}
        self.last: Optional[Hashable] = None

    def is_repeat(self, key) -> bool:
        """`key` is at or before the last released stamp (a re-publication, or out of order)."""
        return self.last is not None and key <= self.last

    def add(self, topic: str, key, item) -> Optional[List[Tuple[str, object]]]:
        if self.is_repeat(key):
            return None
        pending = self._pending[topic]
        pending[key] = item
        if len(pending) > self.max_pending:
            pending.popitem(last=False)
        if any(key not in self._pending[t] for t in self.topics):
            return None
        out = []
        for t in self.topics:
            p = self._pending[t]
            out.append((t, p.pop(key)))
            for k in [k for k in p if k < key]:
                del p[k]
        self.last = key
        return out
