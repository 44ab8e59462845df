"""The PostgreSQL connection pool (asyncpg through triopg) and the boundary's error mapping.

Owns: one triopg pool per process. Callers run statements through the pool's proxy methods or,
for anything multi-row, inside :meth:`Database.transaction`. Database outages surface as
:class:`DatabaseUnavailable` so the HTTP layer can answer 503 instead of 500; a client's value
the database cannot hold (NUL in text, a number out of range: ``REFUSED_SQLSTATES``) surfaces
as :class:`DataRefused`, which the HTTP layer answers 422 and an actor answers to the message's
sender without crashing. Any other data error is a bug of ours and passes as asyncpg's own.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, NoReturn, TypeVar

import asyncpg
import trio_asyncio
import triopg
from asyncpg.exceptions import _base as asyncpg_base

# Errors that mean "the database is not reachable right now", not "the statement is wrong".
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.InterfaceError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    OSError,
)


# A statement's data is refused, whatever retries, when PostgreSQL (or asyncpg before it) cannot
# hold a value the client gave: these SQLSTATEs, and a value asyncpg cannot encode for its
# parameter because it is out of the type's range or not encodable text (the cause's type).
# Everything else stays asyncpg's own error, a bug of ours to see with its traceback: a wrong
# Python type for a parameter, a bad cast or a division by zero in our SQL, a NOT NULL or CHECK
# violation (the HTTP layer checks every client value a CHECK constrains, so a CHECK broken is a
# value we computed or a check we missed), and the unique, foreign-key and exclusion violations
# callers catch on purpose (a name taken, a race lost).
REFUSED_SQLSTATES = frozenset(
    {
        "22021",  # character_not_in_repertoire: NUL or bad UTF-8 in text
        "22P05",  # untranslatable_character: NUL (\u0000) in jsonb
        "22003",  # numeric_value_out_of_range
        "22001",  # string_data_right_truncation: longer than a varchar(n)
        "22008",  # datetime_field_overflow
        "22007",  # invalid_datetime_format
    }
)
_REFUSED_ENCODINGS: tuple[type[Exception], ...] = (OverflowError, UnicodeError)
# What asyncpg raises for a refused value: a server data exception (class 22), or a DataError
# raised before sending, whose cause is the codec's own error. Checked by `DataRefused.of`,
# before UNAVAILABLE_ERRORS wherever both are caught (asyncpg's base DataError is an
# InterfaceError too).
REFUSABLE_ERRORS: tuple[type[Exception], ...] = (asyncpg.DataError, asyncpg_base.DataError)


class DatabaseUnavailable(Exception):
    """PostgreSQL could not be reached; the request may be retried later."""


class DataRefused(Exception):
    """PostgreSQL (or asyncpg before it) refused a value of the statement; the same data
    fails the same way on every retry, and the transaction it ran in was rolled back.

    ``reason`` is short and safe to show the client whose data it was: no SQL, no connection
    details, at most ``MAX_REASON`` characters. ``sqlstate`` is PostgreSQL's code (None for a
    value asyncpg refused before sending it).
    """

    MAX_REASON = 200

    def __init__(self, reason: str, sqlstate: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sqlstate = sqlstate

    @classmethod
    def of(cls, error: Exception) -> DataRefused | None:
        """The refusal ``error`` (one of ``REFUSABLE_ERRORS``) means, or None for a bug of ours
        that must propagate as it is."""
        # The server's primary message: 'invalid byte sequence for encoding "UTF8": 0x00',
        # 'value "..." is out of range for type integer'. Never the statement itself.
        message = getattr(error, "message", None)
        if isinstance(error, asyncpg_base.DataError) or message is None:
            # Refused by asyncpg before sending, with no server message: "invalid input for
            # query argument $2: <the value> (value out of int32 range)". Only a value out of
            # range or not encodable is the client's; a wrong type (TypeError, an invalid uuid
            # string) is ours. The value may be long (and is the client's own); the why tells.
            if not isinstance(error.__cause__, _REFUSED_ENCODINGS):
                return None
            found = _CLIENT_REASON.search(str(error))
            reason = found.group(1) if found else "a value cannot be encoded for its column"
            return cls(_safe(reason))
        sqlstate = getattr(error, "sqlstate", None)
        if sqlstate not in REFUSED_SQLSTATES:
            return None
        return cls(_safe(str(message)), sqlstate)


_CLIENT_REASON = re.compile(r"\(([^()]*)\)\s*$")


def _raise_refused(error: Exception) -> NoReturn:
    """Raise `DataRefused` for a refused value, else ``error`` itself (from its except block)."""
    refused = DataRefused.of(error)
    if refused is None:
        raise error
    raise refused from error


def _safe(text: str) -> str:
    printable = "".join(c if c.isprintable() else " " for c in text)
    if len(printable) > DataRefused.MAX_REASON:
        return printable[: DataRefused.MAX_REASON - 3] + "..."
    return printable


# Sent at connect, so they are the session's defaults and survive the RESET ALL the pool runs
# on release. UTC: timestamptz arithmetic ('+ 1 day'), date casts and date_trunc would
# otherwise follow the server's or database's configured zone and its DST jumps.
SERVER_SETTINGS = {"timezone": "UTC"}


async def _init_connection(conn: asyncpg.Connection) -> None:
    # Runs under asyncio inside asyncpg: jsonb columns read and write plain Python values.
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release without asyncpg's default reset (``RESET ALL``, ``UNLISTEN *``, ``CLOSE ALL``,
    advisory unlocks): one round trip per release saved. Safe because our connections hold no
    session state: no ``SET``, no ``LISTEN``, only transaction-level advisory locks. asyncpg still
    rolls back a transaction left open before this runs."""


