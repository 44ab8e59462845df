"""Every connection works in UTC whatever zone the server or database is configured with: a
day of export extension is 24 hours even across a daylight-saving change."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import trio_asyncio

from flatrender.config import Config
from flatrender.persistence import exports
from flatrender.persistence.db import Database, open_database
from flatrender.storage import MinioStore
from tests.http.test_exports import make_export

# Europe/Berlin moves to summer time at 01:00 UTC on Sunday 31 March 2030.
BEFORE_DST = datetime(2030, 3, 30, 12, 0, tzinfo=UTC)


async def test_extension_across_dst_is_whole_days_with_a_berlin_database(
    db: Database, database_url: str, config: Config
) -> None:
    name = await db.fetchval("SELECT current_database()")
    await db.execute(f"ALTER DATABASE \"{name}\" SET timezone = 'Europe/Berlin'")
    async with trio_asyncio.open_loop(), open_database(database_url, 1, 1) as berlin:
        for _ in range(2):  # a second use of the one connection: after the pool's RESET ALL
            assert await berlin.fetchval("SHOW TimeZone") == "UTC"
        row = await make_export(
            berlin,
            MinioStore(config.s3),
            uuid4(),
            produced=BEFORE_DST - timedelta(days=1),
            keep=timedelta(days=1),
        )
        async with berlin.transaction() as conn:
            moved = await exports.move_delete_date(conn, row.id, 1)
    assert moved == BEFORE_DST + timedelta(hours=24)
