"""Async reads and writes of the cluster state in Redis, through ``redis_schema``.

Every change is a check-then-write made atomic: ``update(plan)`` reads the token of the last
write, runs ``plan`` (it reads what it needs, checks it and returns the writes), then one Lua
script applies the writes only if no other write came in between; if one did, ``plan`` runs
again on the new state. This is WATCH/MULTI's optimistic transaction, done in a script
because WATCH cannot span Clipper's several databases. When Redis fails while a write is on
its way, the store finds out whether it was applied, and raises ``Unavailable`` saying which.
"""
import asyncio
import json
import logging
import secrets
import time
from typing import Awaitable, Callable, Dict, List, Optional, Sequence, Tuple

import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from clipper import redis_schema as schema
from clipper.errors import Unavailable
from clipper.redis_schema import App, Container, Model

log = logging.getLogger("clipper.store")

# One Redis command in a write: (database, command, *arguments).
Write = Tuple
Plan = Callable[[], Awaitable[Sequence[Write]]]
REDIS_ERRORS = (redis_errors.ConnectionError, redis_errors.TimeoutError)
# Each attempt loses only to a write that succeeded, so this bounds the wait under a storm.
MAX_ATTEMPTS = 50

NOTHING_CHANGED = ("The cluster's state store (Redis) is not reachable right now; nothing was "
                   "changed. Retry in a moment.")
OUTCOME_UNKNOWN = ("The cluster's state store (Redis) stopped answering while the change was "
                   "being written: it may or may not have been applied. Check the cluster's "
                   "state (get_all_apps, get_all_models, ...) before retrying.")

# KEYS[1]: the last write's token, in database ARGV[1]. Applies the writes of ARGV[4] (JSON,
# [[db, command, args...], ...]) and records token ARGV[3] only if the token is still ARGV[2].
WRITE_IF_UNCHANGED = """
redis.call('SELECT', ARGV[1])
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[3])
for _, write in ipairs(cjson.decode(ARGV[4])) do
  redis.call('SELECT', write[1])
  redis.call(unpack(write, 2))
end
return 1
"""
# After a write whose answer was lost: 'applied' if its token ARGV[3] is the last one. If the
# token is still ARGV[2], the write has not run, and may still be queued on its old
# connection: record token ARGV[4] so that it never will, and answer 'cancelled'.
SETTLE_WRITE = """
redis.call('SELECT', ARGV[1])
local last = redis.call('GET', KEYS[1]) or ''
if last == ARGV[3] then return 'applied' end
if last ~= ARGV[2] then return 'unknown' end
redis.call('SET', KEYS[1], ARGV[4])
return 'cancelled'
"""


