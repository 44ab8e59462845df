"""Actors outlive bad data: a message whose write PostgreSQL refuses is answered to its sender
with `DataRefused` (a 4xx at the HTTP edge) and the actor goes on with its state as it was, so
no client can exhaust a supervisor's restart intensity (issue 10).

The poisons are sent straight to the actors (the HTTP layer refuses most of them before), as
data PostgreSQL itself refuses: NUL in text, an int outside its column's range. Time is trio's
mock clock, moved by hand (real database I/O never races it).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
import attrs
import pytest
import trio
import trio.testing

from flatrender.actors import job, node
from flatrender.actors.supervisor import ChildState
from flatrender.actors.system import ActorSystem
from flatrender.domain import job_steps as js
from flatrender.domain.model import NodeStatus
from flatrender.persistence import nodes
from flatrender.persistence.db import Database, DataRefused
from tests.actors.test_job_actor import (
    PRICE,
    answer_of,
    crash_of,
    crashing_node,
    inspect,
    queue,
    rendering_job,
)
from tests.actors.test_node_actor import heartbeat, register, sample
from tests.helpers import Tokens, bearer

COLUMNS = (
    "SELECT status, cached_template_md5s, cache_used_gb, node_agent_version FROM nodes"
    " WHERE id = $1"
)
POISONED = 50
WITHIN_SEC = 5.0


@pytest.fixture
def mock_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock()


def restarts(system: ActorSystem) -> dict[str, int]:
    """Every supervised actor's restart count, by supervisor and child."""
    counts = {
        f"root/{name}": child.restarts for name, child in system.root.statistics().children.items()
    }
    for name, stats in (("jobs", system.jobs.statistics()), ("nodes", system.fleet.statistics())):
        counts |= {f"{name}/{child_id}": c.restarts for child_id, c in stats.children.items()}
    return counts


def all_running(system: ActorSystem) -> bool:
    return all(
        c.state is ChildState.RUNNING
        for stats in (system.root.statistics(), system.jobs.statistics())
        for c in stats.children.values()
    )


async def test_fifty_poisoned_cancels_in_five_seconds_restart_nothing_then_it_cancels(
    db: Database,
    actor_system: ActorSystem,
    tokens: Tokens,
    mock_clock: trio.testing.MockClock,
) -> None:
    poisoned = await rendering_job(db, tokens.user_id)
    bystander = await rendering_job(db, tokens.other_user_id)
    node_id = await register(actor_system)
    for job_id in (poisoned, bystander):
        await actor_system.jobs.start_job(job_id)
    jobs = actor_system.jobs
    before = await jobs.call(poisoned, job.Inspect)
    assert before.step is js.JobStep.RENDERING

    reasons = ["\x00", "why\x00not", "lone \ud800 surrogate"]
    for i in range(POISONED):
        reason = reasons[i % len(reasons)]
        with pytest.raises(DataRefused):
            await jobs.call(poisoned, lambda r, reason=reason: job.Cancel(reason, r))
        mock_clock.jump(WITHIN_SEC / POISONED)

    assert await jobs.call(poisoned, job.Inspect) == before  # nothing half-applied
    row = await db.fetchrow("SELECT step, cancel_reason FROM render_jobs WHERE id = $1", poisoned)
    assert (row["step"], row["cancel_reason"]) == ("Rendering", None)
    assert set(restarts(actor_system).values()) == {0}
    assert {f"jobs/{poisoned}", f"jobs/{bystander}", f"nodes/{node_id}"} <= set(
        restarts(actor_system)
    )
    assert all_running(actor_system)

    refund = await jobs.call(poisoned, lambda r: job.Cancel("changed my mind", r))

    assert refund == PRICE
    row = await db.fetchrow("SELECT step, cancel_reason FROM render_jobs WHERE id = $1", poisoned)
    assert (row["step"], row["cancel_reason"]) == ("Cancelled", "changed my mind")
    assert (await jobs.call(bystander, job.Inspect)).step is js.JobStep.RENDERING
    assert set(restarts(actor_system).values()) == {0}


