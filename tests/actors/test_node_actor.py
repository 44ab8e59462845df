"""NodeActor against a real PostgreSQL, with trio's mock clock for the heartbeat deadline."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID, uuid4

import pytest
import trio
import trio.testing

from flatrender.actors import node
from flatrender.actors.system import ActorSystem
from flatrender.domain.model import CommandType, HealthSample, NodeStatus
from flatrender.persistence import nodes
from flatrender.storage import MinioStore

TIMEOUT = 15.0  # the default [nodes] heartbeat_timeout_sec


@pytest.fixture
def mock_clock() -> trio.testing.MockClock:
    # No autojump: time moves only when a test jumps it, so real DB I/O never races the clock.
    return trio.testing.MockClock()


def sample(node_id: UUID, job: UUID | None = None) -> HealthSample:
    return HealthSample(
        node_id=node_id,
        recorded_at=datetime.now(UTC),
        status="Busy" if job else "Idle",
        cpu_pct=42,
        ram_available_mb=2048,
        ae_running=job is not None,
        current_job_id=job,
        current_frame=None,
        cache_used_gb=3,
    )


async def register(system: ActorSystem, name: str = "n1") -> UUID:
    node_id = uuid4()
    new = nodes.NewNode(name, "eu", "10.0.0.1", 9000, "2024")
    await system.fleet.register(node_id, new)
    return node_id


async def heartbeat(
    system: ActorSystem, node_id: UUID, job: UUID | None = None, acked: tuple[UUID, ...] = ()
) -> node.HeartbeatAnswer:
    answer: node.HeartbeatAnswer = await system.fleet.call(
        node_id, lambda r: node.Heartbeat(sample(node_id, job), acked, r)
    )
    return answer


async def status(system: ActorSystem, node_id: UUID) -> NodeStatus:
    view: node.NodeView = await system.fleet.call(node_id, node.Inspect)
    return view.state.status


async def db_status(system: ActorSystem, node_id: UUID) -> str:
    return str(await system.db.fetchval("SELECT status FROM nodes WHERE id = $1", node_id))


async def test_registered_node_starts_offline_and_first_heartbeat_makes_it_idle(
    actor_system: ActorSystem,
) -> None:
    node_id = await register(actor_system)
    assert await status(actor_system, node_id) is NodeStatus.OFFLINE
    answer = await heartbeat(actor_system, node_id)
    assert answer.next_heartbeat_in_sec == 5
    assert await status(actor_system, node_id) is NodeStatus.IDLE
    assert await db_status(actor_system, node_id) == "Idle"


async def test_node_goes_offline_exactly_after_the_deadline_not_before(
    actor_system: ActorSystem, mock_clock: trio.testing.MockClock
) -> None:
    node_id = await register(actor_system)
    await heartbeat(actor_system, node_id)
    mock_clock.jump(TIMEOUT - 0.01)
    await trio.testing.wait_all_tasks_blocked()
    assert await status(actor_system, node_id) is NodeStatus.IDLE
    mock_clock.jump(0.02)
    await trio.testing.wait_all_tasks_blocked()
    assert await status(actor_system, node_id) is NodeStatus.OFFLINE
    assert await db_status(actor_system, node_id) == "Offline"


async def test_each_heartbeat_pushes_the_deadline_back(
    actor_system: ActorSystem, mock_clock: trio.testing.MockClock
) -> None:
    node_id = await register(actor_system)
    for _ in range(5):
        await heartbeat(actor_system, node_id)
        mock_clock.jump(TIMEOUT - 1)
        await trio.testing.wait_all_tasks_blocked()
        assert await status(actor_system, node_id) is NodeStatus.IDLE
    mock_clock.jump(1.01)
    await trio.testing.wait_all_tasks_blocked()
    assert await status(actor_system, node_id) is NodeStatus.OFFLINE


async def test_late_heartbeat_after_offline_releases_stale_work(
    actor_system: ActorSystem, mock_clock: trio.testing.MockClock
) -> None:
    node_id = await register(actor_system)
    job = uuid4()
    await heartbeat(actor_system, node_id)
    await heartbeat(actor_system, node_id, job)
    assert await status(actor_system, node_id) is NodeStatus.BUSY
    mock_clock.jump(TIMEOUT + 1)
    await trio.testing.wait_all_tasks_blocked()
    assert await status(actor_system, node_id) is NodeStatus.OFFLINE
    answer = await heartbeat(actor_system, node_id, job)
    assert await status(actor_system, node_id) is NodeStatus.IDLE
    assert [c.type for c in answer.commands] == [CommandType.RELEASE]


async def test_commands_are_redelivered_until_acked_and_acks_are_idempotent(
    actor_system: ActorSystem,
) -> None:
    node_id = await register(actor_system)
    command = await actor_system.fleet.call(
        node_id, lambda r: node.Enqueue(CommandType.CLOSE_AE, {}, r)
    )
    for _ in range(2):
        answer = await heartbeat(actor_system, node_id)
        assert [c.id for c in answer.commands] == [command.id]
    answer = await heartbeat(actor_system, node_id, acked=(command.id,))
    assert answer.commands == ()
    answer = await heartbeat(actor_system, node_id, acked=(command.id, uuid4()))
    assert answer.commands == ()
    acked_at = await actor_system.db.fetchval(
        "SELECT acked_at FROM node_commands WHERE id = $1", command.id
    )
    assert acked_at is not None


async def test_actor_rebuilt_from_postgres_keeps_status_and_pending_commands(db, config) -> None:
    first = ActorSystem(db, MinioStore(config.s3), lambda: config)
    async with trio.open_nursery() as nursery:
        await nursery.start(first.run)
        node_id = await register(first)
        await heartbeat(first, node_id)
        command = await first.fleet.call(
            node_id, lambda r: node.Enqueue(CommandType.RESTART, {}, r)
        )
        await first.drain()
    second = ActorSystem(db, MinioStore(config.s3), lambda: config)
    async with trio.open_nursery() as nursery:
        await nursery.start(second.run)
        assert await status(second, node_id) is NodeStatus.IDLE
        answer = await heartbeat(second, node_id)
        assert [c.id for c in answer.commands] == [command.id]
        await second.drain()


async def test_heartbeat_storm_after_restart_gives_no_false_offline(
    db, config, mock_clock: trio.testing.MockClock
) -> None:
    first = ActorSystem(db, MinioStore(config.s3), lambda: config)
    async with trio.open_nursery() as nursery:
        await nursery.start(first.run)
        ids = [await register(first, f"n{i}") for i in range(20)]
        for node_id in ids:
            await heartbeat(first, node_id)
        await first.drain()
    # The daemon was down for a long while; the nodes kept trying.
    mock_clock.jump(120)
    second = ActorSystem(db, MinioStore(config.s3), lambda: config)
    async with trio.open_nursery() as nursery:
        await nursery.start(second.run)
        mock_clock.jump(TIMEOUT - 1)  # each node still has a fresh deadline
        await trio.testing.wait_all_tasks_blocked()
        async with trio.open_nursery() as storm:
            for node_id in ids:
                storm.start_soon(heartbeat, second, node_id)
        for node_id in ids:
            assert await status(second, node_id) is NodeStatus.IDLE
        await second.drain()


async def test_assigned_work_keeps_the_node_busy_until_unassigned(
    actor_system: ActorSystem,
) -> None:
    node_id = await register(actor_system)
    await heartbeat(actor_system, node_id)
    work = uuid4()
    command = await actor_system.fleet.call(
        node_id, lambda r: node.Assign(work, CommandType.RENDER_FRAMES, {"frame_job_id": "x"}, r)
    )
    assert await db_status(actor_system, node_id) == "Busy"
    # The node has not started it yet: its heartbeat reports no job, it stays Busy.
    answer = await heartbeat(actor_system, node_id)
    assert [c.id for c in answer.commands] == [command.id]
    assert await status(actor_system, node_id) is NodeStatus.BUSY
    with pytest.raises(node.NodeNotIdle):
        await actor_system.fleet.call(
            node_id, lambda r: node.Assign(uuid4(), CommandType.RENDER_FRAMES, {}, r)
        )
    await actor_system.fleet.call(node_id, lambda r: node.Unassign(work, True, r))
    assert await status(actor_system, node_id) is NodeStatus.IDLE
    assert await db_status(actor_system, node_id) == "Idle"
    await actor_system.fleet.call(node_id, lambda r: node.Unassign(work, True, r))  # harmless


async def test_a_dead_node_drops_its_assignments(
    actor_system: ActorSystem, mock_clock: trio.testing.MockClock
) -> None:
    node_id = await register(actor_system)
    await heartbeat(actor_system, node_id)
    await actor_system.fleet.call(
        node_id, lambda r: node.Assign(uuid4(), CommandType.RENDER_FRAMES, {}, r)
    )
    mock_clock.jump(TIMEOUT + 1)
    await trio.testing.wait_all_tasks_blocked()
    answer = await heartbeat(actor_system, node_id)
    assert await status(actor_system, node_id) is NodeStatus.IDLE
    # Its range was requeued elsewhere: the old RenderFrames never reaches it.
    assert [c.type for c in answer.commands] == []


async def test_load_shedding_asks_for_longer_intervals_and_waits_longer(
    db, config, mock_clock: trio.testing.MockClock
) -> None:
    import attrs

    # A budget of one heartbeat per 20 s: even a one-node fleet is asked to call every 20 s.
    shed = attrs.evolve(config, nodes=attrs.evolve(config.nodes, max_heartbeats_per_sec=0.05))
    system = ActorSystem(db, MinioStore(config.s3), lambda: shed)
    async with trio.open_nursery() as nursery:
        await nursery.start(system.run)
        node_id = await register(system)
        answer = await heartbeat(system, node_id)
        assert answer.next_heartbeat_in_sec == 20
        mock_clock.jump(3 * 20 - 0.5)  # far past the 15 s timeout, within three intervals
        await trio.testing.wait_all_tasks_blocked()
        assert await status(system, node_id) is NodeStatus.IDLE
        mock_clock.jump(1)
        await trio.testing.wait_all_tasks_blocked()
        assert await status(system, node_id) is NodeStatus.OFFLINE
        await system.drain()


async def test_delivered_work_a_node_no_longer_has_is_released(actor_system: ActorSystem) -> None:
    node_id = await register(actor_system)
    await heartbeat(actor_system, node_id)
    work = uuid4()
    command = await actor_system.fleet.call(
        node_id,
        lambda r: node.Assign(work, CommandType.RENDER_FRAMES, {"frame_job_id": str(work)}, r),
    )
    # Not yet acknowledged: however idle the node says it is, the work is still on its way.
    for _ in range(5):
        await heartbeat(actor_system, node_id)
    assert await status(actor_system, node_id) is NodeStatus.BUSY
    # Acknowledged, then idle for three heartbeats in a row: the node dropped it.
    await heartbeat(actor_system, node_id, acked=(command.id,))
    await heartbeat(actor_system, node_id)
    assert await status(actor_system, node_id) is NodeStatus.BUSY
    await heartbeat(actor_system, node_id)
    assert await status(actor_system, node_id) is NodeStatus.IDLE
    view: node.NodeView = await actor_system.fleet.call(node_id, node.Inspect)
    assert view.state.busy is False


async def test_a_node_rendering_something_keeps_its_queued_work(actor_system: ActorSystem) -> None:
    node_id = await register(actor_system)
    await heartbeat(actor_system, node_id)
    work = uuid4()
    command = await actor_system.fleet.call(
        node_id,
        lambda r: node.Assign(work, CommandType.RENDER_FRAMES, {"frame_job_id": str(work)}, r),
    )
    await heartbeat(actor_system, node_id, job=uuid4(), acked=(command.id,))
    for _ in range(5):
        await heartbeat(actor_system, node_id, job=uuid4())
    assert await status(actor_system, node_id) is NodeStatus.BUSY


async def test_work_moved_before_delivery_takes_its_command_back(
    actor_system: ActorSystem,
) -> None:
    node_id = await register(actor_system)
    await heartbeat(actor_system, node_id)
    work = uuid4()
    payload = {"frame_job_id": str(work)}
    await actor_system.fleet.call(
        node_id, lambda r: node.Assign(work, CommandType.RENDER_FRAMES, payload, r)
    )
    await actor_system.fleet.call(node_id, lambda r: node.Unassign(work, False, r))
    answer = await heartbeat(actor_system, node_id)
    assert answer.commands == ()
    assert await status(actor_system, node_id) is NodeStatus.IDLE


async def test_a_node_just_handed_work_beats_sooner_until_it_acknowledges_the_command(
    actor_system: ActorSystem,
) -> None:
    node_id = await register(actor_system)
    assert (await heartbeat(actor_system, node_id)).next_heartbeat_in_sec == 5  # nothing waits
    work = uuid4()
    command = await actor_system.fleet.call(
        node_id, lambda r: node.Assign(work, CommandType.RENDER_FRAMES, {"frame_job_id": "x"}, r)
    )
    answer = await heartbeat(actor_system, node_id)  # delivers the command: a short range may
    assert answer.next_heartbeat_in_sec == 1  # end before a regular beat
    # Acknowledged and still rendering: a long range, the regular beat again.
    acked = await heartbeat(actor_system, node_id, job=work, acked=(command.id,))
    assert acked.next_heartbeat_in_sec == 5


async def test_an_idle_node_beats_sooner_only_while_work_waits_that_it_may_take(
    actor_system: ActorSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    node_id = await register(actor_system)
    other = await register(actor_system, "n2")
    await heartbeat(actor_system, node_id)
    await heartbeat(actor_system, other)
    # Work waits, and the last round found nothing that may run on ``other``.
    monkeypatch.setattr(actor_system.scheduler, "work_waiting_for", lambda n: n != other)
    assert (await heartbeat(actor_system, node_id)).next_heartbeat_in_sec == 1
    assert (await heartbeat(actor_system, other)).next_heartbeat_in_sec == 5


async def test_a_node_whose_last_work_was_short_beats_sooner_while_busy_with_the_next(
    actor_system: ActorSystem, mock_clock: trio.testing.MockClock
) -> None:
    node_id = await register(actor_system)
    await heartbeat(actor_system, node_id)

    async def give() -> tuple[UUID, UUID]:
        work = uuid4()
        command = await actor_system.fleet.call(
            node_id,
            lambda r: node.Assign(work, CommandType.RENDER_FRAMES, {"frame_job_id": "x"}, r),
        )
        return work, command.id

    first, command = await give()
    acked = await heartbeat(actor_system, node_id, job=first, acked=(command,))
    assert acked.next_heartbeat_in_sec == 5  # no history: its work may be long
    mock_clock.jump(2)
    await actor_system.fleet.call(node_id, lambda r: node.Unassign(first, True, r))
    await heartbeat(actor_system, node_id)  # done with it: Idle
    second, command = await give()  # its last range took 2 s
    acked = await heartbeat(actor_system, node_id, job=second, acked=(command,))
    assert acked.next_heartbeat_in_sec == 1
    mock_clock.jump(5)  # this one outlasts a regular interval: the regular beat
    assert (await heartbeat(actor_system, node_id, job=second)).next_heartbeat_in_sec == 5
