"""AIMD batch sizes and the prediction cache, without sockets."""
import struct
import time
import tracemalloc

from clipper.query_frontend.cache import ENTRY_OVERHEAD, PredictionCache, RememberedBody
from clipper.query_frontend.dispatch import BatchSizer, Dispatcher, Replica, ReplicaLost, Task
from clipper.datatypes import InputType


def test_aimd_grows_by_one_on_full_timely_batches_and_backs_off_by_ten_percent():
    sizer = BatchSizer()
    for _ in range(20):
        sizer.on_reply(sizer.limit, latency=0.01, objective=0.05)
    assert sizer.limit == 21
    sizer.on_reply(5, latency=0.01, objective=0.05)          # not full: no evidence, no change
    assert sizer.limit == 21
    sizer.on_reply(21, latency=0.08, objective=0.05)
    assert sizer.limit == 18
    for _ in range(50):
        sizer.on_reply(sizer.limit, latency=1.0, objective=0.05)
    assert sizer.limit == 1


def test_fixed_batch_size_never_moves():
    sizer = BatchSizer(fixed=8)
    sizer.on_reply(8, latency=10.0, objective=0.05)
    assert sizer.limit == 8


def evaluation(deadline=10.0):
    """An evaluation in flight, as the query frontend tracks it."""
    return Task(b"input", deadline, 1.0)


def test_cache_shares_in_flight_and_keeps_only_successes():
    cache = PredictionCache(10_000)
    key = ("m", "1", b"input")
    assert cache.lookup(key) is None
    pending = evaluation()
    cache.track(key, pending)
    assert cache.lookup(key) is pending                    # identical query in flight
    pending.settle(error=RuntimeError("model failed"))
    assert cache.lookup(key) is None                       # a failure is never shared
    assert cache.lookup(key) is None                       # failure left nothing behind
    pending = evaluation()
    cache.track(key, pending)
    pending.settle(b'"forty-two"')
    assert cache.lookup(key) == b'"forty-two"'             # kept as the answer embeds it
    other = evaluation()
    cache.track(("m", "1", b"other"), other)
    other.settle(b"not json")
    assert cache.lookup(("m", "1", b"other")) == b'"not json"'   # a string, as Clipper
    assert cache.lookup(("m", "2", b"input")) is None      # the version is part of the key
    # Each version's lookups and hits, for its cache_hit_ratio: 3 of version 1's 6 lookups hit.
    assert cache.counts_by_model == {("m", "1"): [6, 3], ("m", "2"): [1, 0]}
    cache.forget_model(("m", "2"))
    assert ("m", "2") not in cache.counts_by_model


def test_the_memory_a_full_cache_holds_is_near_its_capacity():
    """Its bound was counted in bytes of output, but each small output kept a 4 KiB buffer
    (orjson's): a cache of 32 MiB took 720 MB of a review's query frontend."""
    capacity = 2_000_000
    cache = PredictionCache(capacity)
    tracemalloc.start()
    try:
        for i in range(20_000):
            key = ("m", "1", struct.pack("<d", i))
            task = evaluation()
            cache.track(key, task)
            task.settle(b"%d.0" % i)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert cache.size <= capacity
    assert held < 1.25 * capacity, f"{held} bytes held for a cache of {capacity}"   # the table's slack


def test_cache_is_bounded_in_bytes_and_evicts_least_recently_used():
    entry = ENTRY_OVERHEAD + 10 + 2
    cache = PredictionCache(3 * entry)
    for i in range(3):
        pending = evaluation()
        cache.track(("m", "1", b"%010d" % i), pending)
        pending.settle(b"%d" % (10 + i))              # JSON numbers: kept as they are
    assert cache.lookup(("m", "1", b"%010d" % 0)) == b"10"   # 0 is now the most recent
    pending = evaluation()
    cache.track(("m", "1", b"%010d" % 3), pending)
    pending.settle(b"13")
    assert cache.size <= cache.capacity
    assert cache.lookup(("m", "1", b"%010d" % 1)) is None     # least recently used went
    assert cache.lookup(("m", "1", b"%010d" % 0)) == b"10"


