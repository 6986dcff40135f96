"""The query frontend: REST predictions in, batches to model containers out.

Nothing on the prediction path touches Redis or blocks the event loop; the cluster view
is kept current in the background (state.py) and consulted in memory. HTTP is served by
http.py (llhttp through httptools); every handler error is rendered by ``render_error``.
"""
import asyncio
import contextlib
import functools
import gc
import itertools
import logging
import time
from collections import Counter
from typing import Dict, List, Optional, Tuple, Union

import orjson

from clipper import eventloop, openapi, server_runner
from clipper.config import Config
from clipper.datatypes import InputType
from clipper.errors import RequestError
from clipper.query_frontend import http, prometheus
from clipper.query_frontend.cache import PredictionCache, RememberedBody
from clipper.query_frontend.deadlines import Deadlines
from clipper.query_frontend.dispatch import Batch, Dispatcher, ModelError, QueueFull, Task
from clipper.query_frontend.metrics import METER_TICK_SECONDS, MetricSet
from clipper.query_frontend.rpc_server import RpcServer
from clipper.query_frontend.state import ClusterView, StateFollower
from clipper.query_frontend.worker_metrics import WorkerMetrics
from clipper.redis_schema import App, Container, Model, ModelId
from clipper.request_body import check_json_media_type
from clipper.rest import responses
from clipper.rest.inputs import (PredictRequest, SchemaError, load_json_object, parse_predict_body,
                                 parse_version, type_mismatch)
from clipper.store import REDIS_ERRORS, Store

log = logging.getLogger("clipper.query_frontend")

# Clipper's text, indentation included, but for uid's type: it read an integer, and said string.
UPDATE_SCHEMA = """
  {
   "uid" := int,
   "input" := [double] | [int] | [string] | [byte] | [float],
   "label" := double
  }
"""

Scheduled = Union[None, bytes, Task]   # no model / cached output (JSON) / an evaluation
# Inputs scheduled per turn of the event loop: a batch of thousands is scheduled in slices,
# so that the queries of other clients are served in between.
SCHEDULE_SLICE = 500
KEEPALIVE_TIMEOUT = 60.0     # idle keep-alive connections are closed after a minute
REPLICA_WAIT_SECONDS = 2.0   # how long a later worker waits for the listed replicas to register
# Redis starts beside the frontends: until it answers, retry this often, this long.
REDIS_START_RETRY_SECONDS = 0.01
REDIS_START_TIMEOUT_SECONDS = 30.0


class ReplicaRecorder:
    """Mirrors connected replicas into Redis (DB 3) in order, off the prediction path."""

    def __init__(self, store: Store):
        self.store = store
        self.live = {}
        self._writes: asyncio.Queue = asyncio.Queue()

    def added(self, container: Container) -> None:
        self.live[(container.model_name, container.model_version, container.replica_id)] = container
        self._writes.put_nowait(("add", container))

    def removed(self, container: Container) -> None:
        self.live.pop((container.model_name, container.model_version, container.replica_id), None)
        self._writes.put_nowait(("remove", container))

    def resync(self) -> None:
        self._writes.put_nowait(("resync", None))

    async def run(self) -> None:
        while True:
            op, container = await self._writes.get()
            try:
                if op == "add":
                    await self.store.add_container(container)
                elif op == "remove":
                    await self.store.delete_container(
                        container.model_name, container.model_version, container.replica_id)
                else:
                    await self.store.clear_containers()
                    for live in list(self.live.values()):
                        await self.store.add_container(live)
            except Exception as error:  # Redis away: the next reconnect resyncs everything
                log.warning("could not record replicas in Redis: %s", error)


class NoRecorder:
    """A later query frontend worker's recorder: worker 0 alone lists the replicas in Redis,
    so that the management API lists each once."""

    def added(self, container: Container) -> None:
        pass

    def removed(self, container: Container) -> None:
        pass

    def resync(self) -> None:
        pass


