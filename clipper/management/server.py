"""The /admin endpoints: Clipper 0.4's routes, checks and messages over aiohttp.

Mutations answer plain text, queries answer JSON. Handlers raise ``RequestError`` (a 400
unless it says otherwise); one middleware renders every error as Clipper's plain text.
Where Clipper wrote no response at all (invalid input type, unknown route) we answer 400
or 404; a wrong method on a known route gets 405. Every change is one atomic
check-then-write (``Store.update``), so concurrent operators cannot both succeed, and is
answered once the query frontends serve from it.
"""
import hmac
import logging

import orjson
from aiohttp import web
from redis.exceptions import RedisError

from clipper import openapi
from clipper import redis_schema as schema
from clipper import store as writes
from clipper.config import Config
from clipper.datatypes import InputType
from clipper.errors import RequestError, Unavailable
from clipper.management.requests import (
    APP_NAME_SCHEMA, APP_SCHEMA, CONTAINER_SCHEMA, LINKS_SCHEMA, MAX_DEFAULT_OUTPUT_LENGTH, MAX_LABELS,
    MAX_PATH_LENGTH, MODEL_SCHEMA, NAME_SCHEMA, STATE_SCHEMA, VERBOSE_SCHEMA, VERSIONED_MODEL_SCHEMA,
    Body, check_group_string, check_length, check_model_name)
from clipper.redis_schema import App, Model
from clipper.request_body import read_json_body
from clipper.store import NOTHING_CHANGED, REDIS_ERRORS, Store

log = logging.getLogger("clipper.management")

STORE = web.AppKey("store", Store)
# How long a write's answer waits for the query frontends to apply it.
SYNC_TIMEOUT_SECONDS = 1.0


def text(message: str, status: int = 200, headers=None) -> web.Response:
    return web.Response(status=status, text=message, content_type="text/plain", headers=headers)


def as_json(document) -> web.Response:
    return web.Response(body=orjson.dumps(document), content_type="application/json")


def app_document(app: App, links) -> dict:
    return {"input_type": app.input_type, "default_output": app.default_output,
            "latency_slo_micros": app.latency_slo_micros, "name": app.name,
            "linked_models": links}


def model_document(model: Model, current_version) -> dict:
    return {"model_name": model.name, "model_version": model.version,
            "input_type": model.input_type, "labels": list(model.labels),
            "container_name": model.container_name, "model_data_path": model.model_data_path,
            "is_current_version": model.version == current_version}


def container_document(container) -> dict:
    return {"model_id": schema.model_key(container.model_name, container.model_version),
            "model_name": container.model_name, "model_version": container.model_version,
            "model_replica_id": container.replica_id, "input_type": container.input_type}


@web.middleware
async def render_errors(request: web.Request, handler) -> web.StreamResponse:
    """Every error of this API, as Clipper's plain text with its status."""
    try:
        return await handler(request)
    except RequestError as error:
        return text(error.message, error.status, error.headers)
    except REDIS_ERRORS as error:   # a read failed: no write was attempted
        log.warning("Redis unreachable: %s", error)
        return text(NOTHING_CHANGED, Unavailable.status)
    except web.HTTPMethodNotAllowed as error:
        return text(f"{request.path} accepts only {', '.join(sorted(error.allowed_methods))}, "
                    f"not {request.method}", 405, {"Allow": ",".join(sorted(error.allowed_methods))})
    except web.HTTPNotFound:
        return text(f"No management endpoint {request.method} {request.path}. "
                    "Endpoints are POST /admin/<operation> and GET /admin/ping.", 404)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("internal error answering %s %s", request.method, request.path)
        return text("Internal error of the management frontend; it has been logged.", 500)


