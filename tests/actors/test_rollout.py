"""RolloutActor against a real PostgreSQL, S3 and node actors; rounds are driven with `tick()`
and the observation window with an injected wall clock, never with sleeps."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import attrs
import httpx
import pytest
import trio

from flatrender.actors import node
from flatrender.actors.rollout import RolloutActor, TickReport
from flatrender.actors.system import ActorSystem
from flatrender.config import Config, UpdatesConfig
from flatrender.domain.model import CommandType, HealthSample, NodeCommand, NodeStatus
from flatrender.persistence import nodes, updates
from flatrender.persistence.db import Database, DatabaseUnavailable
from flatrender.storage import MinioStore, ObjectStore, StorageUnavailable
from flatrender.updates_cli import publish
from tests.persistence.test_health import add_node

CONTENT = b"PK\x03\x04 new agent " + bytes(range(256)) * 40
FILE_NAME = "agent-2.0.0.zip"
STEM = "agent-2.0.0"
OBSERVE = 300


@attrs.define
class Clock:
    """The injected wall clock: real time plus what a test has jumped."""

    offset: timedelta = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def jump(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(config: Config) -> MinioStore:
    return MinioStore(config.s3)


@pytest.fixture
def rollout_config(config: Config) -> Config:
    return attrs.evolve(config, updates=UpdatesConfig(observe_sec=OBSERVE))


@pytest.fixture
def actor(
    actor_system: ActorSystem, store: MinioStore, rollout_config: Config, clock: Clock
) -> RolloutActor:
    return RolloutActor(actor_system.db, actor_system.fleet, store, lambda: rollout_config, clock)


async def published(db: Database, store: ObjectStore, tmp_path: Path) -> updates.NodeUpdate:
    path = tmp_path / FILE_NAME
    path.write_bytes(CONTENT)
    return await publish(db, store, path, "2024", "faster AE start")


@pytest.fixture
async def update(db: Database, store: MinioStore, tmp_path: Path) -> updates.NodeUpdate:
    return await published(db, store, tmp_path)


def sample(node_id: UUID, job: UUID | None = None) -> HealthSample:
    return HealthSample(node_id, datetime.now(UTC), "Idle", 5, 4096, False, job, None, 1)


async def idle_node(system: ActorSystem, name: str | None = None) -> UUID:
    """A registered node whose first heartbeat made it Idle."""
    node_id = uuid4()
    new = nodes.NewNode(name or f"n-{node_id}", "eu", "10.0.0.1", 9000, "2024")
    await system.fleet.register(node_id, new)
    await heartbeat(system, node_id)
    return node_id


async def heartbeat(system: ActorSystem, node_id: UUID, job: UUID | None = None) -> None:
    await system.fleet.call(node_id, lambda r: node.Heartbeat(sample(node_id, job), (), r))


async def come_online(system: ActorSystem, node_id: UUID, version: str = STEM) -> None:
    info = nodes.OnlineInfo(version, "2024", ["2024"], 32, 8, 1, [])
    await system.fleet.call(node_id, lambda r: node.Online(info, r))


async def commands(system: ActorSystem, node_id: UUID) -> list[NodeCommand]:
    view: node.NodeView = await system.fleet.call(node_id, node.Inspect)
    return [c for c in view.commands if c.type is CommandType.UPDATE_SOFTWARE]


async def stored_update_commands(db: Database) -> int:
    return int(
        await db.fetchval("SELECT count(*) FROM node_commands WHERE type = 'UpdateSoftware'")
    )


async def row_statuses(db: Database, update_id: UUID) -> dict[UUID, str]:
    rows = await db.fetch(
        "SELECT node_id, status FROM node_update_rollouts WHERE update_id = $1", update_id
    )
    return {r["node_id"]: r["status"] for r in rows}


async def crash(db: Database, node_id: UUID, at: datetime) -> None:
    await db.execute(
        "INSERT INTO node_crashes (id, node_id, crashed_at, last_known_frame) VALUES ($1, $2, $3,"
        " (SELECT count(*) FROM node_crashes))",
        uuid4(),
        node_id,
        at,
    )


async def test_a_busy_node_gets_the_update_only_once_idle_and_confirms_it_online(
    actor: RolloutActor, actor_system: ActorSystem, update: updates.NodeUpdate, clock: Clock
) -> None:
    db = actor_system.db
    node_id = await idle_node(actor_system)
    await heartbeat(actor_system, node_id, job=uuid4())  # Busy
    await updates.queue_rollout(db, update.id, [node_id])

    report = await actor.tick()
    assert report.sent == [] and await commands(actor_system, node_id) == []

    # The row says Idle but the node's actor knows better: NodeNotIdle leaves it Queued.
    await db.execute("UPDATE nodes SET status = 'Idle' WHERE id = $1", node_id)
    assert (await actor.tick()).sent == []
    assert await row_statuses(db, update.id) == {node_id: "Queued"}

    await heartbeat(actor_system, node_id)  # Idle for real
    assert (await actor.tick()).sent == [node_id]
    (command,) = await commands(actor_system, node_id)
    assert command.payload["update_id"] == str(update.id)
    assert command.payload["update_file_name"] == FILE_NAME
    async with httpx.AsyncClient() as http:
        response = await http.get(str(command.payload["download_url"]))
    assert response.status_code == 200 and response.content == CONTENT
    view: node.NodeView = await actor_system.fleet.call(node_id, node.Inspect)
    assert view.state.status is NodeStatus.UPDATING

    assert (await actor.tick()).sent == []  # installing: nothing more
    assert len(await commands(actor_system, node_id)) == 1

    await come_online(actor_system, node_id)
    assert (await actor.tick()).confirmed == [node_id]
    listed = await updates.get(db, update.id)
    assert listed is not None and listed.rolled_out_to_node_ids == (node_id,)
    assert listed.in_update_queue is True  # the last stage is observed too

    clock.jump(OBSERVE)
    assert (await actor.tick()).finished == [update.id]
    done = await updates.get(db, update.id)
    assert done is not None and (done.in_update_queue, done.halted_reason) == (False, None)
    assert await stored_update_commands(db) == 1


async def test_an_old_version_online_does_not_confirm(
    actor: RolloutActor, actor_system: ActorSystem, update: updates.NodeUpdate
) -> None:
    node_id = await idle_node(actor_system)
    await updates.queue_rollout(actor_system.db, update.id, [node_id])
    await actor.tick()
    await come_online(actor_system, node_id, version="agent-1.9.0")
    assert (await actor.tick()).confirmed == []
    assert await row_statuses(actor_system.db, update.id) == {node_id: "Sent"}


async def test_staged_rollout_sends_stage_one_then_halts_on_crashes_of_the_updated_node(
    actor: RolloutActor,
    actor_system: ActorSystem,
    update: updates.NodeUpdate,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    db = actor_system.db
    ids = [await idle_node(actor_system) for _ in range(10)]
    await updates.queue_rollout(db, update.id, ids)

    (first,) = (await actor.tick()).sent
    assert await stored_update_commands(db) == 1
    await come_online(actor_system, first)
    assert (await actor.tick()).confirmed == [first]

    # Two crashes in ten minutes on the one updated node, none on the nine others.
    confirmed_at = clock()
    await crash(db, first, confirmed_at + timedelta(minutes=2))
    await crash(db, first, confirmed_at + timedelta(minutes=8))
    clock.jump(600)
    caplog.set_level(logging.WARNING, logger="flatrender.rollout")
    report = await actor.tick()
    assert report.halted == [update.id] and report.sent == []

    halted = await updates.get(db, update.id)
    assert halted is not None and halted.in_update_queue is False
    assert halted.halted_reason is not None
    assert "2 crashes on 1 updated nodes" in halted.halted_reason
    assert "0 crashes on 9 nodes" in halted.halted_reason
    statuses = await row_statuses(db, update.id)
    assert statuses.pop(first) == "Confirmed"
    assert set(statuses.values()) == {"Halted"}
    (line,) = [r for r in caplog.records if r.name == "flatrender.rollout"]
    assert line.levelno == logging.WARNING and "halted" in line.getMessage()

    clock.jump(3600)
    await actor.tick()
    assert await stored_update_commands(db) == 1  # the others never got it
    assert halted.rolled_out_to_node_ids == (first,)


async def test_next_stage_doubles_once_the_first_is_observed_without_trouble(
    actor: RolloutActor, actor_system: ActorSystem, update: updates.NodeUpdate, clock: Clock
) -> None:
    ids = [await idle_node(actor_system) for _ in range(10)]
    await updates.queue_rollout(actor_system.db, update.id, ids)
    (first,) = (await actor.tick()).sent
    await come_online(actor_system, first)
    await actor.tick()
    clock.jump(OBSERVE - 1)
    assert (await actor.tick()).sent == []
    clock.jump(1)
    second = (await actor.tick()).sent
    assert len(second) == 2 and first not in second
    assert await stored_update_commands(actor_system.db) == 3


async def test_a_node_silent_past_the_confirm_timeout_halts_the_rollout(
    actor: RolloutActor, actor_system: ActorSystem, update: updates.NodeUpdate, clock: Clock
) -> None:
    ids = [await idle_node(actor_system) for _ in range(3)]
    await updates.queue_rollout(actor_system.db, update.id, ids)
    (first,) = (await actor.tick()).sent
    clock.jump(UpdatesConfig().confirm_timeout_sec)
    report = await actor.tick()
    assert report.halted == [update.id] and report.failed == [first]
    halted = await updates.get(actor_system.db, update.id)
    assert halted is not None and "did not report agent version" in str(halted.halted_reason)


async def test_a_node_of_a_halted_update_that_installs_late_is_still_confirmed(
    actor: RolloutActor, actor_system: ActorSystem, update: updates.NodeUpdate
) -> None:
    db = actor_system.db
    a = await idle_node(actor_system)
    await updates.queue_rollout(db, update.id, [a])
    await actor.tick()
    _, wave_at = await updates.targets(db, update.id, datetime.now(UTC))
    assert await updates.halt(db, update.id, wave_at, "by hand", [])
    await come_online(actor_system, a)
    assert (await actor.tick()).confirmed == [a]
    assert await updates.pending(db) == []


async def test_a_node_without_an_actor_fails_and_the_wave_ends(
    actor: RolloutActor, actor_system: ActorSystem, update: updates.NodeUpdate
) -> None:
    ghost = await add_node(actor_system.db)  # a row, but never started in the fleet
    await actor_system.db.execute("UPDATE nodes SET status = 'Idle' WHERE id = $1", ghost)
    await updates.queue_rollout(actor_system.db, update.id, [ghost])
    assert (await actor.tick()).failed == [ghost]
    assert (await actor.tick()).finished == [update.id]


class CountingDb:
    """A Database stand-in that counts statements."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.statements = 0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.db, name)

        async def counted(*args: Any) -> Any:
            self.statements += 1
            return await method(*args)

        return counted