def test_a_forgotten_model_version_leaves_no_output_behind():
    cache = PredictionCache(10_000)
    kept, other, in_flight = evaluation(), evaluation(), evaluation()
    cache.track(("m", "1", b"input"), kept)
    cache.track(("m", "2", b"input"), other)
    kept.settle(b"1")
    other.settle(b"2")
    cache.track(("m", "1", b"later"), in_flight)
    cache.forget_model(("m", "1"))
    in_flight.settle(b"old")                                 # answered by the removed version
    assert cache.lookup(("m", "1", b"input")) is None
    assert cache.lookup(("m", "1", b"later")) is None
    assert cache.lookup(("m", "2", b"input")) == b"2"        # other versions keep theirs
    assert cache.size == ENTRY_OVERHEAD + len(b"input") + 1
    cache.forget_all()                                       # after Redis was away: anything may have changed
    assert cache.lookup(("m", "2", b"input")) is None and cache.size == 0


def test_disabled_cache_stores_nothing():
    cache = PredictionCache(0)
    assert not cache.enabled and cache.lookup(("m", "1", b"x")) is None
    cache.remember_body("app", b"{}", RememberedBody(1, None, ("m", "1"), [b"1"], False))
    assert cache.lookup_body("app", b"{}", 1) is None


def test_a_remembered_body_answers_only_its_app_in_its_generation_and_counts_as_hits():
    cache = PredictionCache(10_000)
    body = b'{"input": [1.0, 2.0]}'
    cache.remember_body("app", body, RememberedBody(7, "the app", ("m", "1"), [b"3.0", b"4.0"], True))
    remembered = cache.lookup_body("app", body, 7)
    assert (remembered.app, remembered.outputs, remembered.is_batch) == ("the app", [b"3.0", b"4.0"], True)
    assert (cache.lookups, cache.hits) == (2, 2)             # one per input, as a parsed hit
    assert cache.counts_by_model == {("m", "1"): [2, 2]}     # and for its model version
    assert cache.lookup_body("other-app", body, 7) is None   # the app is part of the key
    assert cache.lookup_body("app", body + b" ", 7) is None  # so is every byte of the body
    assert cache.lookup_body("app", body, 8) is None         # the cluster view changed
    assert cache.lookup_body("app", body, 7) is None         # ... and the stale entry is gone
    assert cache.size == 0


def test_remembered_bodies_share_the_bound_with_outputs():
    body = b"x" * 100
    cost = len(body) + len(b"0") + len(b"1") + ENTRY_OVERHEAD     # body, output, bookkeeping
    cache = PredictionCache(2 * cost)
    for i in range(3):
        cache.remember_body("app", body + b"%d" % i, RememberedBody(1, None, ("m", "1"), [b"1"], False))
    assert cache.size <= cache.capacity
    assert cache.lookup_body("app", body + b"0", 1) is None     # least recently used went
    assert cache.lookup_body("app", body + b"1", 1) is not None
    assert cache.lookup_body("app", body + b"2", 1) is not None


def test_dispatcher_never_sends_expired_queries_and_requeues_a_lost_batch():
    sent = []
    dispatcher = Dispatcher(lambda replica, batch: sent.append((replica, batch)) or True, time.monotonic)
    model = ("m", "1")
    first = Replica(b"a", model, 0, InputType.DOUBLES, BatchSizer(), time.monotonic())
    dispatcher.add_replica(first)
    expired = Task(b"old", time.monotonic() - 1, 1.0)
    live = Task(b"new", time.monotonic() + 5, 5.0)
    dispatcher.submit(model, expired)
    dispatcher.submit(model, live)
    assert [t.input for t in sent[-1][1].tasks] == [b"new"]
    assert expired.done and isinstance(expired.error, Exception)
    second = Replica(b"b", model, 1, InputType.DOUBLES, BatchSizer(), time.monotonic())
    dispatcher.add_replica(second)
    dispatcher.remove_replica(first)                        # died with "new" in flight
    assert sent[-1][0] is second and [t.input for t in sent[-1][1].tasks] == [b"new"]
    assert live.lost_replicas == 1, "its default output would not say that its replica was lost"
    dispatcher.on_response(b"b", sent[-1][1].msg_id, [b"7"])
    assert live.output == b"7"