class Store:
    """One connection pool per Clipper database, all on the same server.

    ``timeout`` bounds every Redis call, connecting included (None: redis-py's default).
    Commands are never resent: a resent write could be applied twice.
    """

    def __init__(self, redis_url: str, timeout: Optional[float] = None):
        options = {"retry": Retry(NoBackoff(), 0)}
        if timeout is not None:
            options.update(socket_timeout=timeout, socket_connect_timeout=timeout)
        dbs = (schema.WRITE_TOKEN_DB, schema.STATE_DB, schema.MODEL_DB, schema.CONTAINER_DB,
               schema.APPLICATION_DB, schema.METADATA_DB, schema.APP_MODEL_LINKS_DB)
        self._db = {db: aioredis.Redis.from_url(redis_url, db=db, decode_responses=True, **options)
                    for db in dbs}
        tokens = self._db[schema.WRITE_TOKEN_DB]
        self._write_if_unchanged = tokens.register_script(WRITE_IF_UNCHANGED)
        self._settle_write = tokens.register_script(SETTLE_WRITE)
        self._write_turn: Optional[asyncio.Lock] = None     # made in the loop (Python 3.9 binds it)

    def client(self, db: int) -> aioredis.Redis:
        return self._db[db]

    async def ping(self) -> None:
        """Raises one of REDIS_ERRORS unless Redis answers."""
        await self._db[schema.WRITE_TOKEN_DB].ping()

    async def close(self) -> None:
        for client in self._db.values():
            await client.aclose()

    # ---- atomic changes ----
    async def update(self, plan: Plan) -> None:
        """Apply the writes ``plan`` returns as if nothing else changed the state meanwhile.
        This process's writes take turns (first come, first served): they retry only when
        another process wrote meanwhile, so many operators at once all get through."""
        if self._write_turn is None:
            self._write_turn = asyncio.Lock()
        async with self._write_turn:
            await self._update(plan)

    async def _update(self, plan: Plan) -> None:
        for _ in range(MAX_ATTEMPTS):
            seen = await self._db[schema.WRITE_TOKEN_DB].get(schema.WRITE_TOKEN_KEY) or ""
            writes = await plan()
            if not writes:
                return
            token = secrets.token_hex(16)
            try:
                if await self._write_if_unchanged(
                        keys=[schema.WRITE_TOKEN_KEY],
                        args=[schema.WRITE_TOKEN_DB, seen, token, json.dumps(writes)]):
                    return
            except REDIS_ERRORS as error:
                return await self._settle(seen, token, error)
        raise Unavailable("The cluster's state changed too often to apply this change; nothing "
                          "was changed. Retry in a moment.")

    async def followers_synced(self, timeout: float) -> bool:
        """Wait until every query frontend following the state has applied the writes made so
        far (at most ``timeout`` seconds); False if one did not say so in time."""
        nonce = secrets.token_hex(8)
        client = self._db[schema.SYNC_DB]
        followers = await client.publish(schema.SYNC_CHANNEL, nonce)
        deadline = time.monotonic() + timeout       # for all of them together
        # No clean-up: the list is gone once all are popped, and late ones expire by themselves.
        for _ in range(followers):
            # BLPOP's timeout counts milliseconds, and 0 would wait for ever.
            left = round(deadline - time.monotonic(), 3)
            if left <= 0 or await client.blpop([schema.sync_ack_key(nonce)], left) is None:
                return False
        return True

    async def acknowledge_sync(self, nonce: str) -> None:
        key = schema.sync_ack_key(nonce)
        async with self._db[schema.SYNC_DB].pipeline(transaction=True) as pipe:
            await pipe.rpush(key, 1).expire(key, schema.SYNC_ACK_SECONDS).execute()

    async def _settle(self, seen: str, token: str, error: Exception) -> None:
        try:
            outcome = await self._settle_write(
                keys=[schema.WRITE_TOKEN_KEY],
                args=[schema.WRITE_TOKEN_DB, seen, token, secrets.token_hex(16)])
        except REDIS_ERRORS:
            outcome = "unknown"
        log.warning("Redis failed during a write (%s); the write was %s", error, outcome)
        if outcome != "applied":
            raise Unavailable(NOTHING_CHANGED if outcome == "cancelled" else OUTCOME_UNKNOWN) from error

    # ---- applications ----
    async def get_app(self, name: str) -> Optional[App]:
        fields = await self._db[schema.APPLICATION_DB].hgetall(schema.app_key(name))
        return schema.decode_app(name, fields)

    async def app_names(self) -> List[str]:
        return sorted(await self._db[schema.APPLICATION_DB].keys("*"))


    # ---- links ----
    async def linked_models(self, app_name: str) -> List[str]:
        return sorted(await self._db[schema.APP_MODEL_LINKS_DB].smembers(schema.links_key(app_name)))

    async def apps_linked_to(self, model_name: str) -> List[str]:
        links = self._db[schema.APP_MODEL_LINKS_DB]
        apps = sorted(await links.keys("*"))
        async with links.pipeline(transaction=False) as pipe:      # one round trip, not one per app
            for app in apps:
                pipe.sismember(schema.links_key(app), model_name)
            linked = await pipe.execute()
        return [app for app, is_linked in zip(apps, linked) if is_linked]

    # ---- models ----
    async def get_model(self, name: str, version: str) -> Optional[Model]:
        return schema.decode_model(await self._db[schema.MODEL_DB].hgetall(schema.model_key(name, version)))

    async def model_exists(self, name: str, version: str) -> bool:
        return bool(await self._db[schema.MODEL_DB].exists(schema.model_key(name, version)))

    async def delete_version_marked_invalid(self, name: str, version: str) -> None:
        """Clipper's management frontend deletes a version by removing the ``valid`` field of
        its hash, and its query frontend then deletes the version: so does ours, for such a
        hash (a hash with ``valid``, registered again meanwhile, stays)."""
        async def plan():
            fields = await self._db[schema.MODEL_DB].hgetall(schema.model_key(name, version))
            if not fields or "valid" in fields:
                return []
            return model_deleted(name, version, await self.current_version(name) == version)
        await self.update(plan)

    async def model_keys(self) -> List[str]:
        return sorted(await self._db[schema.MODEL_DB].keys("*"))

    async def versions_of(self, name: str) -> List[str]:
        keys = await self._db[schema.MODEL_DB].keys(schema.model_versions_pattern(name))
        return sorted(schema.split_model_key(key)[1] for key in keys)

    async def current_version(self, name: str) -> Optional[str]:
        return (await self._db[schema.METADATA_DB].get(schema.current_version_key(name))) or None

    async def current_versions(self) -> Dict[str, str]:
        metadata = self._db[schema.METADATA_DB]
        keys = await metadata.keys(schema.current_version_key("*"))
        values = await metadata.mget(keys) if keys else []
        return {schema.model_of_current_version_key(k): v for k, v in zip(keys, values) if v}

    # ---- containers (replicas connected to the query frontend) ----
    async def add_container(self, container: Container) -> None:
        key = schema.container_key(container.model_name, container.model_version, container.replica_id)
        await self._db[schema.CONTAINER_DB].hset(key, mapping=schema.encode_container(container))

    async def delete_container(self, model_name: str, model_version: str, replica_id: int) -> None:
        await self._db[schema.CONTAINER_DB].delete(schema.container_key(model_name, model_version, replica_id))

    async def clear_containers(self) -> None:
        await self._db[schema.CONTAINER_DB].flushdb()

    async def containers(self) -> List[Container]:
        db = self._db[schema.CONTAINER_DB]
        found = [schema.decode_container(await db.hgetall(key)) for key in await db.keys("*")]
        return sorted((c for c in found if c), key=lambda c: (c.model_name, c.model_version, c.replica_id))

    async def get_container(self, name: str, version: str, replica_id: int) -> Optional[Container]:
        fields = await self._db[schema.CONTAINER_DB].hgetall(schema.container_key(name, version, replica_id))
        return schema.decode_container(fields)


