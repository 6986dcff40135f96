"""Queues, replicas and batches: which queries go to which model container, and when.

One queue per model version, ordered by deadline. Replicas pull: an idle replica takes
every queued query up to its batch limit, so it has one batch in flight at a time and the
least recently used idle replica goes first (round robin at low load). The batch limit is
AIMD, as in the Clipper paper rather than Clipper 0.4: +1 after a full batch answered
within its objective, -10% after a late one; batches are never padded with copies.
Queries past their deadline are never sent; an identical query that shares a queued
evaluation extends its deadline to its own. A replica that disappears gives its batch back
to the queue; with no replica connected, a version accepts no new query (the caller answers
at once, as Clipper does). No I/O here: sending is a callback.
"""
import heapq
import itertools
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, Hashable, List, Optional, Sequence

from clipper.datatypes import InputType
from clipper.redis_schema import ModelId
from clipper.rpc.codec import ERROR_OUTPUT_PREFIX

log = logging.getLogger("clipper.query_frontend.dispatch")

MAX_BATCH_SIZE = 1024
# A batch should take at most this share of the tightest latency objective in it, leaving
# the rest for the wait behind the batch ahead of it.
BATCH_LATENCY_SHARE = 0.5
BACKOFF_FACTOR = 0.9
# A query whose replica is lost while computing it is tried again; one that was with this
# many lost replicas is tried no more: its input may be what kills them.
MAX_LOST_REPLICAS = 2


class DeadlineExpired(Exception):
    """The query's latency objective passed before a replica could take it."""


class QueueFull(Exception):
    """Not queued: as many inputs as max_queued_inputs wait for the version's replicas."""


class ModelError(Exception):
    """The model raised, or its container answered with the wrong number of outputs."""


class ReplicaLost(Exception):
    """MAX_LOST_REPLICAS replicas were lost while computing the query."""


class Task:
    """One evaluation of one input. It settles once, with an output or an error, and calls
    whoever waits for it right then: a reply's callbacks write the answers in the same turn
    of the event loop (an asyncio future would schedule them for the next one)."""
    __slots__ = ("input", "deadline", "slo", "arrived", "queued", "lost_replicas", "done", "output",
                 "error", "_callbacks")

    def __init__(self, input: bytes, deadline: float, slo: float):
        self.input = input
        self.deadline = deadline   # monotonic time; the latest deadline of the queries waiting for it
        self.slo = slo             # seconds
        self.arrived = deadline - slo     # when its first query arrived
        self.queued = False        # waiting in its model's queue (not in a batch)
        self.lost_replicas = 0     # lost while computing it (they exited or fell silent)
        self.done = False
        self.output: Optional[bytes] = None
        self.error: Optional[Exception] = None
        self._callbacks: Optional[List[Callable[["Task"], None]]] = []

    def add_done_callback(self, callback: Callable[["Task"], None]) -> None:
        if self.done:
            callback(self)
        else:
            self._callbacks.append(callback)

    def settle(self, output: Optional[bytes] = None, error: Optional[Exception] = None) -> None:
        if self.done:
            return
        self.done, self.output, self.error = True, output, error
        callbacks, self._callbacks = self._callbacks, None     # no more are added once done
        for callback in callbacks:
            try:
                callback(self)
            except Exception:       # one waiter's bug must not keep the answer from the others
                log.exception("a callback of a settled query failed")


class BatchSizer:
    """AIMD batch limit of one replica; fixed when the model was deployed with a batch size."""

    def __init__(self, fixed: Optional[int] = None):
        self.fixed = fixed if fixed and fixed > 0 else None
        self._limit = 1

    @property
    def limit(self) -> int:
        return self.fixed or self._limit

    def on_reply(self, batch_size: int, latency: float, objective: float) -> None:
        if self.fixed:
            return
        if latency > objective:
            self._limit = max(1, int(self._limit * BACKOFF_FACTOR))
        elif batch_size >= self._limit:
            self._limit = min(MAX_BATCH_SIZE, self._limit + 1)


