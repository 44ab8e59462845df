"""The boundary's error mapping on a real PostgreSQL: data the database refuses is `DataRefused`
(a 4xx for its sender), an unreachable database is `DatabaseUnavailable` (503), and the
integrity violations callers catch on purpose stay asyncpg's own."""

from __future__ import annotations

from uuid import UUID, uuid4

import asyncpg
import pytest

from flatrender.persistence.db import (
    Connection,
    Database,
    DatabaseUnavailable,
    DataRefused,
    open_database,
)

INSERT_NODE = (
    "INSERT INTO nodes (id, name, region, node_ip, worker_port, current_ae_version, ram_gb)"
    " VALUES ($1, $2, 'eu', '10.0.0.1', 9000, '24.0', $3)"
)


async def node_names(db: Database) -> list[str]:
    return [r["name"] for r in await db.fetch("SELECT name FROM nodes ORDER BY name")]


async def test_nul_in_text_is_refused_data_with_a_reason_and_no_sql(db: Database) -> None:
    with pytest.raises(DataRefused) as refused:
        await db.execute(INSERT_NODE, uuid4(), "bad\x00name", 1)
    assert refused.value.sqlstate == "22021"  # character_not_in_repertoire
    assert "0x00" in refused.value.reason
    assert "INSERT" not in refused.value.reason and "nodes" not in refused.value.reason
    assert await node_names(db) == []


async def test_an_int_outside_int4_is_refused_before_it_is_sent(db: Database) -> None:
    with pytest.raises(DataRefused) as refused:
        await db.fetchval("SELECT $1::integer", 2**31)
    assert refused.value.sqlstate is None  # asyncpg refused it client-side
    assert refused.value.reason == "value out of int32 range"
    assert not isinstance(refused.value, DatabaseUnavailable)


async def test_a_number_out_of_range_on_the_server_is_refused_data(db: Database) -> None:
    with pytest.raises(DataRefused) as refused:
        await db.fetchval("SELECT ($1::bigint)::integer", 2**40)
    assert refused.value.sqlstate == "22003"  # numeric_value_out_of_range
    assert "out of range" in refused.value.reason


async def test_a_lone_surrogate_and_nul_in_jsonb_are_refused_data(db: Database) -> None:
    with pytest.raises(DataRefused) as surrogate:
        await db.fetchval("SELECT $1::text", "a\ud800b")
    assert surrogate.value.sqlstate is None and "surrogates not allowed" in surrogate.value.reason
    assert surrogate.value.reason.isprintable()
    with pytest.raises(DataRefused) as nul:
        await db.fetchval("SELECT $1::jsonb", {"reason": "\x00"})
    assert nul.value.sqlstate == "22P05"  # untranslatable_character


async def test_a_broken_check_constraint_stays_asyncpgs_own(db: Database) -> None:
    # The HTTP layer checks every client value a CHECK constrains: one broken is our bug.
    with pytest.raises(asyncpg.CheckViolationError) as broken:
        await db.execute(INSERT_NODE, uuid4(), "n1", -1)
    assert broken.value.constraint_name == "nodes_ram_gb_check"
    assert await node_names(db) == []


@pytest.mark.parametrize(
    ("query", "value", "cause"),
    [
        ("SELECT $1::uuid", "not-a-uuid", ValueError),  # a str where we meant a UUID
        ("SELECT $1::integer", "5", TypeError),
        ("SELECT $1::text", 5, TypeError),
        ("SELECT $1::jsonb", {"at": object()}, TypeError),
    ],
)
async def test_a_wrong_python_type_is_our_bug_not_refused_data(
    db: Database, query: str, value: object, cause: type[Exception]
) -> None:
    with pytest.raises(asyncpg.DataError) as bug:
        await db.fetchval(query, value)
    assert not isinstance(bug.value, DataRefused | DatabaseUnavailable)
    assert isinstance(bug.value.__cause__, cause)
    with pytest.raises(asyncpg.DataError):  # the same through a connection block
        async with db.connection() as conn:
            await conn.fetchval(query, value)


@pytest.mark.parametrize(
    ("query", "value", "sqlstate"),
    [
        ("SELECT 1 / $1::integer", 0, "22012"),  # division_by_zero
        ("SELECT $1::text::integer", "abc", "22P02"),  # invalid_text_representation
    ],
)
async def test_a_data_exception_of_our_sql_stays_asyncpgs_own(
    db: Database, query: str, value: object, sqlstate: str
) -> None:
    with pytest.raises(asyncpg.DataError) as bug:
        await db.fetchval(query, value)
    assert not isinstance(bug.value, DataRefused)
    assert bug.value.sqlstate == sqlstate

    async def body(conn: Connection) -> None:
        await conn.fetchval(query, value)

    with pytest.raises(asyncpg.DataError):
        await db.atomic(body)


async def test_too_long_text_and_bad_dates_are_refused_data(db: Database) -> None:
    with pytest.raises(DataRefused) as long:
        async with db.transaction() as conn:
            await conn.execute("CREATE TEMP TABLE short (v varchar(2)) ON COMMIT DROP")
            await conn.execute("INSERT INTO short VALUES ($1)", "abc")
    with pytest.raises(DataRefused) as overflow:
        await db.fetchval("SELECT $1::text::date", "2020-13-45")
    with pytest.raises(DataRefused) as bad_format:
        await db.fetchval("SELECT $1::text::timestamptz", "2020-01-01 25:99")
    with pytest.raises(DataRefused) as int64:
        await db.fetchval("SELECT $1::bigint", 2**63)
    assert (overflow.value.sqlstate, int64.value.reason) == ("22008", "value out of int64 range")
    assert bad_format.value.sqlstate in {"22007", "22008"}
    assert long.value.sqlstate == "22001"  # string_data_right_truncation


async def test_a_long_value_is_not_echoed_whole(db: Database) -> None:
    with pytest.raises(DataRefused) as refused:
        await db.fetchval("SELECT $1::numeric::integer", "9" * 5000)
    assert len(refused.value.reason) <= DataRefused.MAX_REASON


async def test_a_unique_violation_stays_asyncpgs_own(db: Database) -> None:
    await db.execute(INSERT_NODE, uuid4(), "taken", 1)
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute(INSERT_NODE, uuid4(), "taken", 1)


async def test_a_refused_transaction_rolls_back_whole_and_the_pool_carries_on(
    db: Database,
) -> None:
    with pytest.raises(DataRefused):
        async with db.transaction() as conn:
            await conn.execute(INSERT_NODE, uuid4(), "first", 1)
            await conn.execute(INSERT_NODE, uuid4(), "second\x00", 1)
    assert await node_names(db) == []

    async def write(conn: Connection) -> None:
        await conn.execute(INSERT_NODE, uuid4(), "third", 1)
        await conn.execute(INSERT_NODE, uuid4(), "fourth", 2**31)

    with pytest.raises(DataRefused):
        await db.atomic(write)
    assert await node_names(db) == []
    with pytest.raises(DataRefused):  # what leaves the block (asyncpg's own error inside it)
        async with db.connection() as conn:
            await conn.fetchval("SELECT $1::text", "nul\x00")
    node_id: UUID = uuid4()
    await db.execute(INSERT_NODE, node_id, "fine", 1)
    assert await node_names(db) == ["fine"]


async def test_an_unreachable_database_is_unavailable_not_refused(tmp_path: object) -> None:
    import trio_asyncio

    url = f"postgresql://postgres@/postgres?host={tmp_path}/nowhere"
    async with trio_asyncio.open_loop():
        with pytest.raises(DatabaseUnavailable):
            async with open_database(url, 1, 1):
                pass
