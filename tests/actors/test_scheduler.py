"""The Scheduler's reads and the job system's routing against a real PostgreSQL: the queue order
holds beyond the 2,000 ranges a round reads, and a lost node is news only to its holders."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import trio

from flatrender.actors import job
from flatrender.actors.scheduler import Scheduler
from flatrender.actors.system import ActorSystem
from flatrender.config import Config
from flatrender.domain import job_steps as js
from flatrender.persistence.db import Database
from tests.actors.test_job_actor import rendering_job
from tests.helpers import Tokens

T0 = datetime(2026, 11, 1, tzinfo=UTC)


async def pending_job(db: Database, user_id: UUID, queue: str, queued_at: datetime, n: int) -> UUID:
    """A Rendering job in ``queue`` with ``n`` Pending ranges (rows only: no actor runs)."""
    job_id = await rendering_job(db, user_id)
    await db.execute(
        "UPDATE render_jobs SET step = 'Rendering', priority_queue = $2, queued_at = $3 "
        "WHERE id = $1",
        job_id,
        queue,
        queued_at,
    )
    await db.execute(
        "INSERT INTO frame_jobs (id, job_id, start_frame, end_frame, order_value) "
        "SELECT gen_random_uuid(), $1, i, i, i FROM generate_series(0, $2 - 1) AS i",
        job_id,
        n,
    )
    return job_id


async def test_a_round_reads_the_head_of_the_queue_beyond_2000_pending_ranges(
    db: Database, config: Config, tokens: Tokens
) -> None:
    # Queued first but in the last queue: 2,100 ranges that must not crowd out the others.
    free = await pending_job(db, tokens.user_id, "Free", T0, 2_100)
    later_plan = await pending_job(db, tokens.user_id, "Plan", T0 + timedelta(minutes=2), 3)
    earlier_cash = await pending_job(db, tokens.user_id, "Cash", T0 + timedelta(minutes=1), 2)
    scheduler = Scheduler(db, jobs=None, config=lambda: config)  # type: ignore[arg-type]

    items, replicas = await scheduler._work()

    assert replicas == set()
    assert len(items) == 2_000
    assert [i.job_id for i in items[:5]] == [earlier_cash] * 2 + [later_plan] * 3
    assert [i.order_value for i in items[:5]] == [0, 1, 0, 1, 2]
    assert {i.job_id for i in items[5:]} == {free}
    assert [i.order_value for i in items[5:]] == list(range(1_995))


async def test_a_lost_node_is_news_only_to_the_jobs_holding_work_on_it(
    db: Database, actor_system: ActorSystem, tokens: Tokens, monkeypatch: Any
) -> None:
    from tests.actors.test_node_actor import heartbeat, register

    node_id = await register(actor_system)
    await heartbeat(actor_system, node_id)
    holder = await rendering_job(db, tokens.user_id)
    await actor_system.jobs.start_job(holder)
    with trio.fail_after(5):  # the scheduler hands the holder's range to the one idle node
        while True:
            state: js.JobState = await actor_system.jobs.call(holder, job.Inspect)
            if any(r.node_id == node_id for r in state.ranges):
                break
            await trio.sleep(0.02)
    bystander = await rendering_job(db, tokens.user_id)
    await actor_system.jobs.start_job(bystander)
    told: list[tuple[str, object]] = []

    async def tell(child_id: str, message: object) -> None:
        told.append((child_id, message))

    monkeypatch.setattr(actor_system.jobs, "_tell", tell)
    await actor_system.jobs.node_lost(node_id)
    assert told == [(str(holder), job.NodeGone(node_id))]
    await actor_system.jobs.node_lost(uuid4())  # a node holding nothing: no one is told
    assert len(told) == 1


def test_work_waits_for_an_idle_node_unless_the_last_round_passed_it_over(config: Config) -> None:
    scheduler = Scheduler(None, jobs=None, config=lambda: config)  # type: ignore[arg-type]
    passed, fresh = uuid4(), uuid4()
    assert not scheduler.work_waiting_for(fresh)  # nothing waits
    scheduler.stats.waiting = 3
    scheduler._passed_over = frozenset({passed})
    assert scheduler.work_waiting_for(fresh)
    assert not scheduler.work_waiting_for(passed)