class QueryFrontend(http.Application):
    def __init__(self, config: Config):
        self.config = config
        self.store = Store(config.redis_url)
        self.is_first_worker = config.query_worker == 0
        self.replica_recorder = ReplicaRecorder(self.store) if self.is_first_worker else NoRecorder()
        self.rpc = RpcServer(config, self.replica_recorder)
        self.metrics = MetricSet()
        # What /metrics reports: this process's metrics, or with several workers the cluster's.
        self.reported_metrics = self.metrics if config.query_workers == 1 else WorkerMetrics(
            self.metrics, self.store, config.query_worker, config.query_workers, self._count_cache)
        self.cache = PredictionCache(config.cache_size)
        self.follower = StateFollower(self.store, self._on_model_change, self._on_app_change,
                                      self._on_redis_reconnect,
                                      deletes_marked_versions=self.is_first_worker)
        self.query_ids = itertools.count()
        self.dispatcher: Optional[Dispatcher] = None
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.deadlines: Optional[Deadlines] = None
        self._description = openapi.document("query")
        self._predictions = self.metrics.counter("internal:aggregate_num_predictions")
        self._throughput = self.metrics.meter("internal:aggregate_model_throughput")
        self._cache_lookups = self.metrics.counter("internal:prediction_cache_lookups")
        self._cache_hit_ratio = self.metrics.ratio("internal:prediction_cache_hit_ratio")
        self._queueing_delay = self.metrics.histogram("internal:rpc_request_queueing_delay", "microseconds")
        # The metrics each prediction updates, made when an application or a model version is
        # registered (reported from then on, at zero, as Clipper does) and found once per query.
        self._app_metrics: Dict[str, tuple] = {}
        self._model_metrics: Dict[ModelId, tuple] = {}

    # ---- lifecycle ----
    @contextlib.asynccontextmanager
    async def running(self):
        """Start the RPC server and the state follower; stop them after."""
        self.loop = asyncio.get_running_loop()
        self.deadlines = Deadlines(self.loop)
        # Queries are timed on the monotonic clock: uvloop's loop.time() counts whole
        # milliseconds, cached per loop turn, which made every latency 0 or 1000 us.
        self.dispatcher = Dispatcher(self.rpc.send_batch, time.monotonic, self._on_batch)
        self.rpc.attach(self.dispatcher)
        self.rpc.bind()
        await asyncio.wait_for(self._until_redis_answers(), timeout=REDIS_START_TIMEOUT_SECONDS)
        background = [self.rpc.run(), self.follower.run(), self._tick_meters()]
        if self.is_first_worker:
            await self.store.clear_containers()   # replicas of an earlier frontend must reconnect
            background.append(self.replica_recorder.run())
        if isinstance(self.reported_metrics, WorkerMetrics):
            background.append(self.reported_metrics.run())
        tasks = [asyncio.create_task(coro) for coro in background]
        await asyncio.wait_for(self.follower.wait_ready(), timeout=REDIS_START_TIMEOUT_SECONDS)
        if not self.is_first_worker:
            await self._wait_for_listed_replicas()
        prometheus = await self._serve_prometheus()
        try:
            yield
        finally:
            if prometheus is not None:
                await prometheus.stop()
                prometheus.app.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.deadlines.close()
            await self.store.close()

    async def _until_redis_answers(self) -> None:
        """Redis starts beside the frontends: until it answers, try again shortly."""
        while True:
            try:
                return await self.store.ping()
            except REDIS_ERRORS:
                await asyncio.sleep(REDIS_START_RETRY_SECONDS)

    async def _wait_for_listed_replicas(self) -> None:
        """Before a later worker serves (say, restarted after a crash), let the replicas that
        worker 0 lists register with it too, so that its first queries get the model's
        answers rather than the default; a replica that does not come within the bound does
        not hold the worker back."""
        wanted = Counter((c.model_name, c.model_version) for c in await self.store.containers())
        deadline = self.loop.time() + REPLICA_WAIT_SECONDS
        while self.loop.time() < deadline:
            connected = Counter(replica.model_id for replica in self.rpc.replicas.values())
            if all(connected[model_id] >= count for model_id, count in wanted.items()):
                return
            await asyncio.sleep(0.01)

    async def _serve_prometheus(self) -> Optional[http.Server]:
        if not self.config.metrics_port or not self.is_first_worker:
            return None
        limits = http.Limits(self.config.max_body_size, self.config.header_timeout,
                             self.config.body_timeout, KEEPALIVE_TIMEOUT)
        app = prometheus.PrometheusApp(self.reported_metrics, self.config.metrics_dir,
                                       f"{self.config.host}:{self.config.metrics_port}")
        return await http.Server(app, limits).start(self.config.host, self.config.metrics_port)

    def _on_model_change(self, model_id: ModelId, model: Optional[Model]) -> None:
        self.cache.forget_model(model_id)     # removed, or registered anew: its outputs are not ours
        if model is None:
            self.rpc.version_deleted(model_id)
            self._model_metrics.pop(model_id, None)
            self.metrics.remove_prefix("model:%s:%s:" % model_id)
            return
        input_type = _input_type_of(model)
        if input_type is not None:
            self.rpc.version_registered(model, input_type)
        self._model_metrics_of(model_id)
        if self.dispatcher is not None:
            self.dispatcher.set_batch_size(model_id, model.batch_size)

    def _on_redis_reconnect(self) -> None:
        self.replica_recorder.resync()
        # A version removed and registered again while we were away looks unchanged.
        self.cache.forget_all()

    def _on_app_change(self, name: str, app: Optional[App]) -> None:
        if app is not None:
            self._app_metrics_of(name)
        else:
            self._app_metrics.pop(name, None)
            self.metrics.remove_prefix(f"app:{name}:")

    def _app_metrics_of(self, name: str) -> tuple:
        metrics = self._app_metrics.get(name)
        if metrics is None:
            prefix = f"app:{name}:"
            metrics = self._app_metrics[name] = (
                self.metrics.histogram(prefix + "prediction_latency", "microseconds"),
                self.metrics.meter(prefix + "prediction_throughput"),
                self.metrics.counter(prefix + "num_predictions"),
                self.metrics.ratio(prefix + "default_prediction_ratio"))
        return metrics

    def _model_metrics_of(self, model_id: ModelId) -> tuple:
        metrics = self._model_metrics.get(model_id)
        if metrics is None:
            prefix = "model:%s:%s:" % model_id
            metrics = self._model_metrics[model_id] = (
                self.metrics.counter(prefix + "num_predictions"),
                self.metrics.meter(prefix + "prediction_throughput"),
                self.metrics.histogram(prefix + "batch_size", "queries"),
                self.metrics.histogram(prefix + "prediction_latency", "microseconds"),
                self.metrics.ratio(prefix + "cache_hit_ratio"))
        return metrics

    async def _tick_meters(self) -> None:
        while True:
            await asyncio.sleep(METER_TICK_SECONDS)
            self.metrics.tick()

    def _on_batch(self, batch: Batch, latency: float) -> None:
        size = len(batch.tasks)
        self._throughput.count += size
        # How long the batch's oldest query waited for a replica (Clipper timed its RPC send
        # queue; ours is the model's queue, since a batch is written as soon as it is made).
        self._queueing_delay.observe(int((batch.sent_at - min(task.arrived for task in batch.tasks)) * 1e6))
        metrics = self._model_metrics.get(batch.replica.model_id)
        if metrics is None:
            return          # a version no longer registered: its metrics went with it
        predictions, throughput, batch_sizes, latencies, _cache_hit_ratio = metrics
        predictions.count += size
        throughput.count += size
        batch_sizes.observe(size)
        latencies.observe(int(latency * 1e6), size)

    # ---- HTTP ----
    def handle(self, request: http.Request) -> http.Answer:
        route, app_name = _route(request.path)
        if route is None:
            raise RequestError(f"No route {request.method} {request.path}. Predictions are "
                               "POST /<application>/predict; metrics are GET /metrics.", 404, "Not found")
        handler = ROUTES[route].get(request.method)
        if handler is None:
            allowed = ", ".join(ROUTES[route])
            raise RequestError(f"{request.method} is not allowed on {request.path}: use {allowed}",
                               405, "Method not allowed", {"Allow": allowed})
        return getattr(self, handler)(request, app_name)

    def answered(self, response: http.Response) -> None:
        # At low load the same client asks again soon. Not after an error: a cheap bad
        # request must not buy the window's CPU.
        if response.status < 400:
            self.rpc.poll_if_light()

    def render_error(self, error: RequestError, request: Optional[http.Request]) -> http.Response:
        """The one place errors become answers: Clipper's {"error", "cause"} JSON, but plain
        text where Clipper answers plain text: a body /update cannot accept."""
        headers = b"".join(b"%s: %s\r\n" % (name.encode(), value.encode())
                           for name, value in error.headers.items())
        if (request is not None and error.status in PLAIN_TEXT_UPDATE_ERRORS
                and _route(request.path)[0] == UPDATE):
            return http.Response(error.status, error.message.encode(), b"text/plain; charset=utf-8", headers)
        return http.Response(error.status, responses.error(error.kind, error.message), headers=headers)

    def report_metrics(self, request: http.Request, _app_name=None) -> http.Response:
        self._count_cache()
        return http.Response(200, self.reported_metrics.report_json())

    def _count_cache(self) -> None:
        lookups = self._cache_lookups.count = self.cache.lookups      # a sum: taken once
        self._cache_hit_ratio.numerator, self._cache_hit_ratio.denominator = self.cache.hits, lookups
        for model_id, (lookups, hits) in self.cache.counts_by_model.items():
            metrics = self._model_metrics.get(model_id)
            if metrics is not None:
                metrics[4].numerator, metrics[4].denominator = hits, lookups

    def describe(self, request: http.Request, _app_name=None) -> http.Response:
        return http.Response(200, self._description)

    # ---- predictions ----
    def predict(self, request: http.Request, app_name: str) -> http.Answer:
        """Answered at once when the cluster view is current and the request small; else
        after a state barrier, or in slices so that a big batch never holds the loop long."""
        started = time.monotonic()
        check_json_media_type(request.headers.get(b"content-type"))
        view = self.follower.view if self.follower.settled.is_set() else None
        if view is None:
            return self._predict_later(request, app_name, started)
        generation = self.follower.generation
        if self.cache.enabled:
            remembered = self.cache.lookup_body(app_name, request.body, generation)
            if remembered is not None:     # the same body, answered from the cache before
                self._predictions.count += len(remembered.outputs)
                return self._render(remembered.app, remembered.outputs, remembered.is_batch, started)
        app = view.apps.get(app_name)
        if app is None:
            return self._predict_later(request, app_name, started)
        parsed = self._parse(request, app)
        model_id = _model_for(view, app, parsed.version, final=False)
        if model_id is _STALE or len(parsed.inputs) > SCHEDULE_SLICE:
            return self._predict_later(request, app_name, started, app, parsed)
        scheduled = self._schedule(model_id, parsed.inputs, started, app)
        if self.cache.enabled and all(type(outcome) is bytes for outcome in scheduled):
            self.cache.remember_body(app_name, request.body,
                                     RememberedBody(generation, app, model_id, scheduled, parsed.is_batch))
        return self._gather(app, scheduled, parsed.is_batch, started)

    async def _predict_later(self, request: http.Request, app_name: str, started: float,
                             app: Optional[App] = None, parsed: Optional[PredictRequest] = None):
        if app is None:
            app = await self._find_app(app_name)
            parsed = self._parse(request, app)
        model_id = await self._resolve_model(app, parsed.version)
        scheduled: List[Scheduled] = []
        for first in range(0, len(parsed.inputs), SCHEDULE_SLICE):
            if first:
                await asyncio.sleep(0)        # let other clients' requests in
            scheduled += self._schedule(model_id, parsed.inputs[first:first + SCHEDULE_SLICE], started, app)
        answer = self._gather(app, scheduled, parsed.is_batch, started)
        if isinstance(answer, http.Deferred):
            answer = await answer.wait()
        return answer

    def _parse(self, request: http.Request, app: App) -> PredictRequest:
        try:
            return parse_predict_body(request.body, InputType.parse(app.input_type), self.config.max_batch_size)
        except SchemaError:
            self._check_pinned_version(request.body, app)
            raise

    def _check_pinned_version(self, body: bytes, app: App) -> None:
        """Raise the error of a body's pinned version, if it has one. Clipper looked the version
        up before it read the inputs (query_frontend.hpp decode_and_handle_predict), so a version
        that does not exist is the answer even when the input is wrong too (an error path only)."""
        try:
            version = parse_version(orjson.loads(body)["version"])
        except (orjson.JSONDecodeError, TypeError, KeyError, SchemaError):
            return              # no pinned version, or its type error was already the answer
        if self.follower.view is not None:
            _model_for(self.follower.view, app, version, final=True)

    async def _find_app(self, name: str) -> App:
        app = (await self.follower.current_view()).apps.get(name)
        if app is None:
            await self.follower.sync()          # it may have been registered a moment ago
            app = self.follower.view.apps.get(name)
        if app is None:
            raise RequestError(f"No application named '{name}' is registered. Register it with "
                               "ClipperConnection.register_application.", 404, "Unknown application")
        return app

    async def _resolve_model(self, app: App, version: Optional[str]) -> Optional[ModelId]:
        model_id = _model_for(await self.follower.current_view(), app, version, final=False)
        if model_id is _STALE:
            await self.follower.sync()            # a link or version may be seconds old
            model_id = _model_for(self.follower.view, app, version, final=True)
        return model_id

    def _schedule(self, model_id: Optional[ModelId], inputs: List[bytes], started: float,
                  app: App) -> List[Scheduled]:
        slo = app.latency_slo_micros / 1e6
        counts = self.cache.counts_for(model_id) if self.cache.enabled and model_id is not None else None
        if model_id is not None:
            self._predictions.count += len(inputs)      # cache hits too, as Clipper counts
        return [self._schedule_one(model_id, item, started + slo, slo, counts) for item in inputs]

    def _schedule_one(self, model_id: Optional[ModelId], item: bytes, deadline: float,
                      slo: float, cache_counts: Optional[List[int]]) -> Scheduled:
        if model_id is None:
            return None
        caching = self.cache.enabled
        if caching:
            key = (model_id[0], model_id[1], item)
            cached = self.cache.lookup(key, cache_counts)
            if type(cached) is Task:       # an identical query in flight: wait for its answer
                self.dispatcher.extend_deadline(model_id, cached, deadline)
                return cached
            if cached is not None:
                return cached
        if not self.dispatcher.accepts(model_id):
            return None                    # no replica connected: the default, at once
        task = Task(item, deadline, slo)
        if self.dispatcher.queued(model_id) >= self.config.max_queued_inputs:
            task.settle(error=QueueFull())   # the default, at once: waiting inputs hold memory
            return task
        if caching:
            self.cache.track(key, task)
        self.dispatcher.submit(model_id, task)
        return task

    def _gather(self, app: App, scheduled: List[Scheduled], is_batch: bool,
                started: float) -> http.Answer:
        """The answer now if every output is known, else one written when the last output
        arrives or the objective passes, from the callback that settles it."""
        pending = [s for s in scheduled if type(s) is Task and not s.done]
        if not pending:
            return self._render(app, scheduled, is_batch, started)
        answer = http.Deferred()
        waiting = len(pending)

        def finish(_task=None):
            nonlocal waiting
            if _task is not None:
                waiting -= 1
                if waiting:
                    return
            if answer.response is None:        # not answered yet
                deadline.cancel()
                try:
                    response = self._render(app, scheduled, is_batch, started)
                except RequestError as error:
                    response = self.render_error(error, None)
                except Exception:              # a bug of ours: the client is still answered
                    log.exception("rendering the answer to a prediction failed")
                    response = self.render_error(RequestError("Internal server error", 500), None)
                answer.settle(response)

        objective_ends = started + app.latency_slo_micros / 1e6
        deadline = self.deadlines.call_at(objective_ends, finish)
        for task in pending:
            task.add_done_callback(finish)
        return answer

    def _render(self, app: App, scheduled: List[Scheduled], is_batch: bool, started: float) -> http.Response:
        bodies, defaults, failed, size = [], 0, False, 0
        limit = self.config.max_output_size if is_batch else 0    # one output: the RPC's frame limit
        for outcome in scheduled:
            body, is_default, failed = self._answer(app, outcome)
            bodies.append(body)
            defaults += is_default
            size += len(body)
            if 0 < limit < size:
                # A 50 KB batch of 10,000 inputs with a 64 KiB default output made a 656 MB
                # answer, 2 GB of memory and a 2 s stall of the event loop.
                raise RequestError(f"The answer to this batch would be larger than {limit} bytes "
                                   f"(max_output_size): send it in smaller batches", 413, "Answer too large")
        self._record_app(app, started, time.monotonic(), len(bodies), defaults)
        if is_batch:
            return http.Response(200, responses.batch(bodies))
        return http.Response(500 if failed else 200, bodies[0])

    def _answer(self, app: App, scheduled: Scheduled) -> Tuple[bytes, bool, bool]:
        """One prediction object, whether it is the default output, whether it is a model error."""
        query_id = next(self.query_ids)
        if scheduled is None:
            return self._default(app, query_id, responses.NO_CONNECTED_MODELS), True, False
        if type(scheduled) is bytes:       # from the cache, already JSON
            return responses.prediction(query_id, scheduled, False), False, False
        if scheduled.done and scheduled.error is None:
            return responses.prediction(query_id, responses.sniff_output(scheduled.output), False), False, False
        if isinstance(scheduled.error, ModelError):
            return responses.model_error(query_id, _output_json(app.default_output), str(scheduled.error)), True, True
        # Not answered within the objective (or expired in the queue, or ReplicaLost), or not queued.
        explanation = (responses.QUEUE_FULL if isinstance(scheduled.error, QueueFull) else
                       responses.REPLICA_LOST if scheduled.lost_replicas else responses.SLO_MISSED)
        return self._default(app, query_id, explanation), True, False

    @staticmethod
    def _default(app: App, query_id: int, explanation: str) -> bytes:
        return responses.prediction(query_id, _output_json(app.default_output), True, explanation)

    def _record_app(self, app: App, started: float, finished: float, count: int, defaults: int) -> None:
        metrics = self._app_metrics.get(app.name)
        if metrics is None:
            return          # removed while this query was answered: its metrics went with it
        latency, throughput, predictions, default_ratio = metrics
        latency.observe(int((finished - started) * 1e6), count)   # whole microseconds, as Clipper's
        throughput.count += count
        predictions.count += count
        default_ratio.numerator += defaults
        default_ratio.denominator += count

    async def update(self, request: http.Request, app_name: str) -> http.Response:
        """Feedback: checked like Clipper's, and, as with Clipper's only policy, a no-op."""
        check_json_media_type(request.headers.get(b"content-type"))
        app = await self._find_app(app_name)
        try:
            _check_feedback(request.body, InputType.parse(app.input_type))
        except SchemaError as error:
            raise SchemaError(error.reason, UPDATE_SCHEMA) from None
        next(self.query_ids)
        return http.Response(200, b"Feedback received? 1", b"text/plain; charset=utf-8")


