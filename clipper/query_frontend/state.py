"""The query frontend's in-memory view of cluster state, following Redis changes.

Predictions read only this view. It is kept current by keyspace notifications, as in
Clipper; ``current_view()`` waits while a notified change is being re-read, and ``sync()``
is a barrier: once it returns, every change acknowledged by Redis before the call is visible
(a PING on the subscription connection is answered in order). The management frontend
relies on the same order: it answers a write once every follower has acknowledged a nonce
published after it, so a query sent after that answer sees the change. Unlike Clipper, a
deleted application stops being served as soon as its notification arrives.
"""
import asyncio
import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from clipper import redis_schema as schema
from clipper.redis_schema import App, Model, ModelId
from clipper.store import Store

log = logging.getLogger("clipper.query_frontend.state")

WATCHED_DBS = (schema.MODEL_DB, schema.APPLICATION_DB, schema.METADATA_DB,
               schema.APP_MODEL_LINKS_DB)


@dataclass
class ClusterView:
    apps: Dict[str, App] = field(default_factory=dict)
    links: Dict[str, List[str]] = field(default_factory=dict)
    current_versions: Dict[str, str] = field(default_factory=dict)
    models: Dict[ModelId, Model] = field(default_factory=dict)

    def has_version(self, name: str, version: str) -> bool:
        return (name, version) in self.models


def _is_pong(message: dict) -> bool:
    # With decode_responses, redis-py reads the "PONG" answer of a subscribed connection
    # letter by letter, as {"type": "P", "channel": "O", "data": "N"}; missed, every sync()
    # waited its full timeout (1 s for each query to an unknown application or version).
    return (message["type"] == "pong"
            or (message["type"], message["channel"], message["data"]) == ("P", "O", "N"))


def _tell_changes(old: dict, new: dict, on_change: Callable) -> None:
    """``on_change(key, value or None)`` for each key whose value differs between the two."""
    for key in set(old) | set(new):
        if old.get(key) != new.get(key):
            on_change(key, new.get(key))


