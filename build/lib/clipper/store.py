"""Async reads and writes of the cluster state in Redis, through ``redis_schema``."""
from typing import Dict, List, Optional

import redis.asyncio as aioredis

from clipper import redis_schema as schema
from clipper.redis_schema import App, Container, Model


class Store:
    """One connection pool per Clipper database, all on the same server."""

    def __init__(self, redis_url: str):
        self.url = redis_url
        dbs = (schema.STATE_DB, schema.MODEL_DB, schema.CONTAINER_DB, schema.APPLICATION_DB,
               schema.METADATA_DB, schema.APP_MODEL_LINKS_DB)
        self._db = {db: aioredis.Redis.from_url(redis_url, db=db, decode_responses=True)
                    for db in dbs}

    def client(self, db: int) -> aioredis.Redis:
        return self._db[db]

    async def close(self) -> None:
        for client in self._db.values():
            await client.aclose()

    async def ping(self) -> bool:
        return await self._db[schema.APPLICATION_DB].ping()

    # ---- applications ----
    async def get_app(self, name: str) -> Optional[App]:
        fields = await self._db[schema.APPLICATION_DB].hgetall(schema.app_key(name))
        return schema.decode_app(name, fields)

    async def app_names(self) -> List[str]:
        return sorted(await self._db[schema.APPLICATION_DB].keys("*"))

    async def add_app(self, app: App) -> None:
        await self._db[schema.APPLICATION_DB].hset(schema.app_key(app.name), mapping=schema.encode_app(app))

    async def delete_app(self, name: str) -> None:
        # Clipper left links and selection state behind; a re-created app inherited them.
        await self._db[schema.APP_MODEL_LINKS_DB].delete(schema.links_key(name))
        await self._db[schema.STATE_DB].delete(schema.selection_state_key(name))
        await self._db[schema.APPLICATION_DB].delete(schema.app_key(name))

    async def set_selection_state(self, app: App) -> None:
        await self._db[schema.STATE_DB].set(schema.selection_state_key(app.name),
                                            schema.encode_selection_state(app.default_output))

    # ---- links ----
    async def linked_models(self, app_name: str) -> List[str]:
        return sorted(await self._db[schema.APP_MODEL_LINKS_DB].smembers(schema.links_key(app_name)))

    async def add_links(self, app_name: str, model_names: List[str]) -> None:
        await self._db[schema.APP_MODEL_LINKS_DB].sadd(schema.links_key(app_name), *model_names)

    async def remove_links(self, app_name: str, model_names: List[str]) -> None:
        await self._db[schema.APP_MODEL_LINKS_DB].srem(schema.links_key(app_name), *model_names)

    async def apps_linked_to(self, model_name: str) -> List[str]:
        links = self._db[schema.APP_MODEL_LINKS_DB]
        return [app for app in sorted(await links.keys("*"))
                if await links.sismember(schema.links_key(app), model_name)]

    # ---- models ----
    async def get_model(self, name: str, version: str) -> Optional[Model]:
        return schema.decode_model(await self._db[schema.MODEL_DB].hgetall(schema.model_key(name, version)))

    async def model_exists(self, name: str, version: str) -> bool:
        return bool(await self._db[schema.MODEL_DB].exists(schema.model_key(name, version)))

    async def model_keys(self) -> List[str]:
        return sorted(await self._db[schema.MODEL_DB].keys("*"))

    async def versions_of(self, name: str) -> List[str]:
        keys = await self._db[schema.MODEL_DB].keys(schema.model_versions_pattern(name))
        return sorted(schema.split_model_key(key)[1] for key in keys)

    async def add_model(self, model: Model) -> None:
        await self._db[schema.MODEL_DB].hset(schema.model_key(model.name, model.version),
                                             mapping=schema.encode_model(model))

    async def delete_model(self, name: str, version: str) -> None:
        if await self.current_version(name) == version:
            await self._db[schema.METADATA_DB].delete(schema.current_version_key(name))
        await self._db[schema.MODEL_DB].delete(schema.model_key(name, version))

    async def current_version(self, name: str) -> Optional[str]:
        return (await self._db[schema.METADATA_DB].get(schema.current_version_key(name))) or None

    async def set_current_version(self, name: str, version: str) -> None:
        await self._db[schema.METADATA_DB].set(schema.current_version_key(name), version)

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