Connection = Any  # triopg.TrioConnectionProxy; triopg ships no type information


T = TypeVar("T")


class Database:
    """A thin owner of the pool.

    Each of ``fetch``/``fetchrow``/``fetchval``/``execute``/``executemany`` and each
    :meth:`atomic` block crosses the trio-asyncio bridge once: acquire, statements and release
    run together on the asyncio side (through triopg's proxies a pool call crosses three times,
    and a transaction once per statement plus four; each crossing costs ~0.3-0.5 ms of CPU).
    """

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """One pooled connection for the body. Raises `DataRefused` for a client's value the
        database refuses and `DatabaseUnavailable` when it cannot be reached; other asyncpg
        errors (a unique violation, a wrong parameter type, ...) pass as they are."""
        try:
            async with self.pool.acquire() as conn:
                yield conn
        except REFUSABLE_ERRORS as e:
            _raise_refused(e)
        except UNAVAILABLE_ERRORS as e:
            raise DatabaseUnavailable(str(e) or type(e).__name__) from e

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """One transaction on one connection, the body running under trio (any await)."""
        async with self.connection() as conn, conn.transaction():
            yield conn

    async def atomic(self, body: Callable[[Connection], Awaitable[T]]) -> T:
        """Run ``body(conn)`` in one transaction, crossing the bridge once.

        ``body`` runs on the asyncio side with a plain asyncpg connection: it may only await
        the connection's methods (no trio calls). Cancellation rolls the transaction back.
        """
        return await self._call(_atomic, self._asyncpg_pool, body)  # type: ignore[no-any-return]

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        return await self._call(_fetch, self._asyncpg_pool, query, args)  # type: ignore[no-any-return]

    async def fetchrow(self, query: str, *args: Any) -> Any:
        return await self._call(_fetchrow, self._asyncpg_pool, query, args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self._call(_fetchval, self._asyncpg_pool, query, args)

    async def execute(self, query: str, *args: Any) -> str:
        return await self._call(_execute, self._asyncpg_pool, query, args)  # type: ignore[no-any-return]

    async def executemany(self, query: str, args: Iterable[Sequence[Any]]) -> None:
        await self._call(_executemany, self._asyncpg_pool, query, list(args))

    @property
    def _asyncpg_pool(self) -> asyncpg.Pool:
        return self.pool._asyncpg_pool

    @staticmethod
    async def _call(method: Callable[..., Any], *args: Any) -> Any:
        try:
            return await method(*args)
        except REFUSABLE_ERRORS as e:
            _raise_refused(e)
        except UNAVAILABLE_ERRORS as e:
            raise DatabaseUnavailable(str(e) or type(e).__name__) from e


# The asyncio halves, each called through the bridge once.

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def _bridged(fn: F) -> F:
    """``fn`` (an asyncio coroutine function) made awaitable from trio: one crossing a call."""
    return trio_asyncio.aio_as_trio(fn)  # type: ignore[no-any-return]


@_bridged
async def _atomic(pool: asyncpg.Pool, body: Callable[[Any], Awaitable[Any]]) -> Any:
    async with pool.acquire() as conn, conn.transaction():
        return await body(conn)


@_bridged
async def _fetch(pool: asyncpg.Pool, query: str, args: tuple[Any, ...]) -> list[Any]:
    async with pool.acquire() as conn:
        return await conn.fetch(query, *args)  # type: ignore[no-any-return]


@_bridged
async def _fetchrow(pool: asyncpg.Pool, query: str, args: tuple[Any, ...]) -> Any:
    async with pool.acquire() as conn:
        return await conn.fetchrow(query, *args)


@_bridged
async def _fetchval(pool: asyncpg.Pool, query: str, args: tuple[Any, ...]) -> Any:
    async with pool.acquire() as conn:
        return await conn.fetchval(query, *args)


@_bridged
async def _execute(pool: asyncpg.Pool, query: str, args: tuple[Any, ...]) -> str:
    async with pool.acquire() as conn:
        return await conn.execute(query, *args)  # type: ignore[no-any-return]


@_bridged
async def _executemany(pool: asyncpg.Pool, query: str, args: list[Sequence[Any]]) -> None:
    async with pool.acquire() as conn:
        await conn.executemany(query, args)


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
            reset=_keep_session,
        )
        pool = await pool_cm.__aenter__()
    except UNAVAILABLE_ERRORS as e:
        raise DatabaseUnavailable(f"cannot connect to the database: {e}") from e
    try:
        yield Database(pool)
    finally:
        await pool_cm.__aexit__(None, None, None)
