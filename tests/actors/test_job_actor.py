"""JobActor edges the end-to-end tests only brush against: messages that wait in the inbox when
the job ends (or the actor crashes) are answered at once, never left to their caller's timeout."""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

import attrs
import pytest
import trio

from flatrender.actors import job
from flatrender.actors.system import ActorSystem
from flatrender.domain import job_steps as js
from flatrender.domain.catalog import ProjectSpec, Scene
from flatrender.persistence import catalog, jobs, ledger
from flatrender.persistence.db import Database
from flatrender.persistence.job_state import ConcurrentUpdate
from tests.helpers import Tokens, bearer

PRICE = 90
FRAMES = 240


async def rendering_job(db: Database, user_id: UUID) -> UUID:
    """A charged job whose replica exists: its actor plans Pending ranges and waits for nodes."""
    project_id = uuid4()
    project = await catalog.upsert(
        db,
        project_id,
        ProjectSpec(
            owner_user_id=user_id,
            name="Promo",
            template_md5="a" * 32,
            template_url="demo://promo",
            ae_version="2024",
            frame_rate=30,
            total_frames=FRAMES,
            duration_sec=FRAMES / 30,
            scenes=[Scene("main", 0, FRAMES - 1)],
        ),
    )
    await db.execute(
        "INSERT INTO replicas (saved_project_id, project_version, storage_key) VALUES ($1, $2, $3)",
        project_id,
        project.version,
        f"replicas/{project_id}/{project.version}.aep",
    )
    await ledger.credit(db, user_id, 1_000)
    new = jobs.NewJob(
        id=uuid4(),
        user_id=user_id,
        saved_project_id=project_id,
        project_version=project.version,
        name="Promo",
        priority_queue="Cash",
        price_type="Cash",
        paid_price_minor=PRICE,
        quality="High",
        resolution="HD",
        frame_rate=30,
        duration_sec=FRAMES / 30,
        has_voiceover=False,
        end_frame=FRAMES - 1,
        discount_code=None,
        support_flatrender=False,
        tell_me_when_done=False,
        preferred_region=None,
    )
    async with db.transaction() as conn:
        await ledger.lock_account(conn, user_id)
        row = await jobs.insert_job(conn, new)
        await ledger.append(conn, user_id, "charge", -PRICE, job_id=row.id)
    return row.id


async def start_actor(
    nursery: trio.Nursery, system: ActorSystem, job_id: UUID
) -> trio.MemorySendChannel[Any]:
    """The job's actor, run here rather than under the job system so the test owns its inbox."""

    async def run(*, task_status: trio.TaskStatus[trio.MemorySendChannel[Any]]) -> None:
        try:
            await job.JobActor.run(system.jobs.deps, job_id, task_status=task_status)
        except* ConcurrentUpdate:
            pass  # the crash the test provoked

    inbox: trio.MemorySendChannel[Any] = await nursery.start(run)
    return inbox


def queue(inbox: trio.MemorySendChannel[Any], make: Any) -> trio.MemoryReceiveChannel[Any]:
    """Put a message in the inbox now (no checkpoint: messages queue in this order). Its reply
    goes to a one-item channel, which the actor uses like any reply (``answer``/``fail``)."""
    send: Any
    send, receive = trio.open_memory_channel[Any](1)
    inbox.send_nowait(make(send))
    return receive


async def answer_of(receive: trio.MemoryReceiveChannel[Any]) -> Any:
    """The answer, or EndOfChannel when the actor failed the request; hanging is a failure."""
    with trio.fail_after(2):
        return await receive.receive()


async def inspect(inbox: trio.MemorySendChannel[Any]) -> js.JobState:
    state: js.JobState = await answer_of(queue(inbox, job.Inspect))
    return state