async def test_fifty_poisoned_node_messages_restart_nothing_and_change_nothing(
    db: Database, actor_system: ActorSystem, mock_clock: trio.testing.MockClock
) -> None:
    node_id = await register(actor_system)
    other = await register(actor_system, "n2")
    await heartbeat(actor_system, node_id)
    fleet = actor_system.fleet
    online = nodes.OnlineInfo("1.0", "2024", ["2024"], 16, 8, 3, ["a" * 32])

    def poison(i: int) -> Any:
        match i % 4:
            case 0:  # a cache-update with a size outside int4
                return lambda r: node.CacheChanged("Downloaded", "b" * 32, 2**31, r)
            case 1:  # a template hash with NUL in it
                return lambda r: node.CacheChanged("Downloaded", "c\x00", 1, r)
            case 2:  # an agent version with NUL in it
                info = attrs.evolve(online, node_agent_version="1\x00")
                return lambda r: node.Online(info, r)
            case _:  # a heartbeat whose numbers the health table cannot hold
                bad = attrs.evolve(sample(node_id), cpu_pct=2**31)
                return lambda r: node.Heartbeat(bad, (), r)

    before: node.NodeView = await fleet.call(node_id, node.Inspect)
    await actor_system.health.flush()  # the heartbeat's sample is in the row before, too
    stored = await db.fetchrow(COLUMNS, node_id)
    assert tuple(stored)[:2] == ("Idle", [])
    for i in range(POISONED):
        with pytest.raises(DataRefused):
            await fleet.call(node_id, poison(i))
        mock_clock.jump(WITHIN_SEC / POISONED)

    after: node.NodeView = await fleet.call(node_id, node.Inspect)
    assert after == before
    await actor_system.health.flush()
    assert await db.fetchrow(COLUMNS, node_id) == stored
    assert set(restarts(actor_system).values()) == {0}
    assert {f"nodes/{node_id}", f"nodes/{other}"} <= set(restarts(actor_system))

    # The same actor serves good messages as before.
    await fleet.call(node_id, lambda r: node.CacheChanged("Downloaded", "d" * 32, 7, r))
    await fleet.call(node_id, lambda r: node.Online(online, r))
    await heartbeat(actor_system, node_id)
    row = await db.fetchrow(COLUMNS, node_id)
    assert (row["status"], row["cached_template_md5s"], row["node_agent_version"]) == (
        "Idle",
        ["a" * 32],
        "1.0",
    )
    assert set(restarts(actor_system).values()) == {0}


async def test_one_poisoned_frame_report_in_a_batch_is_refused_alone(
    db: Database, actor_system: ActorSystem, nursery: trio.Nursery, tokens: Tokens
) -> None:
    job_id, inbox, first, node_id = await crashing_node(db, actor_system, nursery, tokens)
    now = datetime.now(UTC)

    def report(frame: int, size: int) -> Any:
        return lambda r: job.ReportFrame(node_id, first.id, frame, size, now, r)

    # Queued together (no checkpoint between), they are gathered into one commit.
    answers = [
        queue(inbox, report(first.start_frame, 10)),
        queue(inbox, report(first.start_frame + 1, 10)),
        queue(inbox, report(first.start_frame + 2, 2**63)),  # outside bigint
        queue(inbox, report(first.start_frame + 3, 10)),
    ]

    got = [await answer_of(a) for a in answers]
    assert got[0] is True and got[1] is True and got[3] is True
    assert isinstance(got[2], DataRefused)
    held = (await inspect(inbox)).range(first.id)
    assert held is not None
    assert set(held.reported_frames) == {first.start_frame + f for f in (0, 1, 3)}
    stored = await db.fetch(
        "SELECT frame_number FROM frame_reports WHERE frame_job_id = $1 ORDER BY 1", first.id
    )
    assert [r["frame_number"] for r in stored] == [first.start_frame + f for f in (0, 1, 3)]
    # The refused frame, reported again with a sane size, is taken.
    assert await answer_of(queue(inbox, report(first.start_frame + 2, 10))) is True


