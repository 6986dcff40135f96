"""The latency objectives of the predictions in flight, on one event-loop timer.

Each prediction is answered when its outputs arrive or when its objective passes, whichever
comes first; nearly all are answered first. A loop timer per prediction, made and cancelled,
cost about 2 us of the query frontend's 30 (bench/inprocess.py); here a deadline is a heap
entry cancelled by a flag, and one timer waits for the earliest. Times are time.monotonic()'s:
uvloop's loop.time() counts whole milliseconds.
"""
import heapq
import itertools
import logging
import math
import time
from typing import Callable, List, Optional, Tuple

log = logging.getLogger("clipper.query_frontend.deadlines")

# Cancelled entries stay in the heap until their time (or a sweep): a sweep keeps them at
# most half of it, so that a long objective under load cannot grow it without bound.
SWEEP_MIN_CANCELLED = 1024


class Deadline:
    __slots__ = ("callback", "_owner")

    def __init__(self, owner: "Deadlines", callback: Callable[[], None]):
        self.callback: Optional[Callable[[], None]] = callback
        self._owner = owner

    def cancel(self) -> None:
        if self.callback is not None:
            self.callback = None
            self._owner._on_cancel()


class Deadlines:
    def __init__(self, loop):
        self._loop = loop
        self._heap: List[Tuple[float, int, Deadline]] = []
        self._order = itertools.count()      # equal times fire in the order they were set
        self._timer = None
        self._timer_at = math.inf
        self._cancelled = 0                  # entries in the heap whose callback is None

    def __len__(self) -> int:
        return len(self._heap) - self._cancelled

    def call_at(self, when: float, callback: Callable[[], None]) -> Deadline:
        """Call ``callback`` at ``when`` (monotonic seconds) unless cancelled first."""
        deadline = Deadline(self, callback)
        heapq.heappush(self._heap, (when, next(self._order), deadline))
        if when < self._timer_at:
            self._arm(when)
        return deadline

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, math.inf

    def _on_cancel(self) -> None:
        self._cancelled += 1
        if self._cancelled >= SWEEP_MIN_CANCELLED and 2 * self._cancelled > len(self._heap):
            # In place: a callback run by _fire may cancel, and _fire goes on with this list.
            self._heap[:] = [entry for entry in self._heap if entry[2].callback is not None]
            heapq.heapify(self._heap)
            self._cancelled = 0

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_later(max(0.0, when - time.monotonic()), self._fire)

    def _fire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        heap, now = self._heap, time.monotonic()
        while heap and (heap[0][0] <= now or heap[0][2].callback is None):
            deadline = heapq.heappop(heap)[2]
            callback, deadline.callback = deadline.callback, None
            if callback is None:
                self._cancelled -= 1
                continue
            try:
                callback()
            except Exception:        # one answer's bug must not keep the others waiting
                log.exception("answering a prediction at its deadline failed")
        if heap:
            self._arm(heap[0][0])
