"""Prediction cache: bounded in bytes, keyed by model, version and the input itself.

Clipper kept only a 64-bit hash of the input, so two inputs with the same hash shared an
answer; we keep the input bytes in the key and compare them. Identical queries in flight
share one evaluation (a dispatch Task, whose deadline each of them may extend); an
evaluation that fails or expires leaves nothing behind. What is kept is the output as the
answer embeds it (``responses.sniff_output``), so a hit re-encodes nothing.

A request body whose every input was answered from the cache is remembered too, with the
outputs, so that the same body again is answered without parsing it. Such an entry is
valid only for the cluster view it was made in (``generation``): any change to
applications, links or versions makes it stale. Both kinds of entries share the bound;
eviction is least recently used. A model version that is removed (and perhaps registered
again under the same version, with another model) takes its outputs with it.
"""
from collections import OrderedDict
from typing import Any, Dict, Hashable, List, Optional, Tuple, Union

from clipper.query_frontend.dispatch import Task
from clipper.redis_schema import ModelId
from clipper.rest.responses import sniff_output

# Per-entry bookkeeping (key and value tuples, the ordered dict's slot and link, the bytes
# objects' headers), counted against the bound: about 300 bytes measured with tracemalloc.
ENTRY_OVERHEAD = 320


class RememberedBody:
    """The answer to a request body whose inputs were all cached, in one cluster view."""
    __slots__ = ("generation", "app", "model_id", "outputs", "is_batch")

    def __init__(self, generation: int, app: Any, model_id: ModelId, outputs: List[bytes], is_batch: bool):
        self.generation = generation
        self.app = app
        self.model_id = model_id
        self.outputs = outputs
        self.is_batch = is_batch


class PredictionCache:
    def __init__(self, capacity_bytes: int):
        self.capacity = capacity_bytes
        self.size = 0
        self.counts_by_model: Dict[ModelId, List[int]] = {}     # [lookups, hits] of each version
        self._forgotten_counts = [0, 0]       # those of versions removed since
        # key -> (output JSON or RememberedBody, cost in bytes)
        self._done: "OrderedDict[Hashable, Tuple[Union[bytes, RememberedBody], int]]" = OrderedDict()
        self._pending: Dict[Hashable, Task] = {}
        self.enabled = capacity_bytes > 0    # an attribute, not a property: read per query

    @property
    def lookups(self) -> int:
        return self._forgotten_counts[0] + sum(counts[0] for counts in self.counts_by_model.values())

    @property
    def hits(self) -> int:
        return self._forgotten_counts[1] + sum(counts[1] for counts in self.counts_by_model.values())

    def counts_for(self, model_id: ModelId) -> List[int]:
        """The [lookups, hits] of a model version, for its cache_hit_ratio: found once per
        request, counted per input."""
        counts = self.counts_by_model.get(model_id)
        if counts is None:
            counts = self.counts_by_model[model_id] = [0, 0]
        return counts

    def lookup(self, key: Tuple[str, str, bytes], counts: Optional[List[int]] = None) -> Optional[Union[bytes, Task]]:
        """A finished output (as JSON), the evaluation of an identical query in flight, or
        None. ``key``: the model's name and version, and the input; ``counts``: the
        version's (counts_for), if the caller has them."""
        if not self.enabled:
            return None
        if counts is None:
            counts = self.counts_for(key[:2])
        counts[0] += 1
        entry = self._done.get(key)
        if entry is not None:
            self._done.move_to_end(key)
            counts[1] += 1
            return entry[0]
        pending = self._pending.get(key)
        if pending is None or pending.done:   # a finished one is collected next
            return None
        counts[1] += 1
        return pending

    def track(self, key: Tuple[str, str, bytes], task: Task) -> None:
        """Share ``task`` with identical queries; keep its output once it succeeds."""
        if not self.enabled:
            return
        self._pending[key] = task
        task.add_done_callback(lambda done: self._finish(key, done))

    def lookup_body(self, app_name: str, body: bytes, generation: int) -> Optional[RememberedBody]:
        """The remembered answer to ``body`` sent to ``app_name``, if made in ``generation``."""
        if not self.enabled:
            return None
        key = (None, app_name, body)
        entry = self._done.get(key)
        if entry is None:
            return None
        remembered = entry[0]
        if remembered.generation != generation:
            self._discard(key)
            return None
        self._done.move_to_end(key)
        count = len(remembered.outputs)
        counts = self.counts_for(remembered.model_id)
        counts[0] += count
        counts[1] += count
        return remembered

    def remember_body(self, app_name: str, body: bytes, remembered: RememberedBody) -> None:
        if self.enabled:
            self._keep((None, app_name, body), remembered,
                       len(body) + sum(map(len, remembered.outputs)) + ENTRY_OVERHEAD)

    def forget_all(self) -> None:
        self._done.clear()
        self._pending.clear()
        self.size = 0

    def forget_model(self, model_id: Tuple[str, str]) -> None:
        """Drop every output of a model version, and what its evaluations in flight would
        bring. One pass over the cache: this happens when a version changes, not per query."""
        def of_model(key) -> bool:
            return key[0] == model_id[0] and key[1] == model_id[1]
        for key in [key for key in self._done if of_model(key)]:
            self._discard(key)
        for key in [key for key in self._pending if of_model(key)]:
            del self._pending[key]
        forgotten = self.counts_by_model.pop(model_id, [0, 0])
        self._forgotten_counts = [total + part for total, part in zip(self._forgotten_counts, forgotten)]

    def _finish(self, key, task: Task) -> None:
        if self._pending.get(key) is not task:
            return                        # forgotten while in flight (forget_model)
        del self._pending[key]
        if task.error is None:
            # A copy: orjson's result holds a 4 KiB buffer whatever its length, and a cache
            # of 32 MiB of small outputs took 720 MB.
            output = bytes(memoryview(sniff_output(task.output)))
            self._keep(key, output, len(key[2]) + len(output) + ENTRY_OVERHEAD)

    def _keep(self, key, value, cost: int) -> None:
        if cost > self.capacity or key in self._done:
            return
        self._done[key] = (value, cost)
        self.size += cost
        while self.size > self.capacity:
            _, (_, old_cost) = self._done.popitem(last=False)
            self.size -= old_cost

    def _discard(self, key) -> None:
        _, cost = self._done.pop(key)
        self.size -= cost