def test_many_unreachable_replicas_are_dropped_in_turn_and_the_batch_reaches_a_live_one():
    """Each failed send drops its replica and hands the batch to the next (a loop: a peer
    churning thousands of connections once made this a recursion that overflowed)."""
    sent = []
    model = ("m", "1")
    live = Replica(b"live", model, 0, InputType.DOUBLES, BatchSizer(), time.monotonic())
    dispatcher = Dispatcher(lambda replica, batch: replica is live and not sent.append(batch), time.monotonic)
    dead = [Replica(("dead", i), model, i + 1, InputType.DOUBLES, BatchSizer(), time.monotonic())
            for i in range(3000)]
    for replica in dead + [live]:      # the dead are idle first in line
        dispatcher.add_replica(replica)
    task = Task(b"x", time.monotonic() + 5, 5.0)
    dispatcher.submit(model, task)
    assert [t.input for t in sent[-1].tasks] == [b"x"]
    assert not task.lost_replicas, "no replica computed it before the live one"
    assert list(dispatcher.queues[model].replicas) == [b"live"]
    assert not dispatcher.in_flight.keys() - {sent[-1].msg_id}


def test_a_query_that_loses_two_replicas_is_not_tried_on_a_third():
    """Its input may be what kills them (a crash in the model's native code)."""
    sent = []
    dispatcher = Dispatcher(lambda replica, batch: sent.append(batch) or True, time.monotonic)
    model = ("m", "1")
    replicas = [Replica(b"%d" % i, model, i, InputType.DOUBLES, BatchSizer(), time.monotonic()) for i in range(3)]
    for replica in replicas:
        dispatcher.add_replica(replica)
    lethal = Task(b"x", time.monotonic() + 5, 5.0)
    dispatcher.submit(model, lethal)
    dispatcher.remove_replica(sent[-1].replica)
    assert len(sent) == 2 and not lethal.done, "tried once more on another replica"
    dispatcher.remove_replica(sent[-1].replica)
    assert len(sent) == 2 and isinstance(lethal.error, ReplicaLost)
    assert not dispatcher.queues[model].tasks and not dispatcher.in_flight


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_a_shared_evaluation_lives_until_the_last_deadline_of_its_queries():
    clock, sent = FakeClock(), []
    dispatcher = Dispatcher(lambda replica, batch: sent.append(batch) or True, clock)
    model = ("m", "1")
    busy = Replica(b"a", model, 0, InputType.DOUBLES, BatchSizer(), 0.0)
    dispatcher.add_replica(busy)
    dispatcher.submit(model, Task(b"slow", 10.0, 10.0))
    shared = Task(b"x", 3.0, 3.0)     # first query: deadline 3 s
    dispatcher.submit(model, shared)
    clock.now = 2.5
    dispatcher.extend_deadline(model, shared, 5.5)          # an identical query at 2.5 s
    dispatcher.extend_deadline(model, shared, 4.0)          # an earlier deadline changes nothing
    clock.now = 3.5
    dispatcher.expire()
    assert not shared.done, "expired at the first query's deadline"
    dispatcher.on_response(b"a", sent[0].msg_id, [b"1"])    # the replica is free at 3.5 s
    assert [t.input for t in sent[-1].tasks] == [b"x"]
    dispatcher.on_response(b"a", sent[-1].msg_id, [b"7"])
    assert shared.output == b"7"
    clock.now = 6.0
    dispatcher.expire()                                     # a stale queue entry is harmless


def test_a_version_whose_replicas_all_left_accepts_no_query():
    dispatcher = Dispatcher(lambda replica, batch: True, time.monotonic)
    model = ("m", "1")
    assert not dispatcher.accepts(model)
    replica = Replica(b"a", model, 0, InputType.DOUBLES, BatchSizer(), time.monotonic())
    dispatcher.add_replica(replica)
    assert dispatcher.accepts(model)
    dispatcher.remove_replica(replica)
    assert not dispatcher.accepts(model)


def test_a_settled_evaluation_calls_its_waiters_at_once_and_once(caplog):
    """The answer is written from the reply's own callback: no event-loop turn in between."""
    task, seen = Task(b"x", 10.0, 1.0), []
    task.add_done_callback(lambda done: seen.append(("first", done.output)))
    task.add_done_callback(lambda done: 1 / 0)                 # a waiter's bug
    task.add_done_callback(lambda done: seen.append(("third", done.output)))
    task.settle(b"7")
    assert seen == [("first", b"7"), ("third", b"7")]          # the bug stopped no other waiter
    assert "callback of a settled query failed" in caplog.text
    task.settle(b"8")                                          # settles once
    task.add_done_callback(lambda done: seen.append(("late", done.output)))
    assert seen[-1] == ("late", b"7") and task.output == b"7"
