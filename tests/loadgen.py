"""A small closed-loop load generator for tests: N client threads, each query distinct."""
import itertools
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import List, Optional

import requests


@dataclass
class Result:
    sent_at: float
    elapsed: float
    status: Optional[int]         # None: no HTTP answer (connection refused, timeout)
    default: Optional[bool]


def run_load(conn, app: str, clients: int, seconds: float, timeout: float = 10.0) -> List[Result]:
    """Predictions back to back from ``clients`` threads for ``seconds``; never cache hits."""
    url = f"http://{conn.get_query_addr()}/{app}/predict"
    stop = time.monotonic() + seconds
    numbers = itertools.count()
    lock = threading.Lock()
    results: List[Result] = []

    def client():
        session = requests.Session()
        while time.monotonic() < stop:
            with lock:
                n = next(numbers)
            started = time.monotonic()
            try:
                # The random part keeps inputs distinct across calls of run_load.
                response = session.post(url, json={"input": [float(n), random.random()]},
                                        timeout=timeout)
                status, default = response.status_code, response.json().get("default")
            except (requests.RequestException, ValueError):
                status, default = None, None
            result = Result(started, time.monotonic() - started, status, default)
            with lock:
                results.append(result)

    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    return results


def assert_all_answered_within(results: List[Result], seconds: float, fault_at: float) -> float:
    """Every request answered 200 within ``seconds``; the slowest time, for the report. A
    failure names the slowest requests by when they were sent relative to ``fault_at``."""
    assert results, "no request was sent"
    failed = [r for r in results if r.status != 200]
    assert not failed, f"{len(failed)} of {len(results)} requests failed, statuses " \
                       f"{sorted({r.status for r in failed}, key=str)}"
    slowest = sorted(results, key=lambda r: r.elapsed, reverse=True)
    assert slowest[0].elapsed < seconds, (
        f"a request took {slowest[0].elapsed:.2f} s (limit {seconds:.2f} s); the slowest, as "
        f"(sent, seconds after the fault; took; default output): "
        f"{[(round(r.sent_at - fault_at, 3), round(r.elapsed, 3), r.default) for r in slowest[:8]]}")
    return slowest[0].elapsed