def _input_type_of(model: Model) -> Optional[InputType]:
    """None for a type we cannot read (a hash written by hand): no replica is judged by it."""
    try:
        return InputType.parse(model.input_type)
    except ValueError:
        return None


@functools.lru_cache(maxsize=64)
def _output_json(default_output: str) -> bytes:
    """An app's default output as JSON, read once: a batch of 10,000 defaults of 64 KiB
    each read it 10,000 times, holding the event loop for seconds."""
    return responses.sniff_output(default_output.encode())


_INT64_MIN, _INT64_MAX = -(2 ** 63), 2 ** 63 - 1


def _check_feedback(body: bytes, input_type: InputType) -> None:
    """Check an /update body as Clipper's query frontend read it (decode_and_handle_update):
    uid, then input, then label. Its errors show /predict's schema, whose checks it reuses;
    ``update`` gives them its own."""
    # json_util.cpp's getters refuse a document that is not an object with this text.
    document = load_json_object(body, "Can only get key-value pair from an object (the body is {})")
    uid = _feedback_number(document, "uid")
    if type(uid) is float or not _INT64_MIN <= uid <= _INT64_MAX:     # json_util.cpp get_long
        raise SchemaError(f"PredictionData of type Number is not of type long (uid {uid!r}: a whole "
                          "number without a decimal point, from -2^63 to 2^63 - 1)")
    if "input" not in document:
        raise SchemaError("JSON object does not have required key: input")
    parse_predict_body(orjson.dumps({"input": document["input"]}), input_type)
    _feedback_number(document, "label")    # get_double; an integer label is accepted (README)