async def test_a_crash_report_the_database_refuses_is_refused_and_both_actors_go_on(
    db: Database, actor_system: ActorSystem, nursery: trio.Nursery, tokens: Tokens
) -> None:
    job_id, inbox, first, node_id = await crashing_node(db, actor_system, nursery, tokens)
    make = crash_of(node_id, job_id, first.id)

    def poisoned(r: Any) -> job.CrashReported:
        message: job.CrashReported = make(r)
        return attrs.evolve(message, report=attrs.evolve(message.report, error_log="boom\x00"))

    refused = await answer_of(queue(inbox, poisoned))

    assert isinstance(refused, DataRefused)  # answered by the job, raised by the node's write
    assert await db.fetchval("SELECT count(*) FROM node_crashes WHERE node_id = $1", node_id) == 0
    view: node.NodeView = await actor_system.fleet.call(node_id, node.Inspect)
    assert view.state.lifetime_crash_count == 0 and view.state.status is NodeStatus.BUSY
    assert (await inspect(inbox)).repair_attempts == 0
    answer = await answer_of(queue(inbox, make))  # the same crash, sanely reported
    assert isinstance(answer, job.CrashAnswer)
    assert (await inspect(inbox)).repair_attempts == 1
    assert set(restarts(actor_system).values()) == {0}


async def test_over_http_a_refused_cancel_is_422_and_the_job_cancels_after(
    client: Any, db: Database, actor_system: ActorSystem, tokens: Tokens
) -> None:
    job_id = await rendering_job(db, tokens.user_id)
    await actor_system.jobs.start_job(job_id)
    path = f"/v1/renders/{job_id}/cancel"

    for _ in range(10):
        response = await client.post(path, json={"reason": "\x00"}, headers=bearer(tokens.user))
        assert response.status_code == 422
        assert (await response.get_json())["error"]["code"] == "validation_failed"

    response = await client.post(path, json={"reason": "wrong logo"}, headers=bearer(tokens.user))
    assert response.status_code == 200
    assert (await response.get_json())["refund_amount_minor"] == PRICE
    assert set(restarts(actor_system).values()) == {0}


async def test_the_http_layer_answers_refused_data_422_never_503(
    client: Any, app_state: Any
) -> None:
    route = "/v1/test-only/refused"

    async def refused() -> dict[str, Any]:
        await app_state.db.fetchval("SELECT $1::integer", 2**31)
        return {}

    client.app.add_url_rule(route, "test_only_refused", refused, methods=["GET"])
    response = await client.get(route)

    assert response.status_code == 422
    body = await response.get_json()
    assert body["error"]["code"] == "validation_failed"
    assert body["error"]["details"]["errors"] == [
        {"field": "$", "message": "value out of int32 range"}
    ]
    assert "SELECT" not in body["error"]["message"]


async def test_over_http_fifty_refused_cache_updates_leave_the_node_serving(
    client: Any, db: Database, actor_system: ActorSystem
) -> None:
    from tests.http.test_internal import NodeClient

    node_id = await register(actor_system)
    agent = NodeClient(client, node_id)
    assert (await agent.heartbeat()).status_code == 200
    path = f"/v1/internal/nodes/{node_id}/cache-update"

    for i in range(POISONED):  # each body differs: no two requests share a signature
        body = {"action": "Downloaded", "aep_file_md5": f"{i:032x}", "cache_used_gb": 2**31}
        response = await agent.post(path, body)
        assert response.status_code == 422
        assert (await response.get_json())["error"]["code"] == "validation_failed"

    assert await db.fetchval("SELECT cached_template_md5s FROM nodes WHERE id = $1", node_id) == []
    good = {"action": "Downloaded", "aep_file_md5": "f" * 32, "cache_used_gb": 2}
    assert (await agent.post(path, good)).status_code == 204
    assert (await agent.heartbeat()).status_code == 200
    assert set(restarts(actor_system).values()) == {0}


async def test_over_http_a_data_error_of_ours_is_a_500_with_its_traceback_logged(
    client: Any, app_state: Any, caplog: pytest.LogCaptureFixture
) -> None:
    route = "/v1/test-only/our-bug"

    async def our_bug() -> dict[str, Any]:
        await app_state.db.fetchval("SELECT $1::uuid", "not-a-uuid")  # a str where a UUID goes
        return {}

    client.app.add_url_rule(route, "test_only_our_bug", our_bug, methods=["GET"])
    with caplog.at_level("ERROR", logger="flatrender"):
        response = await client.get(route)

    assert response.status_code == 500
    assert (await response.get_json())["error"]["code"] == "internal_error"
    [record] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert record.exc_info is not None and isinstance(record.exc_info[1], asyncpg.DataError)