# ---- the writes of each change, for ``Store.update`` (pure) ----

def _hash(db: int, key: str, fields: dict) -> Write:
    return (db, "HSET", key, *(item for pair in fields.items() for item in pair))


def app_added(app: App) -> List[Write]:
    return [(schema.STATE_DB, "SET", schema.selection_state_key(app.name),
             schema.encode_selection_state(app.default_output)),
            _hash(schema.APPLICATION_DB, schema.app_key(app.name), schema.encode_app(app))]


def app_deleted(name: str) -> List[Write]:
    # Clipper left links and selection state behind; a re-created app inherited them.
    return [(schema.APP_MODEL_LINKS_DB, "DEL", schema.links_key(name)),
            (schema.STATE_DB, "DEL", schema.selection_state_key(name)),
            (schema.APPLICATION_DB, "DEL", schema.app_key(name))]


def links_added(app_name: str, model_names: List[str]) -> List[Write]:
    return [(schema.APP_MODEL_LINKS_DB, "SADD", schema.links_key(app_name), *model_names)]


def links_removed(app_name: str, model_names: List[str]) -> List[Write]:
    return [(schema.APP_MODEL_LINKS_DB, "SREM", schema.links_key(app_name), *model_names)]


def model_added(model: Model) -> List[Write]:
    """The new version becomes the current one."""
    return [_hash(schema.MODEL_DB, schema.model_key(model.name, model.version),
                  schema.encode_model(model)),
            *current_version_set(model.name, model.version)]


def current_version_set(name: str, version: str) -> List[Write]:
    return [(schema.METADATA_DB, "SET", schema.current_version_key(name), version)]


def model_deleted(name: str, version: str, is_current: bool) -> List[Write]:
    writes = [(schema.METADATA_DB, "DEL", schema.current_version_key(name))] if is_current else []
    return [*writes, (schema.MODEL_DB, "DEL", schema.model_key(name, version))]