def _feedback_number(document: dict, key: str):
    """The number under ``key``, refused as json_util.cpp refuses a key that is not a number."""
    if key not in document:
        raise SchemaError(f"JSON object does not have required key: {key}")
    value = document[key]
    if type(value) not in (int, float):
        raise SchemaError(type_mismatch(key, "Number", value))
    return value


_STALE = object()     # the view may be behind: decide after a state barrier


def _model_for(view: ClusterView, app: App, version: Optional[str], final: bool):
    """The model version that answers ``app`` (None: no model, defaults), or _STALE when the
    view lacks something that may be moments old and ``final`` is False."""
    linked = view.links.get(app.name)
    if not linked:
        if not final:
            return _STALE
        if version is not None:
            raise RequestError(f"Application {app.name} has no linked model, so version "
                               f"{version} cannot be selected", kind="Query processing error")
        return None
    if version is None:
        return _current_model(view, linked, final)
    if len(linked) > 1:       # links a Clipper component wrote: the management API makes one
        raise RequestError(f"Too many models linked to application {app.name}", kind="Query processing error")
    model_name = linked[0]
    if not view.has_version(model_name, version):
        if not final:
            return _STALE
        raise RequestError(f"Requested version: {version} does not exist for model: {model_name}",
                           kind="Query processing error")
    model = view.models[(model_name, version)]
    if model.input_type != app.input_type:
        # The management API links only versions of the app's input type; a version registered
        # with another one must not be reached by pinning it (its replica would misread the input).
        raise RequestError(f"Requested version: {version} of model: {model_name} takes "
                           f"{model.input_type}, not {app.input_type} as application {app.name} does",
                           kind="Query processing error")
    return model_name, version


