"""The query frontend: REST predictions in, batches to model containers out.

Nothing on the prediction path touches Redis or blocks the event loop; the cluster view
is kept current in the background (state.py) and consulted in memory.
"""
import asyncio
import itertools
import logging
from typing import Optional, Union

import orjson
from aiohttp import web

from clipper import openapi
from clipper.config import Config
from clipper.datatypes import InputType
from clipper.query_frontend import prometheus
from clipper.query_frontend.cache import PredictionCache
from clipper.query_frontend.dispatch import Batch, DeadlineExpired, Dispatcher, ModelError, Task
from clipper.query_frontend.metrics import METER_TICK_SECONDS, MetricsRegistry
from clipper.query_frontend.rpc_server import RpcServer
from clipper.query_frontend.state import ModelId, StateFollower
from clipper.redis_schema import App, Container, Model
from clipper.request_body import BodyError, read_json_body
from clipper.rest import responses
from clipper.rest.inputs import InputError, load_json_object, parse_predict_body
from clipper.store import Store

log = logging.getLogger("clipper.query_frontend")

UPDATE_SCHEMA = """
  {
  "uid" := int,
  "input" := [double] | [int] | [string] | [byte] | [float],
  "label" := double
  }
"""

Scheduled = Union[None, bytes, asyncio.Future]   # no model / cached output / pending output


class ReplicaRegistry:
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