@dataclass(eq=False)
class Replica:
    identity: Hashable         # a ZeroMQ routing id, or the replica's stream connection
    model_id: ModelId
    replica_id: int
    input_type: InputType
    sizer: BatchSizer
    last_seen: float
    batch: Optional["Batch"] = None


@dataclass(eq=False)
class Batch:
    msg_id: int
    replica: Replica
    tasks: List[Task]
    sent_at: float


@dataclass(eq=False)
class ModelQueue:
    model_id: ModelId
    batch_size: Optional[int] = None
    tasks: list = field(default_factory=list)                 # heap of (deadline, seq, Task)
    idle: Deque[Replica] = field(default_factory=deque)
    replicas: Dict[Hashable, Replica] = field(default_factory=dict)

    def put(self, task: Task, seq: int) -> None:
        task.queued = True
        heapq.heappush(self.tasks, (task.deadline, seq, task))

    def take(self, limit: int, now: float) -> List[Task]:
        batch = []
        while self.tasks and len(batch) < limit:
            deadline, _, task = heapq.heappop(self.tasks)
            if task.done or deadline != task.deadline:
                continue          # nobody waits for it any more, or queued again with a later deadline
            task.queued = False
            if deadline <= now:
                task.settle(error=DeadlineExpired())
                continue
            batch.append(task)
        return batch


SendBatch = Callable[[Replica, "Batch"], bool]


