"""Entitlements and the snapshot cap over HTTP (DESIGN §5, issue 10 item 4), on a real
PostgreSQL: who may submit which price type, that a refusal writes nothing, and that no user has
more than ``[snapshots] max_live_per_user`` snapshots rendering, even under concurrency."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID, uuid4

import jwt
import pytest
import trio

from flatrender.config import Config
from flatrender.http.app import create_app
from flatrender.http.common import AppState
from flatrender.persistence import ledger
from flatrender.persistence.db import Database
from flatrender.storage import MinioStore
from tests.helpers import Tokens, bearer
from tests.http.test_renders import make_project, render_body, submit
from tests.http.test_snapshots import ask, seed_cached
from tests.http.test_snapshots import make_project as make_snapshot_project
from tests.http.test_snapshots import post as post_snapshot

ENTITLED = ["Free", "Plan", "Preview", "Reseller"]


@pytest.fixture
async def api(config: Config, db: Database) -> AsyncIterator[Any]:
    """The app without actors: accepted jobs stay Queued, so every snapshot job stays live."""
    app = create_app(AppState(config=config, db=db, store=MinioStore(config.s3)))
    async with app.test_app() as test_app:
        yield test_app.test_client()


async def put_entitlements(api: Any, token: str, user_id: object, body: Any) -> tuple[int, Any]:
    response = await api.put(
        f"/v1/billing/accounts/{user_id}/entitlements", json=body, headers=bearer(token)
    )
    return response.status_code, await response.get_json()


async def get_account(api: Any, token: str, user_id: UUID) -> Any:
    response = await api.get(f"/v1/billing/accounts/{user_id}", headers=bearer(token))
    assert response.status_code == 200
    return await response.get_json()


async def written(db: Database, user_id: UUID) -> tuple[int, int, int, int]:
    """What a submit would write for the user: balance, ledger entries, jobs, job log lines."""
    return (
        await ledger.balance(db, user_id),
        await db.fetchval("SELECT count(*) FROM ledger_entries WHERE user_id = $1", user_id),
        await db.fetchval("SELECT count(*) FROM render_jobs WHERE user_id = $1", user_id),
        await db.fetchval(
            "SELECT count(*) FROM job_logs l JOIN render_jobs j ON j.id = l.job_id"
            " WHERE j.user_id = $1",
            user_id,
        ),
    )


def refused(status: int, body: Any, price_type: str) -> bool:
    error = body["error"]
    return (status, error["code"], error["details"]) == (
        403,
        "price_type_not_allowed",
        {"price_type": price_type},
    )


# ------------------------------------------------------------------ the billing extension


async def test_put_entitlements_collapses_duplicates_and_every_answer_shows_them(
    api: Any, db: Database, tokens: Tokens
) -> None:
    user = tokens.user_id
    status, body = await put_entitlements(
        api, tokens.service, user, {"entitlements": ["Preview", "Free", "Preview"]}
    )
    assert status == 200, body
    assert body == {"user_id": str(user), "balance_minor": 0, "entitlements": ["Free", "Preview"]}
    assert await get_account(api, tokens.service, user) == body

    response = await api.post(
        f"/v1/billing/accounts/{user}/credit",
        json={"amount_minor": 250},
        headers=bearer(tokens.service),
    )
    assert await response.get_json() == {**body, "balance_minor": 250}

    status, body = await put_entitlements(api, tokens.service, user, {"entitlements": []})
    assert (status, body["entitlements"], body["balance_minor"]) == (200, [], 250)
    assert (await get_account(api, tokens.service, user))["entitlements"] == []


async def test_unknown_entitlement_is_422_naming_its_position_and_changes_nothing(
    api: Any, db: Database, tokens: Tokens
) -> None:
    user = tokens.user_id
    await put_entitlements(api, tokens.service, user, {"entitlements": ["Plan"]})
    for body, fields in [
        (
            {"entitlements": ["Free", "Gold", "Plan", "Cash"]},
            ["$.entitlements[1]", "$.entitlements[3]"],
        ),
        ({"entitlements": ["Snapshot"]}, ["$.entitlements[0]"]),
        ({"entitlements": [1]}, ["$.entitlements[0]"]),
        ({"entitlements": "Free"}, ["$.entitlements"]),
        ({}, ["$.entitlements"]),
    ]:
        status, answer = await put_entitlements(api, tokens.service, user, body)
        assert status == 422, (body, answer)
        assert [e["field"] for e in answer["error"]["details"]["errors"]] == fields
    assert (await get_account(api, tokens.service, user))["entitlements"] == ["Plan"]


async def test_users_and_admins_cannot_set_entitlements(
    api: Any, db: Database, tokens: Tokens
) -> None:
    for token in (tokens.user, tokens.admin):
        status, body = await put_entitlements(
            api, token, tokens.user_id, {"entitlements": ENTITLED}
        )
        assert (status, body["error"]["code"]) == (403, "forbidden")
    status, _ = await put_entitlements(api, tokens.service, "not-a-uuid", {"entitlements": []})
    assert status == 422
    assert (await get_account(api, tokens.service, tokens.user_id))["entitlements"] == []


# ------------------------------------------------------------------ submits


@pytest.mark.parametrize("price_type", ENTITLED)
async def test_user_without_the_entitlement_is_refused_and_nothing_is_written(
    api: Any, db: Database, tokens: Tokens, price_type: str
) -> None:
    project = await make_project(db, tokens.user_id)
    await ledger.credit(db, tokens.user_id, 10_000)
    others = [e for e in ENTITLED if e != price_type]
    await put_entitlements(api, tokens.service, tokens.user_id, {"entitlements": others})
    before = await written(db, tokens.user_id)
    status, body = await submit(api, tokens.user, render_body(project, price_type=price_type))
    assert refused(status, body, price_type), body
    assert await written(db, tokens.user_id) == before == (10_000, 1, 0, 0)


@pytest.mark.parametrize("price_type", ENTITLED)
async def test_user_holding_the_entitlement_submits_at_that_price_type(
    api: Any, db: Database, tokens: Tokens, price_type: str
) -> None:
    project = await make_project(db, tokens.user_id)
    await ledger.credit(db, tokens.user_id, 10_000)
    await put_entitlements(api, tokens.service, tokens.user_id, {"entitlements": [price_type]})
    status, job = await submit(api, tokens.user, render_body(project, price_type=price_type))
    assert status == 201, job
    assert job["price_type"] == price_type
    balance, _, jobs_written, _ = await written(db, tokens.user_id)
    assert (balance, jobs_written) == (10_000 - job["paid_price_minor"], 1)


async def test_cash_needs_no_entitlement(api: Any, db: Database, tokens: Tokens) -> None:
    project = await make_project(db, tokens.user_id)
    await ledger.credit(db, tokens.user_id, 10_000)
    for body in (render_body(project), render_body(project, price_type="Cash")):
        status, job = await submit(api, tokens.user, body)
        assert (status, job["price_type"]) == (201, "Cash")


async def test_service_submits_any_price_type_for_the_projects_owner(
    api: Any, db: Database, tokens: Tokens
) -> None:
    project = await make_project(db, tokens.user_id)
    status, job = await submit(api, tokens.service, render_body(project, price_type="Free"))
    assert status == 201, job
    assert (job["price_type"], job["paid_price_minor"]) == ("Free", 0)
    row = await db.fetchrow("SELECT user_id FROM render_jobs WHERE id = $1", UUID(job["id"]))
    assert row["user_id"] == tokens.user_id
    # The owner pays for a priced one: 402 on an empty balance, like the owner's own submit.
    status, body = await submit(api, tokens.service, render_body(project, price_type="Plan"))
    assert (status, body["error"]["code"]) == (402, "insufficient_balance")
    status, body = await submit(api, tokens.service, render_body(uuid4(), price_type="Free"))
    assert (status, body["error"]["code"]) == (404, "not_found")


@pytest.mark.parametrize("who", ["user", "admin", "service"])
async def test_snapshot_price_type_is_refused_on_renders_for_everyone(
    api: Any, db: Database, tokens: Tokens, who: str
) -> None:
    # An admin JWT submits for its own account; a service for the project's owner.
    owner = subject(tokens.admin) if who == "admin" else tokens.user_id
    project = await make_project(db, owner)
    await ledger.credit(db, owner, 10_000)
    await put_entitlements(api, tokens.service, owner, {"entitlements": ENTITLED})
    status, body = await submit(
        api, getattr(tokens, who), render_body(project, price_type="Snapshot")
    )
    assert refused(status, body, "Snapshot"), body
    assert "/v1/snapshots" in body["error"]["message"]
    assert await written(db, owner) == (10_000, 1, 0, 0)


def subject(token: str) -> UUID:
    return UUID(jwt.decode(token, options={"verify_signature": False})["sub"])


async def test_retry_is_refused_once_the_entitlement_is_gone(
    api: Any, db: Database, tokens: Tokens
) -> None:
    project = await make_project(db, tokens.user_id)
    await ledger.credit(db, tokens.user_id, 10_000)
    await put_entitlements(api, tokens.service, tokens.user_id, {"entitlements": ["Preview"]})
    status, job = await submit(api, tokens.user, render_body(project, price_type="Preview"))
    assert status == 201, job
    await db.execute("UPDATE render_jobs SET step = 'Failed' WHERE id = $1", UUID(job["id"]))
    await put_entitlements(api, tokens.service, tokens.user_id, {"entitlements": []})

    before = await written(db, tokens.user_id)
    path = f"/v1/renders/{job['id']}/retry"
    response = await api.post(path, headers=bearer(tokens.user))
    assert refused(response.status_code, await response.get_json(), "Preview")
    assert await written(db, tokens.user_id) == before

    # A service may retry it all the same (it may submit any price type).
    response = await api.post(path, headers=bearer(tokens.service))
    retried = await response.get_json()
    assert response.status_code == 201, retried
    assert retried["price_type"] == "Preview"


async def test_submit_racing_an_entitlement_removal_waits_for_it_and_is_refused(
    api: Any, db: Database, tokens: Tokens
) -> None:
    """The check reads the entitlements under the account lock the removal holds."""
    user = tokens.user_id
    project = await make_project(db, user)
    await put_entitlements(api, tokens.service, user, {"entitlements": ["Free"]})
    removing = trio.Event()
    answers: list[tuple[int, Any]] = []

    async def remove() -> None:
        async with db.transaction() as conn:
            await ledger.lock(conn, user)
            await conn.execute(ledger.SET_ENTITLEMENTS, user, [])
            removing.set()
            # The submit queues behind us inside PostgreSQL, where no trio.Event can see it.
            while not await db.fetchval(WAITING_ON_A_LOCK):  # noqa: ASYNC110
                await trio.sleep(0.01)

    async def submit_free() -> None:
        await removing.wait()
        answers.append(await submit(api, tokens.user, render_body(project, price_type="Free")))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(remove)
        nursery.start_soon(submit_free)

    [(status, body)] = answers
    assert refused(status, body, "Free"), body
    assert await written(db, user) == (0, 0, 0, 0)


WAITING_ON_A_LOCK = "SELECT count(*) > 0 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"


# ------------------------------------------------------------------ the snapshot cap


async def live_snapshot_jobs(db: Database, user_id: UUID) -> int:
    return int(
        await db.fetchval(
            "SELECT count(*) FROM render_jobs WHERE user_id = $1 AND kind = 'Snapshot'"
            " AND step NOT IN ('Completed', 'Failed', 'Cancelled')",
            user_id,
        )
    )


async def snapshot_rows(db: Database, user_id: UUID) -> int:
    return int(await db.fetchval("SELECT count(*) FROM snapshots WHERE user_id = $1", user_id))


async def test_sixth_live_snapshot_is_429_with_retry_after_until_one_ends(
    api: Any, db: Database, config: Config, tokens: Tokens, tmp_path: Any
) -> None:
    assert config.snapshots.max_live_per_user == 5
    user = tokens.user_id
    project = await make_snapshot_project(db, user)
    answers = [await post_snapshot(api, tokens.user, ask(project, frame=f)) for f in range(40, 45)]
    assert [status for status, _ in answers] == [202] * 5
    assert await live_snapshot_jobs(db, user) == 5

    response = await api.post(
        "/v1/snapshots", json=ask(project, frame=45), headers=bearer(tokens.user)
    )
    body = await response.get_json()
    assert (response.status_code, body["error"]["code"]) == (429, "too_many_snapshots")
    assert int(response.headers["Retry-After"]) > 0
    assert body["error"]["details"]["max_live_per_user"] == 5
    assert (await live_snapshot_jobs(db, user), await snapshot_rows(db, user)) == (5, 5)

    # Sharing a render under way and a cached answer create no job: never refused.
    status, shared = await post_snapshot(api, tokens.user, ask(project, frame=42))
    assert (status, shared["snapshot_id"]) == (202, answers[2][1]["snapshot_id"])
    cached = await seed_cached(db, MinioStore(config.s3), user, project, tmp_path, frame=50)
    status, hit = await post_snapshot(api, tokens.user, ask(project, frame=50))
    assert (status, hit["snapshot_id"], hit["status"]) == (202, str(cached), "Cached")
    # Another user's snapshots are not held back by this one's.
    theirs = await make_snapshot_project(db, tokens.other_user_id)
    status, _ = await post_snapshot(api, tokens.other_user, ask(theirs, frame=45))
    assert status == 202

    ended = UUID(answers[0][1]["snapshot_id"])
    await db.execute("UPDATE render_jobs SET step = 'Completed' WHERE id = $1", ended)
    status, body = await post_snapshot(api, tokens.user, ask(project, frame=45))
    assert status == 202, body
    assert await live_snapshot_jobs(db, user) == 5


async def test_concurrent_requests_cannot_pass_the_cap(
    api: Any, db: Database, tokens: Tokens
) -> None:
    project = await make_snapshot_project(db, tokens.user_id)
    statuses: list[int] = []

    async def one(frame: int) -> None:
        status, _ = await post_snapshot(api, tokens.user, ask(project, frame=frame))
        statuses.append(status)

    async with trio.open_nursery() as nursery:
        for frame in range(40, 49):
            nursery.start_soon(one, frame)

    assert sorted(statuses) == [202] * 5 + [429] * 4
    assert await live_snapshot_jobs(db, tokens.user_id) == 5
    assert await snapshot_rows(db, tokens.user_id) == 5