def _current_model(view: ClusterView, linked: List[str], final: bool):
    """The linked model that answers at its current version. Clipper sent a query to every
    linked model with a current version and answered with the first output; the management API
    links one model, but a Clipper component may have written more: the first of them (by
    name) that has a current version answers."""
    for model_name in linked:
        version = view.current_versions.get(model_name)
        if version:
            return model_name, version
    return None if final else _STALE


PREDICT, UPDATE, METRICS, OPENAPI = "/{app}/predict", "/{app}/update", "/metrics", "/openapi.json"
# Route -> method -> handler. /{app}/predict/ and /{app}/update/ are accepted too, as in Clipper.
# A HEAD is answered as a GET without the body (http.py leaves it out).
ROUTES: Dict[str, Dict[str, str]] = {
    PREDICT: {"POST": "predict"}, UPDATE: {"POST": "update"},
    METRICS: {"GET": "report_metrics", "HEAD": "report_metrics"},
    OPENAPI: {"GET": "describe", "HEAD": "describe"},
}
_APP_ROUTES = {"predict": PREDICT, "update": UPDATE}
PLAIN_TEXT_UPDATE_ERRORS = frozenset((400, 408, 413, 415))


@functools.lru_cache(maxsize=256)     # clients ask for the same few paths again and again
def _route(path: str) -> Tuple[Optional[str], Optional[str]]:
    """(route, application name) of a path; route None when no route matches."""
    if path in (METRICS, OPENAPI):
        return path, None
    parts = path.split("/")
    if parts[0] == "" and len(parts) in (3, 4) and parts[1] and (len(parts) == 3 or parts[3] == ""):
        return _APP_ROUTES.get(parts[2]), parts[1]
    return None, None



async def _serve(config: Config) -> None:
    frontend = QueryFrontend(config)
    limits = http.Limits(config.max_body_size, config.header_timeout, config.body_timeout,
                         KEEPALIVE_TIMEOUT)
    async with frontend.running():
        # What start-up made lives as long as the process: out of the collector's sight, each
        # collection while serving scans only what the requests made.
        gc.freeze()
        await server_runner.serve_until_stopped(
            lambda: http.Server(frontend, limits).start(config.host, config.query_port,
                                                        reuse_port=config.query_workers > 1),
            config.host, config.query_port, "query frontend")


def main(config: Config) -> None:
    eventloop.run(_serve(config))
