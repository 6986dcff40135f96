"""The whole cluster's metrics when several query frontend workers share the query port.

The kernel hands each connection to any worker, so a worker's own counts are a part of the
cluster's. Each worker publishes a snapshot of its metrics to Redis every second and keeps
the others' latest; /metrics (and the Prometheus port, served by worker 0) report its live
metrics merged with those. With one worker none of this runs, and the prediction path
never touches Redis either way.
"""
import asyncio
import logging
from typing import Callable, List

import orjson

from clipper import redis_schema as schema
from clipper.query_frontend.metrics import MetricSet
from clipper.store import Store

log = logging.getLogger("clipper.query_frontend.metrics")

PUBLISH_SECONDS = 1.0
# A worker that stopped for good drops out of the totals after this long; a restarted one
# replaces its snapshot (its counts start again from zero, as one frontend's do on a restart).
SNAPSHOT_TTL_MILLIS = 5_000


class WorkerMetrics:
    """Reports as a MetricSet does (``report``, ``report_json``), for the whole cluster."""

    def __init__(self, local: MetricSet, store: Store, worker: int, workers: int,
                 refresh: Callable[[], None]):
        """``refresh()`` brings ``local`` up to date before it is published."""
        self.local = local
        self.redis = store.client(schema.WORKER_METRICS_DB)
        self.worker = worker
        self.peer_keys = [schema.worker_metrics_key(k) for k in range(workers) if k != worker]
        self.refresh = refresh
        self.peers: List[dict] = []      # the other workers' latest snapshots

    def merged(self) -> MetricSet:
        return MetricSet.merged([self.local.snapshot(), *self.peers])

    def report(self) -> dict:
        return self.merged().report()

    def report_json(self) -> bytes:
        return self.merged().report_json()

    async def run(self) -> None:
        key = schema.worker_metrics_key(self.worker)
        while True:
            try:
                self.refresh()
                await self.redis.set(key, orjson.dumps(self.local.snapshot()).decode(),
                                     px=SNAPSHOT_TTL_MILLIS)
                found = await self.redis.mget(self.peer_keys)
                self.peers = [orjson.loads(value) for value in found if value]
            except Exception as error:   # Redis away: report what we have, try again
                log.warning("could not exchange metrics with the other workers: %s", error)
            await asyncio.sleep(PUBLISH_SECONDS)

