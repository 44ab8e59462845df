"""Node liveness around a restart (DESIGN §8): frozen once shutdown begins, and counted from the
daemon's readiness on start. Real PostgreSQL, trio's mock clock."""

from __future__ import annotations

from uuid import UUID, uuid4

import pytest
import trio
import trio.testing

from flatrender.actors import node
from flatrender.actors.system import ActorSystem
from flatrender.config import Config
from flatrender.domain.model import CommandType, NodeStatus
from flatrender.persistence.db import Database
from flatrender.storage import MinioStore
from tests.actors.test_node_actor import TIMEOUT, db_status, heartbeat, register, status


@pytest.fixture
def mock_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock()


def record_losses(system: ActorSystem) -> list[UUID]:
    lost: list[UUID] = []

    async def node_lost(node_id: UUID) -> None:
        lost.append(node_id)

    system.jobs.node_lost = node_lost  # type: ignore[method-assign]
    return lost


async def test_after_shutdown_begins_a_node_past_its_deadline_stays_and_keeps_its_work(
    actor_system: ActorSystem, mock_clock: trio.testing.MockClock
) -> None:
    lost = record_losses(actor_system)
    node_id = await register(actor_system)
    await heartbeat(actor_system, node_id)
    command = await actor_system.fleet.call(
        node_id, lambda r: node.Assign(uuid4(), CommandType.RENDER_FRAMES, {}, r)
    )
    actor_system.freeze()
    mock_clock.jump(10 * TIMEOUT)
    await trio.testing.wait_all_tasks_blocked()
    assert await status(actor_system, node_id) is NodeStatus.BUSY
    assert await db_status(actor_system, node_id) == "Busy"
    assert lost == []
    # An in-flight request is still served, and the work is still the node's.
    answer = await heartbeat(actor_system, node_id)
    assert [c.id for c in answer.commands] == [command.id]


async def test_without_the_freeze_the_same_node_is_declared_offline_and_loses_its_work(
    actor_system: ActorSystem, mock_clock: trio.testing.MockClock
) -> None:
    lost = record_losses(actor_system)
    node_id = await register(actor_system)
    await heartbeat(actor_system, node_id)
    await actor_system.fleet.call(
        node_id, lambda r: node.Assign(uuid4(), CommandType.RENDER_FRAMES, {}, r)
    )
    mock_clock.jump(TIMEOUT + 1)
    await trio.testing.wait_all_tasks_blocked()
    # Answered once the actor has handled its deadline to the end.
    assert await status(actor_system, node_id) is NodeStatus.OFFLINE
    assert await db_status(actor_system, node_id) == "Offline"
    assert lost == [node_id]


async def test_on_start_every_node_gets_a_full_timeout_from_readiness(
    db: Database, config: Config, mock_clock: trio.testing.MockClock
) -> None:
    first = ActorSystem(db, MinioStore(config.s3), lambda: config)
    async with trio.open_nursery() as nursery:
        await nursery.start(first.run)
        idle, busy = await register(first, "idle"), await register(first, "busy")
        await heartbeat(first, idle)
        await heartbeat(first, busy)
        await first.fleet.call(
            busy, lambda r: node.Assign(uuid4(), CommandType.RENDER_FRAMES, {}, r)
        )
        first.freeze()
        await first.drain()
    mock_clock.jump(120)  # the daemon was down long past every row's last heartbeat
    second = ActorSystem(db, MinioStore(config.s3), lambda: config)
    lost = record_losses(second)
    async with trio.open_nursery() as nursery:
        await nursery.start(second.run)
        # The actors are up long before the daemon serves (a slow HTTP start, say).
        mock_clock.jump(TIMEOUT - 1)
        await trio.testing.wait_all_tasks_blocked()
        second.ready()
        mock_clock.jump(TIMEOUT - 0.5)
        await trio.testing.wait_all_tasks_blocked()
        assert await status(second, idle) is NodeStatus.IDLE
        assert await status(second, busy) is not NodeStatus.OFFLINE
        assert lost == []
        # The busy node's next report (rendering) is accepted, its work still its own.
        answer = await heartbeat(second, busy, uuid4())
        assert [c.type for c in answer.commands] == [CommandType.RENDER_FRAMES]
        assert await status(second, busy) is NodeStatus.BUSY
        # The silent one goes Offline only once a full timeout from readiness has passed.
        mock_clock.jump(1)
        await trio.testing.wait_all_tasks_blocked()
        assert await status(second, idle) is NodeStatus.OFFLINE
        assert await db_status(second, idle) == "Offline"
        assert busy not in lost
        await second.drain()


async def test_once_quiesced_no_self_driven_actor_runs_and_requests_are_still_served(
    actor_system: ActorSystem,
) -> None:
    node_id = await register(actor_system)
    actor_system.freeze()
    await actor_system.quiesce()
    for child_id in ("scheduler", "rollout", "reaper", "notifier"):
        assert not actor_system.root.has_child(child_id)
    actor_system.scheduler.wake()  # what an in-flight request may still do: harmless
    await heartbeat(actor_system, node_id)
    assert await db_status(actor_system, node_id) == "Idle"
