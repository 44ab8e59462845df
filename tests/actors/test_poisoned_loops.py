"""The long-lived loops outlive bad data too (issue 10): one refused job, update or row must not
crash the Scheduler, the RolloutActor or the Notifier (each a PERMANENT child of the root
supervisor: crashing on the same data every round would escalate and restart every actor)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import attrs
import httpx
import pytest

from flatrender.actors.mailbox import Reply
from flatrender.actors.notifier import Notifier
from flatrender.actors.rollout import RolloutActor
from flatrender.actors.scheduler import Scheduler
from flatrender.actors.system import ActorSystem
from flatrender.config import Config
from flatrender.persistence import notifications, updates
from flatrender.persistence.db import Database, DataRefused
from flatrender.storage import MinioStore
from flatrender.updates_cli import publish
from tests.actors.test_notifier import T0, ended_job, with_webhook
from tests.actors.test_rollout import idle_node, row_statuses
from tests.actors.test_scheduler import pending_job
from tests.helpers import Tokens


@pytest.fixture
def config(config: Config) -> Config:
    """The actor system's own RolloutActor must not tick while a test drives one by hand."""
    return attrs.evolve(config, updates=attrs.evolve(config.updates, tick_sec=3600.0))


REFUSED = DataRefused('invalid byte sequence for encoding "UTF8": 0x00', "22021")


class Jobs:
    """The job system as the Scheduler sees it: one job's actor refuses its offer's data, the
    other takes what it is offered."""

    def __init__(self, refusing: UUID) -> None:
        self.refusing = refusing
        self.offered: list[UUID] = []

    async def call(self, job_id: UUID, make: Any, within_sec: float = 10.0) -> Any:
        self.offered.append(job_id)
        if job_id == self.refusing:
            raise REFUSED
        message = make(Reply())
        return frozenset(range_id for range_id, _ in message.pairs)


async def idle_nodes(db: Database, n: int) -> None:
    for _ in range(n):
        node_id = uuid4()
        await db.execute(
            "INSERT INTO nodes (id, name, region, node_ip, worker_port, current_ae_version,"
            " status) VALUES ($1, $2, 'eu', '10.0.0.1', 9000, '2024', 'Idle')",
            node_id,
            f"node-{node_id}",
        )


async def test_a_job_refusing_its_offer_is_declined_and_the_round_goes_on(
    db: Database, config: Config, tokens: Tokens
) -> None:
    now = datetime.now(UTC)
    refusing = await pending_job(db, tokens.user_id, "Cash", now, 1)
    taking = await pending_job(db, tokens.other_user_id, "Cash", now, 1)
    await idle_nodes(db, 2)
    jobs = Jobs(refusing)
    scheduler = Scheduler(db, jobs, lambda: config)  # type: ignore[arg-type]

    for _ in range(3):  # offered again each round, never a crash
        assert await scheduler.round() == 1

    assert jobs.offered.count(refusing) == 3 and jobs.offered.count(taking) == 3
    assert scheduler.stats.refused == 3


class Fleet:
    """The fleet as the RolloutActor sees it: one node's actor refuses the command's data."""

    def __init__(self, fleet: Any, refusing: UUID) -> None:
        self.fleet = fleet
        self.refusing = refusing

    async def call(self, node_id: UUID, make: Any, within_sec: float = 5.0) -> Any:
        if node_id == self.refusing:
            raise REFUSED
        return await self.fleet.call(node_id, make, within_sec)


async def test_an_update_whose_command_is_refused_is_skipped_and_the_others_roll_out(
    actor_system: ActorSystem, config: Config, tmp_path: Path
) -> None:
    db, store = actor_system.db, MinioStore(config.s3)
    published = []
    for version in ("2.0.0", "2.0.1"):
        path = tmp_path / f"agent-{version}.zip"
        path.write_bytes(f"PK agent {version}".encode() * 100)
        published.append(await publish(db, store, path, "2024", f"agent {version}"))
    refused_node, other_node = await idle_node(actor_system), await idle_node(actor_system)
    await updates.queue_rollout(db, published[0].id, [refused_node])
    await updates.queue_rollout(db, published[1].id, [other_node])
    fleet = Fleet(actor_system.fleet, refused_node)
    actor = RolloutActor(db, fleet, store, lambda: config)  # type: ignore[arg-type]

    report = await actor.tick()

    assert report.skipped == [published[0].id]
    assert report.sent == [other_node]
    assert await row_statuses(db, published[0].id) == {refused_node: "Queued"}  # next round
    assert await row_statuses(db, published[1].id) == {other_node: "Sent"}


async def test_an_error_text_from_the_wire_is_stored_printable_not_a_crash(
    db: Database, config: Config, tokens: Tokens
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("peer said \x00 goodbye", request=request)

    cfg = with_webhook(config, "http://hooks.invalid/done")
    job_id = await ended_job(db, tokens.user_id)
    notifier = Notifier(db, lambda: cfg, now=lambda: T0)
    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as http:
        assert await notifier.deliver_due(http) == 1

    [row] = await notifications.for_job(db, job_id)
    assert (row.attempts, row.delivered_at) == (1, None)
    assert row.last_error == "ConnectError: peer said   goodbye"
    assert notifier.statistics().failed == 1
