"""The latency objectives of predictions in flight, on one event-loop timer (a real uvloop)."""
import asyncio
import time

from clipper import eventloop
from clipper.query_frontend.deadlines import SWEEP_MIN_CANCELLED, Deadlines


def run(scenario):
    """The scenario's result, run on the event loop the query frontend uses."""
    result = []

    async def main():
        result.append(await scenario())
    eventloop.run(main())
    return result[0]


def test_each_deadline_fires_at_its_time_in_time_order():
    async def scenario():
        deadlines = Deadlines(asyncio.get_running_loop())
        fired = []
        start = time.monotonic()
        for name, delay in (("late", 0.12), ("early", 0.04), ("middle", 0.08)):
            deadlines.call_at(start + delay, lambda name=name: fired.append((name, time.monotonic() - start)))
        await asyncio.sleep(0.3)
        deadlines.close()
        return fired
    fired = run(scenario)
    assert [name for name, _ in fired] == ["early", "middle", "late"]
    for (_, at), due in zip(fired, (0.04, 0.08, 0.12)):
        assert at >= due                  # never early; an answer at its objective, not before


def test_a_cancelled_deadline_never_fires_and_one_failing_callback_spares_the_rest():
    async def scenario():
        deadlines = Deadlines(asyncio.get_running_loop())
        fired = []
        now = time.monotonic()
        deadlines.call_at(now + 0.02, lambda: fired.append("cancelled")).cancel()
        deadlines.call_at(now + 0.02, lambda: 1 / 0)
        deadlines.call_at(now + 0.02, lambda: fired.append("kept"))
        await asyncio.sleep(0.1)
        remaining = len(deadlines)
        deadlines.close()
        return fired, remaining
    assert run(scenario) == (["kept"], 0)


def test_cancelled_deadlines_do_not_pile_up_under_a_long_objective():
    async def scenario():
        deadlines = Deadlines(asyncio.get_running_loop())
        now = time.monotonic()
        live = [deadlines.call_at(now + 3600, lambda: None) for _ in range(10)]
        for _ in range(20 * SWEEP_MIN_CANCELLED):       # answered long before their objective
            deadlines.call_at(now + 3600, lambda: None).cancel()
        size = len(deadlines._heap)
        deadlines.close()
        return len(live), size
    live, size = run(scenario)
    assert size <= 2 * SWEEP_MIN_CANCELLED + live


def test_an_earlier_deadline_set_later_still_fires_first():
    async def scenario():
        deadlines = Deadlines(asyncio.get_running_loop())
        fired = []
        now = time.monotonic()
        deadlines.call_at(now + 5.0, lambda: fired.append("long objective"))
        deadlines.call_at(now + 0.03, lambda: fired.append("short objective"))
        await asyncio.sleep(0.15)
        deadlines.close()
        return fired
    assert run(scenario) == ["short objective"]


def test_a_sweep_from_a_firing_callback_keeps_later_deadlines_on_time():
    """A deadline's callback may cancel others (its answer's flush handles held requests,
    whose queries may settle) enough for a sweep, and set new ones: the sweep must not
    leave the firing loop on a heap the deadlines no longer live in."""
    async def scenario():
        deadlines = Deadlines(asyncio.get_running_loop())
        fired = []
        now = time.monotonic()
        deadlines.call_at(now + 3600, lambda: fired.append("long objective"))
        answered_early = [deadlines.call_at(now + 3600, lambda: None) for _ in range(2 * SWEEP_MIN_CANCELLED)]

        def first():
            for deadline in answered_early:
                deadline.cancel()
            deadlines.call_at(time.monotonic() + 0.03, lambda: fired.append("set while firing"))
        deadlines.call_at(now + 0.01, first)
        await asyncio.sleep(0.3)
        pending = len(deadlines)
        deadlines.close()
        return fired, pending
    assert run(scenario) == (["set while firing"], 1)
