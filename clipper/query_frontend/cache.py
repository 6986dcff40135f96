"""Prediction cache: bounded in bytes, keyed by model, version and the input itself.

Clipper kept only a 64-bit hash of the input, so two inputs with the same hash shared an
answer; we keep the input bytes in the key and compare them. Identical queries in flight
share one evaluation (a dispatch Task, whose deadline each of them may extend); an
evaluation that fails or expires leaves nothing behind. What is kept is the output as the
answer embeds it (``responses.sniff_output``), so a hit re-encodes nothing.
Eviction is least recently used.
"""
from collections import OrderedDict
from typing import Dict, Hashable, Optional, Tuple, Union

from clipper.query_frontend.dispatch import Task
from clipper.rest.responses import sniff_output

# Rough per-entry bookkeeping (key tuple, dict slots, bytes headers), counted against the bound.
ENTRY_OVERHEAD = 200


class PredictionCache:
    def __init__(self, capacity_bytes: int):
        self.capacity = capacity_bytes
        self.size = 0
        self.lookups = 0
        self.hits = 0
        self._done: "OrderedDict[Hashable, bytes]" = OrderedDict()
        self._pending: Dict[Hashable, Task] = {}

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    def lookup(self, key: Tuple[str, str, bytes]) -> Optional[Union[bytes, Task]]:
        """A finished output (as JSON), the evaluation of an identical query in flight, or None."""
        if not self.enabled:
            return None
        self.lookups += 1
        output = self._done.get(key)
        if output is not None:
            self._done.move_to_end(key)
            self.hits += 1
            return output
        pending = self._pending.get(key)
        if pending is None or pending.done:   # a finished one is collected next
            return None
        self.hits += 1
        return pending

    def track(self, key: Tuple[str, str, bytes], task: Task) -> None:
        """Share ``task`` with identical queries; keep its output once it succeeds."""
        if not self.enabled:
            return
        self._pending[key] = task
        task.add_done_callback(lambda done: self._finish(key, done))

    def _finish(self, key, task: Task) -> None:
        if self._pending.get(key) is task:
            del self._pending[key]
        if task.error is not None:
            return
        output = sniff_output(task.output)
        cost = _cost(key, output)
        if cost > self.capacity or key in self._done:
            return
        self._done[key] = output
        self.size += cost
        while self.size > self.capacity:
            old_key, old_output = self._done.popitem(last=False)
            self.size -= _cost(old_key, old_output)


def _cost(key: Tuple[str, str, bytes], output: bytes) -> int:
    return len(key[2]) + len(output) + ENTRY_OVERHEAD
