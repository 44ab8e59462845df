"""The PostgreSQL connection pool (asyncpg through triopg) and the boundary's error mapping.

Owns: one triopg pool per process. Callers run statements through the pool's proxy methods or,
for anything multi-row, inside :meth:`Database.transaction`. Database outages surface as
:class:`DatabaseUnavailable` so the HTTP layer can answer 503 instead of 500.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import trio_asyncio
import triopg

# Errors that mean "the database is not reachable right now", not "the statement is wrong".
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.InterfaceError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    OSError,
)


class DatabaseUnavailable(Exception):
    """PostgreSQL could not be reached; the request may be retried later."""


# Sent at connect, so they are the session's defaults and survive the RESET ALL the pool runs
# on release. UTC: timestamptz arithmetic ('+ 1 day'), date casts and date_trunc would
# otherwise follow the server's or database's configured zone and its DST jumps.
SERVER_SETTINGS = {"timezone": "UTC"}


async def _init_connection(conn: asyncpg.Connection) -> None:
    # Runs under asyncio inside asyncpg: jsonb columns read and write plain Python values.
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


Connection = Any  # triopg.TrioConnectionProxy; triopg ships no type information


class Database:
    """A thin owner of the pool; ``pool`` proxies execute/fetch/fetchrow/fetchval/executemany."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        try:
            async with self.pool.acquire() as conn:
                yield conn
        except UNAVAILABLE_ERRORS as e:
            raise DatabaseUnavailable(str(e) or type(e).__name__) from e

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """One transaction on one connection: every multi-row change goes through here."""
        async with self.connection() as conn, conn.transaction():
            yield conn

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        return await self._call(self.pool.fetch, query, *args)  # type: ignore[no-any-return]

    async def fetchrow(self, query: str, *args: Any) -> Any:
        return await self._call(self.pool.fetchrow, query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self._call(self.pool.fetchval, query, *args)

    async def fetchrow_hot(self, query: str, *args: Any) -> Any:
        """``fetchrow`` in one trio-asyncio crossing instead of three (acquire, fetch, release
        all run under asyncio inside asyncpg's pool): for the hottest reads only (the cached
        snapshot answer), where each crossing costs as much CPU as the query itself."""
        method = trio_asyncio.aio_as_trio(self.pool._asyncpg_pool.fetchrow)
        return await self._call(method, query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        return await self._call(self.pool.execute, query, *args)  # type: ignore[no-any-return]

    @staticmethod
    async def _call(method: Callable[..., Any], *args: Any) -> Any:
        try:
            return await method(*args)
        except UNAVAILABLE_ERRORS as e:
            raise DatabaseUnavailable(str(e) or type(e).__name__) from e


@asynccontextmanager
async def open_database(url: str, min_size: int = 2, max_size: int = 10) -> AsyncIterator[Database]:
    """Open the pool; must run inside ``trio_asyncio.open_loop()``."""
    try:
        pool_cm = triopg.create_pool(
            url,
            min_size=min_size,
            max_size=max_size,
            init=_init_connection,
            server_settings=SERVER_SETTINGS,
        )
        pool = await pool_cm.__aenter__()
    except UNAVAILABLE_ERRORS as e:
        raise DatabaseUnavailable(f"cannot connect to the database: {e}") from e
    try:
        yield Database(pool)
    finally:
        await pool_cm.__aexit__(None, None, None)
