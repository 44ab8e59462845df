"""Node updates and rollouts on a real, migrated database: numbering, listing, queueing in one
transaction, waves, and the compare-and-set writes of the rollout actor."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest
import trio

from flatrender.domain.rollout import RolloutStatus
from flatrender.persistence import updates
from flatrender.persistence.db import Database
from tests.persistence.test_health import add_node

S = RolloutStatus
NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def new_update(name: str = "agent-2.0.0.zip") -> updates.NewUpdate:
    update_id = uuid4()
    return updates.NewUpdate(
        update_id, name, f"updates/{update_id}/{name}", "ab" * 32, 12, "fixes", "2024"
    )


async def published(db: Database, name: str = "agent-2.0.0.zip") -> updates.NodeUpdate:
    return await updates.publish(db, new_update(name))


async def statuses(db: Database, update_id: UUID) -> dict[UUID, str]:
    rows = await db.fetch(
        "SELECT node_id, status FROM node_update_rollouts WHERE update_id = $1", update_id
    )
    return {r["node_id"]: r["status"] for r in rows}


async def set_status(db: Database, update_id: UUID, node_id: UUID, status: str) -> None:
    await db.execute(
        "UPDATE node_update_rollouts SET status = $3 WHERE update_id = $1 AND node_id = $2",
        update_id,
        node_id,
        status,
    )


async def test_publish_numbers_updates_one_after_another_even_concurrently(db: Database) -> None:
    first = await published(db)
    assert first.update_number == 1
    assert (first.sha256, first.size_bytes, first.target_ae_version) == ("ab" * 32, 12, "2024")
    assert first.in_update_queue is False and first.rolled_out_to_node_ids == ()
    numbers: list[int] = []

    async def one() -> None:
        numbers.append((await published(db)).update_number)

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(one)
    assert sorted(numbers) == [2, 3, 4]


async def test_list_is_newest_first_and_shows_confirmed_nodes_only(db: Database) -> None:
    old, new = await published(db, "agent-1.zip"), await published(db, "agent-2.zip")
    a, b = await add_node(db), await add_node(db)
    await updates.queue_rollout(db, old.id, [a, b])
    await updates.mark_sent(db, old.id, a, NOW)
    assert await updates.mark_confirmed(db, old.id, [a, b], NOW, S.SENT) == [a]
    listed = await updates.list_updates(db)
    assert [u.id for u in listed] == [new.id, old.id]
    assert listed[1].rolled_out_to_node_ids == (a,)
    assert listed[1].in_update_queue is True
    got = await updates.get(db, old.id)
    assert got is not None and got.rolled_out_to_node_ids == (a,)
    assert await updates.get(db, uuid4()) is None


async def test_queue_rollout_of_an_unknown_update_raises(db: Database) -> None:
    with pytest.raises(updates.UpdateNotFound):
        await updates.queue_rollout(db, uuid4(), [await add_node(db)])


async def test_unknown_node_ids_are_all_listed_and_nothing_is_queued(db: Database) -> None:
    update = await published(db)
    known, ghost1, ghost2 = await add_node(db), uuid4(), uuid4()
    with pytest.raises(updates.UnknownNodes) as raised:
        await updates.queue_rollout(db, update.id, [ghost1, known, ghost2])
    assert raised.value.node_ids == (ghost1, ghost2)
    assert await statuses(db, update.id) == {}
    got = await updates.get(db, update.id)
    assert got is not None and got.in_update_queue is False


async def test_queue_rollout_ignores_duplicates_and_skips_confirmed_and_in_flight_nodes(
    db: Database,
) -> None:
    update = await published(db)
    a, b, c = await add_node(db), await add_node(db), await add_node(db)
    first = await updates.queue_rollout(db, update.id, [a, b, a])
    assert first == updates.Queued((a, b), {})
    await updates.mark_sent(db, update.id, a, NOW)
    await updates.mark_confirmed(db, update.id, [a], NOW, S.SENT)
    await updates.mark_sent(db, update.id, b, NOW)
    again = await updates.queue_rollout(db, update.id, [a, b, c])
    assert again == updates.Queued((c,), {a: "Confirmed", b: "Sent"})


async def test_a_halted_update_can_be_rolled_out_again_and_its_reason_is_cleared(
    db: Database,
) -> None:
    update = await published(db)
    a, b = await add_node(db), await add_node(db)
    await updates.queue_rollout(db, update.id, [a, b])
    _, wave_at = await updates.targets(db, update.id, NOW)
    assert await updates.halt(db, update.id, wave_at, "too many crashes", [])
    halted = await updates.get(db, update.id)
    assert halted is not None
    assert (halted.in_update_queue, halted.halted_reason) == (False, "too many crashes")
    assert await statuses(db, update.id) == {a: "Halted", b: "Halted"}
    again = await updates.queue_rollout(db, update.id, [b])
    assert again.queued == (b,)
    resumed = await updates.get(db, update.id)
    assert resumed is not None
    assert (resumed.in_update_queue, resumed.halted_reason) == (True, None)
    assert await statuses(db, update.id) == {a: "Halted", b: "Queued"}


async def test_a_request_for_confirmed_nodes_only_queues_nothing(db: Database) -> None:
    update = await published(db)
    a = await add_node(db)
    await updates.queue_rollout(db, update.id, [a])
    await updates.mark_confirmed(db, update.id, [a], NOW, S.QUEUED)
    _, wave_at = await updates.targets(db, update.id, NOW)
    assert await updates.finish(db, update.id, wave_at)
    assert await updates.queue_rollout(db, update.id, [a]) == updates.Queued((), {a: "Confirmed"})
    got = await updates.get(db, update.id)
    assert got is not None and got.in_update_queue is False


async def test_targets_report_wave_membership_and_node_readiness(db: Database) -> None:
    update = await published(db)
    a, b = await add_node(db), await add_node(db)
    await db.execute("UPDATE nodes SET status = 'Idle', node_agent_version = 'x' WHERE id = $1", a)
    await updates.queue_rollout(db, update.id, [a, b])
    await set_status(db, update.id, b, "Failed")
    await trio.sleep(0.01)  # a later transaction: a later now()
    await updates.queue_rollout(db, update.id, [b])
    found, wave_at = await updates.targets(db, update.id, NOW)
    by_id = {t.node_id: t for t in found}
    # Queued a stays in the wave: pending nodes join each new one.
    assert by_id[a].in_wave and by_id[b].in_wave
    assert (by_id[a].node_ready, by_id[a].node_version) == (True, "x")
    assert by_id[b].node_ready is False  # Offline
    await db.execute("UPDATE nodes SET next_maintenance_at = $2 WHERE id = $1", a, NOW)
    found, _ = await updates.targets(db, update.id, NOW)
    assert {t.node_id: t.node_ready for t in found}[a] is False  # due for maintenance
    assert wave_at == await db.fetchval(
        "SELECT max(queued_at) FROM node_update_rollouts WHERE update_id = $1", update.id
    )


async def test_a_finished_waves_nodes_stay_out_of_the_next_wave(db: Database) -> None:
    update = await published(db)
    a, b = await add_node(db), await add_node(db)
    await updates.queue_rollout(db, update.id, [a])
    await updates.mark_confirmed(db, update.id, [a], NOW, S.QUEUED)
    _, wave_at = await updates.targets(db, update.id, NOW)
    assert await updates.finish(db, update.id, wave_at)
    await trio.sleep(0.01)
    await updates.queue_rollout(db, update.id, [b])
    found, _ = await updates.targets(db, update.id, NOW)
    assert {t.node_id: t.in_wave for t in found} == {a: False, b: True}


async def test_a_running_wave_is_merged_into_a_new_request(db: Database) -> None:
    update = await published(db)
    a, b = await add_node(db), await add_node(db)
    await updates.queue_rollout(db, update.id, [a])
    await updates.mark_confirmed(db, update.id, [a], NOW, S.QUEUED)  # still in its queue
    await trio.sleep(0.01)
    await updates.queue_rollout(db, update.id, [b])
    found, _ = await updates.targets(db, update.id, NOW)
    assert {t.node_id: t.in_wave for t in found} == {a: True, b: True}


async def test_status_changes_are_compare_and_set(db: Database) -> None:
    update = await published(db)
    a = await add_node(db)
    await updates.queue_rollout(db, update.id, [a])
    assert await updates.mark_sent(db, update.id, a, NOW)
    assert not await updates.mark_sent(db, update.id, a, NOW)  # no longer Queued
    assert await updates.mark_failed(db, update.id, [a], S.QUEUED) == []
    assert await updates.mark_confirmed(db, update.id, [a], NOW, S.QUEUED) == []
    assert await updates.mark_failed(db, update.id, [a], S.SENT) == [a]


async def test_halt_and_finish_do_nothing_once_a_newer_wave_was_queued(db: Database) -> None:
    update = await published(db)
    a, b = await add_node(db), await add_node(db)
    await updates.queue_rollout(db, update.id, [a])
    _, old_wave = await updates.targets(db, update.id, NOW)
    await trio.sleep(0.01)
    await updates.queue_rollout(db, update.id, [b])
    assert not await updates.halt(db, update.id, old_wave, "stale", [])
    assert not await updates.finish(db, update.id, old_wave)
    got = await updates.get(db, update.id)
    assert got is not None and (got.in_update_queue, got.halted_reason) == (True, None)
    assert await statuses(db, update.id) == {a: "Queued", b: "Queued"}


async def test_finish_refuses_while_a_node_is_pending(db: Database) -> None:
    update = await published(db)
    a = await add_node(db)
    await updates.queue_rollout(db, update.id, [a])
    _, wave_at = await updates.targets(db, update.id, NOW)
    assert not await updates.finish(db, update.id, wave_at)
    await updates.mark_sent(db, update.id, a, NOW)
    assert not await updates.finish(db, update.id, wave_at)
    await updates.mark_confirmed(db, update.id, [a], NOW, S.SENT)
    assert await updates.finish(db, update.id, wave_at)


async def test_halt_fails_silent_nodes_and_halts_queued_ones(db: Database) -> None:
    update = await published(db)
    a, b, c = await add_node(db), await add_node(db), await add_node(db)
    await updates.queue_rollout(db, update.id, [a, b, c])
    await updates.mark_sent(db, update.id, a, NOW)
    await updates.mark_sent(db, update.id, b, NOW)
    _, wave_at = await updates.targets(db, update.id, NOW)
    assert await updates.halt(db, update.id, wave_at, "silent", [a])
    assert await statuses(db, update.id) == {a: "Failed", b: "Sent", c: "Halted"}


async def test_pending_lists_queued_updates_and_halted_ones_with_nodes_in_flight(
    db: Database,
) -> None:
    idle, queued, halted = await published(db), await published(db), await published(db)
    a, b = await add_node(db), await add_node(db)
    await updates.queue_rollout(db, queued.id, [a])
    await updates.queue_rollout(db, halted.id, [a, b])
    await updates.mark_sent(db, halted.id, a, NOW)
    _, wave_at = await updates.targets(db, halted.id, NOW)
    await updates.halt(db, halted.id, wave_at, "crashes", [])
    assert [p.id for p in await updates.pending(db)] == [queued.id, halted.id]
    await updates.mark_confirmed(db, halted.id, [a], NOW, S.SENT)
    assert [p.id for p in await updates.pending(db)] == [queued.id]
    assert idle.id not in [p.id for p in await updates.pending(db)]


async def test_crashes_since_reads_the_given_nodes_from_the_given_time(db: Database) -> None:
    a, b = await add_node(db), await add_node(db)
    for node_id, minutes in ((a, 10), (a, 1), (b, 1)):
        await db.execute(
            "INSERT INTO node_crashes (id, node_id, crashed_at, last_known_frame)"
            " VALUES ($1, $2, $3, $4)",
            uuid4(),
            node_id,
            NOW - timedelta(minutes=minutes),
            minutes,
        )
    found = await updates.crashes_since(db, [a], NOW - timedelta(minutes=5))
    assert [(c.node_id, c.at) for c in found] == [(a, NOW - timedelta(minutes=1))]
