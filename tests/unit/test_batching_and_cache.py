"""AIMD batch sizes and the prediction cache, without sockets."""
import asyncio


from clipper.query_frontend.cache import ENTRY_OVERHEAD, PredictionCache
from clipper.query_frontend.dispatch import BatchSizer, Dispatcher, Replica, Task
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


def run(coroutine):
    return asyncio.new_event_loop().run_until_complete(coroutine)


def test_cache_shares_in_flight_and_keeps_only_successes():
    async def scenario():
        loop = asyncio.get_running_loop()
        cache = PredictionCache(10_000)
        key = ("m", "1", b"input")
        assert cache.lookup(key) is None
        future = loop.create_future()
        cache.track(key, future)
        assert cache.lookup(key) is future                     # identical query in flight
        future.set_exception(RuntimeError("model failed"))
        await asyncio.sleep(0)
        assert cache.lookup(key) is None                       # failure left nothing behind
        future = loop.create_future()
        cache.track(key, future)
        future.set_result(b"42")
        await asyncio.sleep(0)
        assert cache.lookup(key) == b"42"
        assert cache.lookup(("m", "2", b"input")) is None      # the version is part of the key
    run(scenario())


def test_cache_is_bounded_in_bytes_and_evicts_least_recently_used():
    async def scenario():
        loop = asyncio.get_running_loop()
        entry = ENTRY_OVERHEAD + 10 + 2
        cache = PredictionCache(3 * entry)
        for i in range(3):
            future = loop.create_future()
            cache.track(("m", "1", b"%010d" % i), future)
            future.set_result(b"%02d" % i)
        await asyncio.sleep(0)
        assert cache.lookup(("m", "1", b"%010d" % 0)) == b"00"   # 0 is now the most recent
        future = loop.create_future()
        cache.track(("m", "1", b"%010d" % 3), future)
        future.set_result(b"03")
        await asyncio.sleep(0)
        assert cache.size <= cache.capacity
        assert cache.lookup(("m", "1", b"%010d" % 1)) is None     # least recently used went
        assert cache.lookup(("m", "1", b"%010d" % 0)) == b"00"
    run(scenario())


def test_disabled_cache_stores_nothing():
    cache = PredictionCache(0)
    assert not cache.enabled and cache.lookup(("m", "1", b"x")) is None


def test_dispatcher_never_sends_expired_queries_and_requeues_a_lost_batch():
    async def scenario():
        loop = asyncio.get_running_loop()
        sent = []
        dispatcher = Dispatcher(lambda replica, batch: sent.append((replica, batch)) or True, loop.time)
        model = ("m", "1")
        first = Replica(b"a", model, 0, InputType.DOUBLES, BatchSizer(), loop.time())
        dispatcher.add_replica(first)
        expired = Task(b"old", loop.time() - 1, 1.0, loop.create_future())
        live = Task(b"new", loop.time() + 5, 5.0, loop.create_future())
        dispatcher.submit(model, expired)
        dispatcher.submit(model, live)
        assert [t.input for t in sent[-1][1].tasks] == [b"new"]
        assert isinstance(expired.future.exception(), Exception)
        second = Replica(b"b", model, 1, InputType.DOUBLES, BatchSizer(), loop.time())
        dispatcher.add_replica(second)
        dispatcher.remove_replica(first)                        # died with "new" in flight
        assert sent[-1][0] is second and [t.input for t in sent[-1][1].tasks] == [b"new"]
        dispatcher.on_response(b"b", sent[-1][1].msg_id, [b"7"])
        assert live.future.result() == b"7"
    run(scenario())