class StateFollower:
    """Loads the view, then applies every change Redis notifies, reconnecting as needed."""

    def __init__(self, store: Store, on_model_change: Callable[[ModelId, Optional[Model]], None],
                 on_app_change: Callable[[str, Optional[App]], None], on_reconnect: Callable[[], None],
                 deletes_marked_versions: bool = False):
        """``deletes_marked_versions``: this follower (worker 0's, one per cluster) deletes
        the versions that Clipper's management frontend marked for deletion
        (Store.delete_version_marked_invalid)."""
        self.store = store
        self._deletes_marked_versions = deletes_marked_versions
        self.view = ClusterView()
        self._on_model_change = on_model_change
        self._on_app_change = on_app_change
        self._on_reconnect = on_reconnect
        self._pubsub = None
        self._pongs: List[asyncio.Future] = []
        self._ready = asyncio.Event()
        self.settled = asyncio.Event()      # clear while a notified change is being applied
        self.settled.set()
        # Counts changes to the view: what was derived from it in one generation (a
        # remembered answer) is stale in the next.
        self.generation = 0

    async def run(self) -> None:
        """Follow Redis forever; on any connection failure, resubscribe and reload."""
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # Redis down or restarting: serve from memory meanwhile
                log.warning("lost Redis (%s); retrying", error)
                self._ready.clear()
                self._fail_barriers()
                await asyncio.sleep(0.5)

    async def current_view(self) -> ClusterView:
        """The view, once any change already notified has been applied."""
        if not self.settled.is_set():
            await self.settled.wait()
        return self.view

    async def wait_ready(self) -> None:
        await self._ready.wait()

    async def sync(self, timeout: float = 1.0) -> None:
        """Barrier: wait until notifications published before now have been applied."""
        if self._pubsub is None or not self._ready.is_set():
            return
        pong = asyncio.get_running_loop().create_future()
        self._pongs.append(pong)
        try:
            await self._pubsub.ping()
            await asyncio.wait_for(pong, timeout)
        except Exception as error:
            log.debug("state sync did not complete: %s", error)

    async def _follow(self) -> None:
        # Clipper's query frontend switches keyspace events on; so do we, at every (re)connect.
        await self.store.client(schema.APPLICATION_DB).config_set("notify-keyspace-events", "AKE")
        pubsub = self.store.client(schema.APPLICATION_DB).pubsub()
        try:
            await pubsub.psubscribe(*(schema.keyspace_pattern(db) for db in WATCHED_DBS))
            await pubsub.subscribe(schema.SYNC_CHANNEL)
            await self._reload_all()
            self._pubsub = pubsub
            self._ready.set()
            self._on_reconnect()
            async for message in pubsub.listen():
                if message["type"] == "pmessage":
                    self.settled.clear()
                    self.generation += 1
                    try:
                        await self._apply(*schema.parse_keyspace_channel(message["channel"]),
                                          message["data"])
                    finally:
                        self.generation += 1
                        self.settled.set()
                elif message["type"] == "message" and message["channel"] == schema.SYNC_CHANNEL:
                    # Every change notified before it is applied: the management frontend
                    # may answer the write it waits on.
                    await self.store.acknowledge_sync(message["data"])
                elif _is_pong(message) and self._pongs:
                    pong = self._pongs.pop(0)
                    if not pong.done():
                        pong.set_result(None)
        finally:
            self._pubsub = None
            await pubsub.aclose()

    def _fail_barriers(self) -> None:
        for pong in self._pongs:
            if not pong.done():
                pong.set_result(None)
        self._pongs.clear()

    async def _reload_all(self) -> None:
        view = ClusterView()
        for name in await self.store.app_names():
            app = await self.store.get_app(name)
            if app:
                view.apps[name] = app
                view.links[name] = await self.store.linked_models(name)
        view.current_versions = await self.store.current_versions()
        for key in await self.store.model_keys():
            model = await self.store.get_model(*schema.split_model_key(key))
            if model:
                view.models[(model.name, model.version)] = model
            elif self._deletes_marked_versions:     # marked while no follower listened
                await self.store.delete_version_marked_invalid(*schema.split_model_key(key))
        old_models, old_apps = self.view.models, self.view.apps
        self.view = view
        self.generation += 1
        _tell_changes(old_apps, view.apps, self._on_app_change)
        _tell_changes(old_models, view.models, self._on_model_change)

    async def _apply(self, db: int, key: str, event: str) -> None:
        """Re-read the key that changed; whatever the event, the key's content decides (but
        for Clipper's deletion of a version, an ``hdel`` of its ``valid`` field)."""
        view = self.view
        if db == schema.APPLICATION_DB:
            app = await self.store.get_app(key)
            if app:
                view.links[key] = await self.store.linked_models(key)
                if view.apps.get(key) != app:
                    view.apps[key] = app
                    self._on_app_change(key, app)
            else:
                view.links.pop(key, None)
                if view.apps.pop(key, None) is not None:
                    self._on_app_change(key, None)
        elif db == schema.APP_MODEL_LINKS_DB:
            view.links[key] = await self.store.linked_models(key)
        elif db == schema.METADATA_DB:
            model_name = schema.model_of_current_version_key(key)
            if model_name is not None:
                version = await self.store.current_version(model_name)
                if version:
                    view.current_versions[model_name] = version
                else:
                    view.current_versions.pop(model_name, None)
        elif db == schema.MODEL_DB:
            model_id = schema.split_model_key(key)
            model = await self.store.get_model(*model_id)
            if model:
                view.models[model_id] = model
            else:
                view.models.pop(model_id, None)
            self._on_model_change(model_id, model)
            if model is None and event == "hdel" and self._deletes_marked_versions:
                await self.store.delete_version_marked_invalid(*model_id)