async def test_messages_queued_behind_a_cancel_are_answered_when_the_job_ends(
    db: Database, actor_system: ActorSystem, nursery: trio.Nursery, tokens: Tokens
) -> None:
    job_id = await rendering_job(db, tokens.user_id)
    inbox = await start_actor(nursery, actor_system, job_id)
    state = await inspect(inbox)
    assert state.step is js.JobStep.RENDERING
    pending = state.ranges[0]
    node_id = uuid4()

    cancel = queue(inbox, lambda r: job.Cancel("changed my mind", r))
    report = queue(inbox, lambda r: job.ReportFrame(node_id, pending.id, 0, 1, None, r))
    assign = queue(inbox, lambda r: job.AssignRange(pending.id, node_id, r))
    tail = queue(inbox, job.OfferTail)
    looked = queue(inbox, job.Inspect)
    again = queue(inbox, lambda r: job.Cancel("really", r))

    assert await answer_of(cancel) == PRICE  # nothing validated: a full refund
    assert await answer_of(report) is False  # 409 stale_assignment
    assert await answer_of(assign) is False  # the scheduler moves on
    assert await answer_of(tail) is False
    assert (await answer_of(looked)).step is js.JobStep.CANCELLED
    with pytest.raises(trio.EndOfChannel):  # the HTTP layer answers from the committed state
        await answer_of(again)
    with trio.fail_after(2):
        while True:  # then the inbox is closed: later senders learn at once
            try:
                queue(inbox, job.Inspect)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                break
            await trio.sleep(0.01)
    refunds = await db.fetch(
        "SELECT amount_minor FROM ledger_entries WHERE job_id = $1 AND kind = 'refund'", job_id
    )
    assert [r["amount_minor"] for r in refunds] == [PRICE]


async def test_messages_queued_behind_a_crash_fail_at_once(
    db: Database, actor_system: ActorSystem, nursery: trio.Nursery, tokens: Tokens
) -> None:
    job_id = await rendering_job(db, tokens.user_id)
    inbox = await start_actor(nursery, actor_system, job_id)
    await inspect(inbox)
    # Another writer moved the row on: the actor's next commit fails and the actor crashes.
    await db.execute("UPDATE render_jobs SET revision = revision + 10 WHERE id = $1", job_id)

    cancel = queue(inbox, lambda r: job.Cancel("changed my mind", r))
    looked = queue(inbox, job.Inspect)

    with pytest.raises(trio.EndOfChannel):
        await answer_of(cancel)
    with pytest.raises(trio.EndOfChannel):  # not its caller's 10 s timeout
        await answer_of(looked)


async def test_concurrent_cancels_answer_the_same_refund_and_refund_once(
    client: Any, db: Database, actor_system: ActorSystem, tokens: Tokens
) -> None:
    job_id = await rendering_job(db, tokens.user_id)
    await actor_system.jobs.start_job(job_id)
    answers: list[Any] = []

    async def cancel() -> None:
        response = await client.post(
            f"/v1/renders/{job_id}/cancel", json={}, headers=bearer(tokens.user)
        )
        answers.append((response.status_code, await response.get_json()))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(cancel)
    assert answers == [(200, {"cancelled": True, "refund_amount_minor": PRICE})] * 3
    refunds = await db.fetch(
        "SELECT amount_minor FROM ledger_entries WHERE job_id = $1 AND kind = 'refund'", job_id
    )
    assert [r["amount_minor"] for r in refunds] == [PRICE]


async def test_a_batch_of_ranges_is_committed_once_and_skips_a_node_that_refuses(
    db: Database, actor_system: ActorSystem, nursery: trio.Nursery, tokens: Tokens
) -> None:
    from flatrender.actors import node
    from flatrender.domain.model import CommandType
    from tests.actors.test_node_actor import heartbeat, register

    willing, unwilling = await register(actor_system, "n1"), await register(actor_system, "n2")
    for node_id in (willing, unwilling):
        await heartbeat(actor_system, node_id)
    job_id = await rendering_job(db, tokens.user_id)
    inbox = await start_actor(nursery, actor_system, job_id)  # not the scheduler's to offer
    first, second = (await inspect(inbox)).ranges[:2]  # two idle nodes: two ranges planned
    await actor_system.fleet.call(
        unwilling, lambda r: node.Patch(node.NodePatch(accepts_new_jobs=False), r)
    )
    revision = await db.fetchval("SELECT revision FROM render_jobs WHERE id = $1", job_id)

    pairs = ((first.id, willing), (second.id, unwilling))
    taken = await answer_of(queue(inbox, lambda r: job.AssignRanges(pairs, r)))

    assert taken == frozenset({first.id})
    state = await inspect(inbox)
    assert state.range(first.id) == attrs.evolve(
        first, status=js.RangeStatus.ASSIGNED, node_id=willing
    )
    assert state.range(second.id) == second  # still Pending: the next round offers it again
    rows = await db.fetch("SELECT id, status, node_id FROM frame_jobs WHERE job_id = $1", job_id)
    assert {r["id"]: (r["status"], r["node_id"]) for r in rows} == {
        first.id: ("Assigned", willing),
        second.id: ("Pending", None),
    }
    assert (
        await db.fetchval("SELECT revision FROM render_jobs WHERE id = $1", job_id) == revision + 1
    )  # one commit for the batch
    view: node.NodeView = await actor_system.fleet.call(willing, node.Inspect)
    assert [(c.type, c.payload["frame_job_id"]) for c in view.commands] == [
        (CommandType.RENDER_FRAMES, str(first.id))
    ]
    unwilling_view: node.NodeView = await actor_system.fleet.call(unwilling, node.Inspect)
    assert unwilling_view.commands == ()