class Dispatcher:
    def __init__(self, send: SendBatch, clock: Callable[[], float],
                 on_batch: Optional[Callable[[Batch, float], None]] = None):
        self._send = send
        self._clock = clock
        self._on_batch = on_batch or (lambda batch, latency: None)
        self.queues: Dict[ModelId, ModelQueue] = {}        # created by the first replica
        self.batch_sizes: Dict[ModelId, Optional[int]] = {}  # as registered; None = adaptive
        self.in_flight: Dict[int, Batch] = {}
        self._msg_ids = itertools.count()
        self._seq = itertools.count()

    # ---- queries ----
    def accepts(self, model_id: ModelId) -> bool:
        """True while some replica of this version is connected."""
        queue = self.queues.get(model_id)
        return queue is not None and bool(queue.replicas)

    def batch_age(self, replica: Replica) -> float:
        """Seconds since the replica's batch in flight was sent; 0 when it has none."""
        return self._clock() - replica.batch.sent_at if replica.batch is not None else 0.0

    def queued(self, model_id: ModelId) -> int:
        """Inputs waiting for this version's replicas (counting entries of tasks since
        answered or requeued until they are taken: at most an overestimate)."""
        queue = self.queues.get(model_id)
        return len(queue.tasks) if queue is not None else 0

    def submit(self, model_id: ModelId, task: Task) -> None:
        queue = self.queues[model_id]
        queue.put(task, next(self._seq))
        self._dispatch(queue)

    def extend_deadline(self, model_id: ModelId, task: Task, deadline: float) -> None:
        """Another query waits for ``task`` until ``deadline``: keep it that long."""
        if deadline <= task.deadline:
            return
        task.deadline = deadline
        queue = self.queues.get(model_id)
        if task.queued and queue is not None:
            queue.put(task, next(self._seq))     # the entry with the old deadline is skipped

    # ---- replicas ----
    def add_replica(self, replica: Replica) -> None:
        queue = self.queues.get(replica.model_id)
        if queue is None:
            queue = self.queues[replica.model_id] = ModelQueue(
                replica.model_id, self.batch_sizes.get(replica.model_id))
        replica.sizer = BatchSizer(queue.batch_size)
        queue.replicas[replica.identity] = replica
        queue.idle.append(replica)
        self._dispatch(queue)

    def remove_replica(self, replica: Replica) -> None:
        """Forget a replica; its batch in flight goes back to the queue."""
        queue = self.queues.get(replica.model_id)
        if queue and self._forget(queue, replica):
            self._dispatch(queue)

    def _forget(self, queue: ModelQueue, replica: Replica) -> bool:
        if queue.replicas.pop(replica.identity, None) is None:
            return False
        if replica in queue.idle:
            queue.idle.remove(replica)
        batch, replica.batch = replica.batch, None
        if batch:
            self.in_flight.pop(batch.msg_id, None)
            for task in batch.tasks:
                task.lost_replicas += 1
                if task.lost_replicas >= MAX_LOST_REPLICAS:
                    task.settle(error=ReplicaLost())
            self._requeue(queue, [task for task in batch.tasks if not task.done])
        return True

    def _requeue(self, queue: ModelQueue, tasks: List[Task]) -> None:
        for task in tasks:
            queue.put(task, next(self._seq))

    def set_batch_size(self, model_id: ModelId, batch_size: Optional[int]) -> None:
        self.batch_sizes[model_id] = batch_size
        queue = self.queues.get(model_id)
        if queue is not None and queue.batch_size != batch_size:
            queue.batch_size = batch_size
            for replica in queue.replicas.values():
                replica.sizer = BatchSizer(batch_size)

    # ---- replies ----
    def on_response(self, identity: Hashable, msg_id: int, outputs: Sequence[bytes]) -> None:
        batch = self.in_flight.get(msg_id)
        if batch is None or batch.replica.identity != identity:
            log.debug("dropping a reply to unknown batch %d", msg_id)
            return
        del self.in_flight[msg_id]
        replica = batch.replica
        replica.batch = None
        latency = self._clock() - batch.sent_at
        objective = min(task.slo for task in batch.tasks) * BATCH_LATENCY_SHARE
        replica.sizer.on_reply(len(batch.tasks), latency, objective)
        self._on_batch(batch, latency)
        if len(outputs) != len(batch.tasks):
            error = ModelError(f"the model returned {len(outputs)} outputs for {len(batch.tasks)} inputs")
            for task in batch.tasks:
                task.settle(error=error)
        else:
            for task, output in zip(batch.tasks, outputs):
                if output.startswith(ERROR_OUTPUT_PREFIX):
                    task.settle(error=ModelError(
                        output[len(ERROR_OUTPUT_PREFIX):].decode("utf-8", "replace")))
                else:
                    task.settle(output)
        queue = self.queues.get(replica.model_id)
        if queue and replica.identity in queue.replicas:
            queue.idle.append(replica)
            self._dispatch(queue)

    def expire(self) -> None:
        """Drop queued queries whose deadline passed (nobody waits for them any more), and
        the queues of versions whose replicas all left once they hold no query: a peer on
        the RPC port that registers under ever new names must leave nothing behind."""
        now = self._clock()
        for model_id, queue in list(self.queues.items()):
            if queue.tasks and queue.tasks[0][0] <= now:
                live = []
                for entry in queue.tasks:
                    deadline, _, task = entry
                    if task.done or deadline != task.deadline:
                        continue
                    if deadline > now:
                        live.append(entry)
                    else:
                        task.queued = False
                        task.settle(error=DeadlineExpired())
                heapq.heapify(live)
                queue.tasks = live
            if not queue.replicas and not queue.tasks:
                del self.queues[model_id]

    # ---- internals ----
    def _dispatch(self, queue: ModelQueue) -> None:
        while queue.tasks and queue.idle:
            replica = queue.idle.popleft()
            tasks = queue.take(replica.sizer.limit, self._clock())
            if not tasks:
                queue.idle.appendleft(replica)
                return
            batch = Batch(next(self._msg_ids) & 0xFFFFFFFF, replica, tasks, self._clock())
            if not self._send(replica, batch):
                log.info("replica %s of %s:%s is unreachable; dropping it",
                         replica.replica_id, *replica.model_id)
                self._forget(queue, replica)
                self._requeue(queue, tasks)     # never computed; the next replica tries
                continue
            replica.batch = batch
            self.in_flight[batch.msg_id] = batch