async def test_an_idle_round_is_one_query(
    actor_system: ActorSystem, store: MinioStore, rollout_config: Config, update: Any
) -> None:
    counting = CountingDb(actor_system.db)
    actor = RolloutActor(counting, actor_system.fleet, store, lambda: rollout_config)  # type: ignore[arg-type]
    report = await actor.tick()
    assert report.updates == 0 and counting.statements == 1


class DownDb:
    async def fetch(self, *args: Any) -> Any:
        raise DatabaseUnavailable("connection refused")


async def test_a_database_outage_is_logged_and_the_round_skipped(
    actor_system: ActorSystem,
    store: MinioStore,
    rollout_config: Config,
    caplog: pytest.LogCaptureFixture,
) -> None:
    actor = RolloutActor(DownDb(), actor_system.fleet, store, lambda: rollout_config)  # type: ignore[arg-type]
    report = await actor.tick()
    assert report.updates == 0
    assert "database unavailable" in caplog.text


class DownStore:
    async def presign_get(self, key: str, ttl_sec: int | None = None) -> str:
        raise StorageUnavailable("object storage is unreachable")


async def test_a_storage_outage_leaves_nodes_queued_for_the_next_round(
    actor_system: ActorSystem, rollout_config: Config, update: updates.NodeUpdate
) -> None:
    node_id = await idle_node(actor_system)
    await updates.queue_rollout(actor_system.db, update.id, [node_id])
    actor = RolloutActor(actor_system.db, actor_system.fleet, DownStore(), lambda: rollout_config)  # type: ignore[arg-type]
    report = await actor.tick()
    assert report.skipped == [update.id] and report.sent == []
    assert await row_statuses(actor_system.db, update.id) == {node_id: "Queued"}


async def test_run_publishes_itself_and_wake_starts_a_round_at_once(
    actor_system: ActorSystem,
    store: MinioStore,
    config: Config,
    update: updates.NodeUpdate,
    nursery: trio.Nursery,
) -> None:
    slow = attrs.evolve(config, updates=UpdatesConfig(tick_sec=3600))
    rounds: trio.MemorySendChannel[TickReport]
    rounds, reports = trio.open_memory_channel[TickReport](10)

    class Observed(RolloutActor):
        async def tick(self) -> TickReport:
            report = await super().tick()
            await rounds.send(report)
            return report

    actor = Observed(actor_system.db, actor_system.fleet, store, lambda: slow)
    assert await nursery.start(actor.run) is actor
    assert (await reports.receive()).updates == 0  # the first round runs at once
    node_id = await idle_node(actor_system)
    await updates.queue_rollout(actor_system.db, update.id, [node_id])
    actor.wake()
    with trio.fail_after(5):
        assert (await reports.receive()).sent == [node_id]
    assert len(await commands(actor_system, node_id)) == 1