class ManagementAPI:
    def __init__(self, store: Store, config: Config):
        self.store = store
        self.body_timeout = config.body_timeout
        self.token = config.admin_token.encode()
        # Within the Redis call timeout: the wait is one blocking Redis call.
        self.sync_timeout = min(SYNC_TIMEOUT_SECONDS, config.redis_timeout / 2)

    def routes(self):
        post = {
            "add_app": self.add_app, "delete_app": self.delete_app,
            "add_model_links": self.add_model_links, "delete_model_links": self.delete_model_links,
            "add_model": self.add_model, "set_model_version": self.set_model_version,
            "delete_versioned_model": self.delete_versioned_model,
            "get_all_applications": self.get_all_applications,
            "get_application": self.get_application, "get_linked_models": self.get_linked_models,
            "get_all_models": self.get_all_models, "get_model": self.get_model,
            "get_all_containers": self.get_all_containers, "get_container": self.get_container,
            "get_state": self.get_state,
        }
        return ([web.post(f"/admin/{name}", self._guarded(handler)) for name, handler in post.items()]
                + [web.get("/admin/ping", self.ping), openapi.route("management")])

    def _guarded(self, handler):
        """The handler, called with the body once the caller has shown the admin token (and
        is not a web page)."""
        async def guarded(request: web.Request) -> web.Response:
            if "Origin" in request.headers:
                # Browsers send Origin with every POST; clients of this API (clipper_admin,
                # curl, scripts) do not. A page the user visits must not drive the cluster:
                # a POST without a JSON Content-Type, or one after a DNS rebinding of its
                # site to 127.0.0.1, would otherwise pass.
                raise RequestError("The management API does not take requests from web pages "
                                   f"(this one came from {request.headers['Origin'][:200]!r})", status=403)
            if self.token and not self._authorized(request):
                raise RequestError("This cluster requires its admin token: "
                                   "send the header Authorization: Bearer <token>", status=401)
            return await handler(await read_json_body(request, self.body_timeout))
        return guarded

    async def _write(self, plan) -> None:
        """Apply a change, then answer only once the query frontends serve from it, so that a
        query sent after the answer never meets the state before (bounded: a frontend that
        does not acknowledge in time is logged, and the change, applied, is answered)."""
        await self.store.update(plan)
        try:
            synced = await self.store.followers_synced(self.sync_timeout)
        except RedisError as error:     # any: the change is made, and is answered as made
            synced = False
            log.warning("could not tell the query frontends of a change (%s)", error)
        if not synced:
            log.warning("a query frontend did not acknowledge a change within %.2f s: its queries "
                        "may see the state before it for a moment", self.sync_timeout)

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, offered = request.headers.get("Authorization", "").partition(" ")
        # surrogateescape: the bytes as sent, whatever they are (aiohttp's str of a header
        # that is not UTF-8 holds surrogates, which .encode() refused with a 500)
        return scheme == "Bearer" and hmac.compare_digest(offered.encode("utf-8", "surrogateescape"), self.token)

    async def ping(self, request: web.Request) -> web.Response:
        return text("PONG")

    # ---- applications ----
    async def add_app(self, raw: bytes) -> web.Response:
        body = Body(raw, APP_SCHEMA)
        name = body.app_name("name")
        input_type = body.input_type()
        default_output = body.string("default_output")
        check_length(default_output, "default output", MAX_DEFAULT_OUTPUT_LENGTH)
        slo = body.integer("latency_slo_micros")
        if slo <= 0:
            raise RequestError(f"latency_slo_micros must be a positive number of microseconds, got {slo}")
        app = App(name, input_type.canonical_name, default_output, slo)

        async def plan():
            if await self.store.get_app(name):
                raise RequestError(f"application '{name}' already exists")
            return writes.app_added(app)
        await self._write(plan)
        return text(f"Successfully added application with name '{name}'")

    async def delete_app(self, raw: bytes) -> web.Response:
        name = Body(raw, NAME_SCHEMA).string("name")

        async def plan():
            if not await self.store.get_app(name):
                raise RequestError(f"Application '{name}' does not exist")
            return writes.app_deleted(name)
        await self._write(plan)
        return text(f"Successfully deleted application with name '{name}'")

    # ---- links ----
    async def add_model_links(self, raw: bytes) -> web.Response:
        body = Body(raw, LINKS_SCHEMA)
        app_name, model_names = body.string("app_name"), body.strings("model_names")
        await self._write(lambda: self._plan_links(app_name, model_names))
        return text(f"Successfully linked model with name '{model_names[0]}' to application '{app_name}'")

    async def _plan_links(self, app_name: str, model_names: list):
        # The count first (Clipper looked up every name first): 60,000 names held every
        # change of the cluster for 15 s, two Redis calls each.
        if len(model_names) > 1:
            raise RequestError("Applications must be linked with at most one model. "
                               f"Attempted to add links to {len(model_names)} models.")
        app = await self.store.get_app(app_name)
        if not app:
            raise RequestError(f"No app with name '{app_name}' exists.")
        for model_name in model_names:
            version = await self.store.current_version(model_name)
            model = version and await self.store.get_model(model_name, version)
            if not model:
                raise RequestError(f"No model with name '{model_name}' exists.")
            if model.input_type != app.input_type:
                raise RequestError(
                    f"Model with name '{model_name}' has incompatible input_type "
                    f"'{model.input_type}'. Requested app to link to has input_type '{app.input_type}'.")
        if not model_names:
            raise RequestError("Please provide the name of the model that you want to link to "
                               f"the application '{app_name}'")
        existing = await self.store.linked_models(app_name)
        if model_names[0] in existing:
            raise RequestError(f"The model with name '{model_names[0]}' is already linked to '{app_name}'")
        if existing:
            raise RequestError(f"A model with name {existing[0]} is already linked to '{app_name}'.")
        return writes.links_added(app_name, model_names)

    async def delete_model_links(self, raw: bytes) -> web.Response:
        body = Body(raw, LINKS_SCHEMA)
        app_name, model_names = body.string("app_name"), body.strings("model_names")

        async def plan():
            if not await self.store.get_app(app_name):
                raise RequestError(f"No app with name {app_name} exists.")
            existing = await self.store.linked_models(app_name)
            for model_name in model_names:
                if model_name not in existing:
                    raise RequestError(f"Cannot remove nonexistent link between app {app_name} "
                                       f"and model {model_name}")
            unique = list(dict.fromkeys(model_names))   # a name repeated thousands of times is one
            return writes.links_removed(app_name, unique) if unique else []
        await self._write(plan)
        return text("Success!")

    # ---- models ----
    async def add_model(self, raw: bytes) -> web.Response:
        body = Body(raw, MODEL_SCHEMA)
        name = body.string("model_name")
        version = body.string("model_version")
        labels = body.strings("labels")
        input_type = body.input_type()
        container_name = body.string("container_name")
        data_path = body.string("model_data_path")
        check_length(container_name, "container name", MAX_PATH_LENGTH)
        check_length(data_path, "model data path", MAX_PATH_LENGTH)
        batch_size = body.integer("batch_size")
        if batch_size <= 0 and batch_size != schema.DEFAULT_BATCH_SIZE:
            raise RequestError("The batch size must be positive or DEFAULT_BATCH_SIZE, which is -1")
        check_model_name(name, "model name")
        check_model_name(version, "model version")
        if len(labels) > MAX_LABELS:
            raise RequestError(f"The model has {len(labels)} labels; the limit is {MAX_LABELS}")
        for label in labels:
            check_group_string(label, "label", may_be_empty=True)
        model = Model(name, version, input_type.canonical_name, tuple(labels), container_name,
                      data_path, batch_size)

        async def plan():
            if await self.store.model_exists(name, version):
                raise RequestError(f"model with name '{name}' and version '{version}' already exists")
            await self._check_linked_apps_accept(name, input_type)
            return writes.model_added(model)
        await self._write(plan)
        return text(f"Successfully added model with name '{name}' and input type "
                    f"'{input_type.canonical_name}'")

    async def _check_linked_apps_accept(self, model_name: str, input_type: InputType) -> None:
        for app_name in await self.store.apps_linked_to(model_name):
            app = await self.store.get_app(app_name)
            if app and app.input_type != input_type.canonical_name:
                raise RequestError(
                    f"Model with name '{model_name}' is already linked to app '{app_name}' using "
                    f"input type '{app.input_type}'. The input type you provided for a new version "
                    f"of the model, '{input_type.canonical_name}', is not compatible.")

    async def set_model_version(self, raw: bytes) -> web.Response:
        body = Body(raw, VERSIONED_MODEL_SCHEMA)
        name, version = body.string("model_name"), body.string("model_version")

        async def plan():
            if not await self.store.versions_of(name):
                raise RequestError(f"Cannot set version for nonexistent model '{name}'")
            model = await self.store.get_model(name, version)
            if not model:
                raise RequestError(f"Cannot set non-existent version '{version}' for model with "
                                   f"name '{name}'")
            await self._check_linked_apps_accept(name, InputType.parse(model.input_type))
            return writes.current_version_set(name, version)
        await self._write(plan)
        return text(f"Successfully set model with name '{name}' to version '{version}'")

    async def delete_versioned_model(self, raw: bytes) -> web.Response:
        body = Body(raw, VERSIONED_MODEL_SCHEMA)
        name, version = body.string("model_name"), body.string("model_version")

        async def plan():
            if not await self.store.model_exists(name, version):
                raise RequestError(f"model with name '{name}' and version '{version}' does not exist")
            if await self.store.get_model(name, version) is None:     # its `valid` field removed
                raise RequestError(f"model with name '{name}' and version '{version}' is already "
                                   "marked as 'invalid'")
            return writes.model_deleted(name, version, await self.store.current_version(name) == version)
        await self._write(plan)
        return text(f"Successfully deleted model with name '{name}' and version '{version}'")

    # ---- queries ----
    async def get_all_applications(self, raw: bytes) -> web.Response:
        verbose = Body(raw, VERBOSE_SCHEMA).boolean("verbose")
        names = await self.store.app_names()
        if not verbose:
            return as_json(names)
        documents = []
        for name in names:
            app = await self.store.get_app(name)
            if app:
                documents.append(app_document(app, await self.store.linked_models(name)))
        return as_json(documents)

    async def get_application(self, raw: bytes) -> web.Response:
        name = Body(raw, NAME_SCHEMA).string("name")
        app = await self.store.get_app(name)
        return as_json(app_document(app, await self.store.linked_models(name)) if app else {})

    async def get_linked_models(self, raw: bytes) -> web.Response:
        app_name = Body(raw, APP_NAME_SCHEMA).string("app_name")
        if not await self.store.get_app(app_name):
            raise RequestError(f"No application with name '{app_name}' exists.")
        return as_json(await self.store.linked_models(app_name))

    async def get_all_models(self, raw: bytes) -> web.Response:
        verbose = Body(raw, VERBOSE_SCHEMA).boolean("verbose")
        keys = await self.store.model_keys()
        if not verbose:
            return as_json(keys)
        current = await self.store.current_versions()
        documents = []
        for key in keys:
            model = await self.store.get_model(*schema.split_model_key(key))
            if model:
                documents.append(model_document(model, current.get(model.name)))
        return as_json(documents)

    async def get_model(self, raw: bytes) -> web.Response:
        body = Body(raw, VERSIONED_MODEL_SCHEMA)
        name, version = body.string("model_name"), body.string("model_version")
        model = await self.store.get_model(name, version)
        if not model:
            return as_json({})
        return as_json(model_document(model, await self.store.current_version(name)))

    async def get_all_containers(self, raw: bytes) -> web.Response:
        verbose = Body(raw, VERBOSE_SCHEMA).boolean("verbose")
        containers = await self.store.containers()
        if verbose:
            return as_json([container_document(c) for c in containers])
        return as_json([f"{c.model_name}:{c.model_version}:{c.replica_id}" for c in containers])

    async def get_container(self, raw: bytes) -> web.Response:
        body = Body(raw, CONTAINER_SCHEMA)
        container = await self.store.get_container(
            body.string("model_name"), body.string("model_version"), body.integer("replica_id"))
        return as_json(container_document(container) if container else {})

    async def get_state(self, raw: bytes) -> web.Response:
        body = Body(raw, STATE_SCHEMA)
        app_name = body.string("app_name")
        body.integer("uid")  # Clipper keeps one state per app; the uid is checked, not used
        app = await self.store.get_app(app_name)
        return text(app.default_output if app else "")


def build_app(config: Config) -> web.Application:
    app = web.Application(client_max_size=config.max_body_size, middlewares=[render_errors])
    app[STORE] = Store(config.redis_url, timeout=config.redis_timeout)
    app.add_routes(ManagementAPI(app[STORE], config).routes())

    async def close_store(app: web.Application) -> None:
        await app[STORE].close()
    app.on_cleanup.append(close_store)
    return app


def main(config: Config) -> None:
    from clipper.server_runner import serve
    serve(lambda: build_app(config), config.host, config.management_port, "management frontend")