async def crashing_node(
    db: Database, actor_system: ActorSystem, nursery: trio.Nursery, tokens: Tokens
) -> tuple[UUID, trio.MemorySendChannel[Any], js.RangeState, UUID]:
    """A job's actor (the test's own) whose first range is held by an idle node."""
    from tests.actors.test_node_actor import heartbeat, register

    node_id = await register(actor_system, "n1")
    await heartbeat(actor_system, node_id)
    job_id = await rendering_job(db, tokens.user_id)
    inbox = await start_actor(nursery, actor_system, job_id)
    first = (await inspect(inbox)).ranges[0]
    assert await answer_of(queue(inbox, lambda r: job.AssignRange(first.id, node_id, r)))
    return job_id, inbox, first, node_id


def crash_of(node_id: UUID, job_id: UUID, range_id: UUID) -> Any:
    from flatrender.persistence import nodes

    report = nodes.CrashReport(node_id, job_id, range_id, 3, "SIGSEGV", "2024", "boom", "")
    return lambda r: job.CrashReported(report, r)


async def test_a_crash_and_its_decision_commit_together_once(
    db: Database, actor_system: ActorSystem, nursery: trio.Nursery, tokens: Tokens
) -> None:
    from flatrender.domain.model import CrashAction

    job_id, inbox, first, node_id = await crashing_node(db, actor_system, nursery, tokens)
    revision = await db.fetchval("SELECT revision FROM render_jobs WHERE id = $1", job_id)

    answer = await answer_of(queue(inbox, crash_of(node_id, job_id, first.id)))
    again = await answer_of(queue(inbox, crash_of(node_id, job_id, first.id)))  # a retry

    assert answer == again == job.CrashAnswer(CrashAction.RESET_AND_RESTART)
    assert (await inspect(inbox)).repair_attempts == 1
    job_row = await db.fetchrow(
        "SELECT revision, repair_attempts FROM render_jobs WHERE id = $1", job_id
    )
    assert (job_row["revision"], job_row["repair_attempts"]) == (revision + 1, 1)
    node_row = await db.fetchrow(
        "SELECT lifetime_crash_count, consecutive_failures FROM nodes WHERE id = $1", node_id
    )
    assert tuple(node_row) == (1, 1)
    assert await db.fetchval("SELECT count(*) FROM node_crashes WHERE node_id = $1", node_id) == 1


async def test_a_crash_whose_job_write_fails_is_not_counted_and_the_node_carries_on(
    db: Database, actor_system: ActorSystem, nursery: trio.Nursery, tokens: Tokens
) -> None:
    from flatrender.actors import node
    from flatrender.domain.model import NodeStatus

    job_id, inbox, first, node_id = await crashing_node(db, actor_system, nursery, tokens)
    # Another writer moved the job's row on: the job's part of the joint transaction fails.
    await db.execute("UPDATE render_jobs SET revision = revision + 10 WHERE id = $1", job_id)

    with pytest.raises(trio.EndOfChannel):  # the job's actor crashed (it is restarted)
        await answer_of(queue(inbox, crash_of(node_id, job_id, first.id)))

    assert await db.fetchval("SELECT count(*) FROM node_crashes WHERE node_id = $1", node_id) == 0
    assert await db.fetchval("SELECT lifetime_crash_count FROM nodes WHERE id = $1", node_id) == 0
    view: node.NodeView = await actor_system.fleet.call(node_id, node.Inspect)  # still serving
    assert view.state.lifetime_crash_count == 0
    assert view.state.status is NodeStatus.BUSY


async def test_a_frame_report_on_a_range_not_the_jobs_is_refused_unlogged(
    db: Database, actor_system: ActorSystem, nursery: trio.Nursery, tokens: Tokens
) -> None:
    job_id = await rendering_job(db, tokens.user_id)
    inbox = await start_actor(nursery, actor_system, job_id)
    await inspect(inbox)

    refused = queue(inbox, lambda r: job.ReportFrame(uuid4(), uuid4(), 0, 1, None, r))

    assert await answer_of(refused) is False  # the HTTP layer answers 404 for it
    logged = await db.fetch("SELECT message FROM job_logs WHERE job_id = $1", job_id)
    assert not [r for r in logged if "stale report" in r["message"]]