class QueryFrontend:
    def __init__(self, config: Config):
        self.config = config
        self.store = Store(config.redis_url)
        self.registry = ReplicaRegistry(self.store)
        self.rpc = RpcServer(config, self.registry)
        self.metrics = MetricsRegistry()
        self.cache = PredictionCache(config.cache_size)
        self.follower = StateFollower(self.store, self._on_model_change, self.registry.resync)
        self.query_ids = itertools.count()
        self.dispatcher: Optional[Dispatcher] = None
        self._predictions = self.metrics.counter("internal:aggregate_num_predictions")
        self._throughput = self.metrics.meter("internal:aggregate_model_throughput")
        self._cache_lookups = self.metrics.counter("internal:prediction_cache_lookups")
        self._cache_hit_ratio = self.metrics.ratio("internal:prediction_cache_hit_ratio")

    # ---- lifecycle ----
    async def background(self, app: web.Application):
        """aiohttp cleanup context: start the RPC server and state follower, stop them after."""
        loop = asyncio.get_running_loop()
        self.dispatcher = Dispatcher(self.rpc.send_batch, loop.time, self._on_batch)
        self.rpc.attach(self.dispatcher)
        self.rpc.bind()
        await self.store.clear_containers()   # replicas of an earlier frontend must reconnect
        tasks = [asyncio.create_task(coro) for coro in
                 (self.rpc.run(), self.follower.run(), self.registry.run(), self._tick_meters())]
        await asyncio.wait_for(self.follower.wait_ready(), timeout=30)
        prometheus = await self._serve_prometheus()
        yield
        if prometheus is not None:
            await prometheus.cleanup()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.store.close()

    async def _serve_prometheus(self) -> Optional[web.AppRunner]:
        if not self.config.metrics_port:
            return None
        runner = web.AppRunner(prometheus.build_app(self.metrics), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, self.config.host, self.config.metrics_port).start()
        return runner

    def _on_model_change(self, model_id: ModelId, model: Optional[Model]) -> None:
        if model is not None and self.dispatcher is not None:
            self.dispatcher.set_batch_size(model_id, model.batch_size)
        elif model is None:
            self.metrics.remove_prefix("model:%s:%s:" % model_id)

    async def _tick_meters(self) -> None:
        while True:
            await asyncio.sleep(METER_TICK_SECONDS)
            self.metrics.tick()

    def _on_batch(self, batch: Batch, latency: float) -> None:
        prefix = "model:%s:%s:" % batch.replica.model_id
        size = len(batch.tasks)
        self._throughput.count += size
        self.metrics.counter(prefix + "num_predictions").count += size
        self.metrics.meter(prefix + "prediction_throughput").count += size
        self.metrics.histogram(prefix + "batch_size", "queries").observe(size)
        self.metrics.histogram(prefix + "prediction_latency", "microseconds").observe(latency * 1e6)

    # ---- routes ----
    def routes(self):
        return [web.post("/{app}/predict", self.predict), web.post("/{app}/predict/", self.predict),
                web.post("/{app}/update", self.update), web.post("/{app}/update/", self.update),
                web.get("/metrics", self.report_metrics), openapi.route("query")]

    async def report_metrics(self, request: web.Request) -> web.Response:
        self._cache_lookups.count = self.cache.lookups
        self._cache_hit_ratio.numerator, self._cache_hit_ratio.denominator = self.cache.hits, self.cache.lookups
        return web.Response(body=self.metrics.report_json(), content_type="application/json")

    async def _find_app(self, name: str) -> Optional[App]:
        app = (await self.follower.current_view()).apps.get(name)
        if app is None:
            await self.follower.sync()          # it may have been registered a moment ago
            app = self.follower.view.apps.get(name)
        return app

    async def predict(self, request: web.Request) -> web.Response:
        loop = asyncio.get_running_loop()
        started = loop.time()
        app = await self._find_app(request.match_info["app"])
        if app is None:
            return _json_response(404, responses.error(
                "Unknown application", f"No application named '{request.match_info['app']}' is "
                "registered. Register it with ClipperConnection.register_application."))
        try:
            raw = await read_json_body(request, self.config.body_timeout)
            parsed = parse_predict_body(raw, InputType.parse(app.input_type))
            model_id = await self._resolve_model(app, parsed.version)
        except BodyError as error:
            return _json_response(error.status, responses.error("Bad request", str(error)))
        except InputError as error:
            return _json_response(400, responses.error("Json error", str(error)))
        except LookupError as error:
            return _json_response(400, responses.error("Query processing error", error.args[0]))
        slo = app.latency_slo_micros / 1e6
        deadline = started + slo
        scheduled = [self._schedule(model_id, item, deadline, slo) for item in parsed.inputs]
        pending = [s for s in scheduled if isinstance(s, asyncio.Future) and not s.done()]
        if pending:
            await asyncio.wait(pending, timeout=max(0.0, deadline - loop.time()))
        bodies, failed = zip(*(self._answer(app, s) for s in scheduled)) if scheduled else ((), ())
        self._record_app(app, started, loop.time(), bodies, scheduled)
        if parsed.is_batch:
            return _json_response(200, responses.batch(bodies))
        return _json_response(500 if failed[0] else 200, bodies[0])

    async def _resolve_model(self, app: App, version: Optional[str]) -> Optional[ModelId]:
        view = await self.follower.current_view()
        model_name = view.linked_model(app.name)
        if model_name is None or (version or view.current_versions.get(model_name)) is None:
            await self.follower.sync()            # a link or version may be seconds old
            view = self.follower.view
            model_name = view.linked_model(app.name)
        if model_name is None:
            if version is not None:
                raise LookupError(f"Application {app.name} has no linked model, so version "
                                  f"{version} cannot be selected")
            return None
        if version is None:
            version = view.current_versions.get(model_name)
            return (model_name, version) if version else None
        if not view.has_version(model_name, version):
            await self.follower.sync()
            if not self.follower.view.has_version(model_name, version):
                raise LookupError(f"Requested version: {version} does not exist for model: {model_name}")
        return model_name, version

    def _schedule(self, model_id: Optional[ModelId], item: bytes, deadline: float,
                  slo: float) -> Scheduled:
        if model_id is None:
            return None
        key = (model_id[0], model_id[1], item)
        cached = self.cache.lookup(key)
        if isinstance(cached, Task):       # an identical query in flight: wait for its answer
            self.dispatcher.extend_deadline(model_id, cached, deadline)
            return cached.future
        if cached is not None:
            return cached
        if not self.dispatcher.accepts(model_id):
            return None                    # no replica connected: the default, at once
        future = asyncio.get_running_loop().create_future()
        future.add_done_callback(_consume_exception)
        task = Task(item, deadline, slo, future)
        self.cache.track(key, task)
        self._predictions.count += 1
        self.dispatcher.submit(model_id, task)
        return future

    def _answer(self, app: App, scheduled: Scheduled):
        """One prediction object and whether it reports a model error."""
        query_id = next(self.query_ids)
        if scheduled is None:
            return self._default(app, query_id, responses.NO_CONNECTED_MODELS), False
        if isinstance(scheduled, bytes):
            return responses.prediction(query_id, responses.sniff_output(scheduled), False), False
        if not scheduled.done() or isinstance(scheduled.exception(), DeadlineExpired):
            return self._default(app, query_id, responses.SLO_MISSED), False
        if isinstance(scheduled.exception(), ModelError):
            return responses.model_error(query_id, str(scheduled.exception())), True
        if scheduled.exception() is not None:
            return self._default(app, query_id, responses.SLO_MISSED), False
        return responses.prediction(query_id, responses.sniff_output(scheduled.result()), False), False

    @staticmethod
    def _default(app: App, query_id: int, explanation: str) -> bytes:
        return responses.prediction(query_id, responses.sniff_output(app.default_output.encode()),
                                    True, explanation)

    def _record_app(self, app: App, started: float, finished: float, bodies, scheduled) -> None:
        prefix = f"app:{app.name}:"
        count = len(bodies)
        defaults = sum(1 for body in bodies if b'"default":true' in body)
        self.metrics.histogram(prefix + "prediction_latency", "microseconds").observe(
            (finished - started) * 1e6)
        self.metrics.meter(prefix + "prediction_throughput").count += count
        self.metrics.counter(prefix + "num_predictions").count += count
        ratio = self.metrics.ratio(prefix + "default_prediction_ratio")
        ratio.numerator += defaults
        ratio.denominator += count

    async def update(self, request: web.Request) -> web.Response:
        """Feedback: checked like Clipper's, and, as with Clipper's only policy, a no-op."""
        app = await self._find_app(request.match_info["app"])
        if app is None:
            return _json_response(404, responses.error(
                "Unknown application", f"No application named '{request.match_info['app']}' is registered."))
        try:
            document = load_json_object(await read_json_body(request, self.config.body_timeout))
            if type(document.get("uid")) is not int:
                raise InputError("Error parsing JSON: JSON key uid must be an integer. "
                                 f"Expected JSON schema: {UPDATE_SCHEMA}")
            if type(document.get("label")) not in (int, float):
                raise InputError("Error parsing JSON: JSON key label must be a number. "
                                 f"Expected JSON schema: {UPDATE_SCHEMA}")
            parse_predict_body(orjson.dumps({"input": document.get("input")}),
                               InputType.parse(app.input_type))
        except BodyError as error:
            return web.Response(status=error.status, text=str(error), content_type="text/plain")
        except InputError as error:
            return web.Response(status=400, text=str(error), content_type="text/plain")
        next(self.query_ids)
        return web.Response(text="Feedback received? 1", content_type="text/plain")


def _consume_exception(future: asyncio.Future) -> None:
    """Mark a failure as seen: expired queries may have nobody waiting for them."""
    if not future.cancelled():
        future.exception()


def _json_response(status: int, body: bytes) -> web.Response:
    return web.Response(status=status, body=body, content_type="application/json")


async def not_found(request: web.Request) -> web.Response:
    return _json_response(404, responses.error(
        "Not found", f"No route {request.method} {request.path}. Predictions are "
        "POST /<application>/predict; metrics are GET /metrics."))


def build_app(config: Config) -> web.Application:
    frontend = QueryFrontend(config)
    app = web.Application(client_max_size=config.max_body_size)
    app.add_routes(frontend.routes())
    app.router.add_route("*", "/{tail:.*}", not_found)
    app.cleanup_ctx.append(frontend.background)
    app["frontend"] = frontend
    return app


def main(config: Config) -> None:
    from clipper.server_runner import serve
    serve(lambda: build_app(config), config.host, config.query_port, "query frontend")
