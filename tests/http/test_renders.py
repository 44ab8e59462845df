"""Render jobs over HTTP: submit (priced, charged once, atomic), list, detail and logs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import attrs
import pytest
import trio

from flatrender.config import Config, PricingConfig
from flatrender.domain.catalog import ProjectSpec, Scene
from flatrender.http import renders
from flatrender.http.app import create_app
from flatrender.http.common import AppState
from flatrender.persistence import catalog, jobs, ledger
from flatrender.persistence.db import Database
from flatrender.storage import MinioStore
from tests.helpers import Tokens, bearer

DISCOUNTS = {"HALF": 50.0, "TENOFF": 10.0}


@pytest.fixture
async def api(config: Config, db: Database) -> AsyncIterator[Any]:
    """The app without actors (jobs stay Queued), with pricing pinned for arithmetic."""
    # Pinned here so the prices below read as arithmetic: 10/s × duration × factors (+ tip).
    pricing = PricingConfig(
        base_per_second_minor=10,
        quality_factor={"Low": 0.5, "Medium": 1.0, "High": 1.5, "Full": 2.0, "Lossless": 3.0},
        resolution_factor={"HD": 0.75, "FullHD": 1.0, "TwoK": 1.5, "FourK": 2.5},
        fps60_factor=1.5,
        price_type_factor={
            "Cash": 1.0,
            "Plan": 1.0,
            "Reseller": 0.8,
            "Preview": 0.25,
            "Free": 0.0,
            "Snapshot": 0.0,
        },
        support_tip_minor=100,
        discount_codes=DISCOUNTS,
    )
    app_state = AppState(
        config=attrs.evolve(config, pricing=pricing), db=db, store=MinioStore(config.s3)
    )
    app = create_app(app_state)
    async with app.test_app() as test_app:
        yield test_app.test_client()


async def make_project(
    db: Database,
    owner: UUID,
    *,
    frame_rate: int = 30,
    total_frames: int = 300,
    duration_sec: float = 10.0,
    has_voiceover: bool = False,
) -> UUID:
    project_id = uuid4()
    spec = ProjectSpec(
        owner_user_id=owner,
        name="Promo",
        template_md5="a" * 32,
        template_url="demo://promo",
        ae_version="2024",
        frame_rate=frame_rate,
        total_frames=total_frames,
        duration_sec=duration_sec,
        scenes=[Scene("main", 0, total_frames - 1)],
        has_voiceover=has_voiceover,
    )
    await catalog.upsert(db, project_id, spec)
    return project_id


def render_body(project_id: UUID, **changes: Any) -> dict[str, Any]:
    return {
        "saved_project_id": str(project_id),
        "quality": "Medium",
        "resolution": "FullHD",
        **changes,
    }


async def submit(api: Any, token: str, body: dict[str, Any]) -> tuple[int, Any]:
    response = await api.post("/v1/renders", json=body, headers=bearer(token))
    return response.status_code, await response.get_json()


async def ledger_rows(db: Database, user_id: UUID) -> list[tuple[str, int, UUID | None]]:
    records = await db.fetch(
        "SELECT kind, amount_minor, job_id FROM ledger_entries WHERE user_id = $1 ORDER BY id",
        user_id,
    )
    return [(r["kind"], r["amount_minor"], r["job_id"]) for r in records]


def error_fields(body: Any) -> list[str]:
    return [e["field"] for e in body["error"]["details"]["errors"]]


# ------------------------------------------------------------------ submit


async def test_submit_charges_once_and_answers_the_job(api, db, tokens: Tokens) -> None:
    project_id = await make_project(db, tokens.user_id, has_voiceover=True)
    await ledger.credit(db, tokens.user_id, 10_000)
    status, job = await submit(api, tokens.user, render_body(project_id, quality="High"))
    assert status == 201, job
    assert set(job) == set(renders.RENDER_JOB)
    assert job["saved_project_id"] == str(project_id)
    assert job["name"] == "Promo"
    assert (job["step"], job["render_progress"]) == ("Queued", 0)
    assert (job["price_type"], job["priority_queue"]) == ("Cash", "Cash")
    assert (job["quality"], job["resolution"], job["frame_rate"]) == ("High", "FullHD", 30)
    assert job["duration_sec"] == 10.0 and job["has_voiceover"] is True
    assert job["queued_at"].endswith("Z") and job["started_at"] is None
    assert job["export_id"] is None and job["failed_message"] is None
    price = job["paid_price_minor"]
    assert price == 150  # 10 s × 10/s × High 1.5

    job_id = UUID(job["id"])
    assert await ledger.balance(db, tokens.user_id) == 10_000 - price
    assert await ledger_rows(db, tokens.user_id) == [
        ("credit", 10_000, None),
        ("charge", -price, job_id),
    ]
    row = await jobs.get_job(db, job_id)
    assert row is not None
    assert (row.user_id, row.start_frame, row.end_frame, row.project_version) == (
        tokens.user_id,
        0,
        299,
        1,
    )
    lines = await jobs.logs(db, job_id, "debug")
    assert [line["message"] for line in lines] == [f"submitted (price {price} minor units)"]


@pytest.mark.parametrize(
    ("changes", "price", "frame_rate", "end_frame"),
    [
        ({}, 100, 30, 299),
        ({"frame_rate": 60}, 150, 60, 599),
        ({"is_60_fps": True}, 150, 60, 599),
        ({"frame_rate": 24}, 100, 24, 239),
        ({"support_flatrender": True}, 200, 30, 299),
        ({"price_type": "Free"}, 0, 30, 299),
        ({"resolution": "FourK", "quality": "Low"}, 125, 30, 299),
    ],
)
async def test_price_examples(
    api, db, tokens: Tokens, changes: dict[str, Any], price: int, frame_rate: int, end_frame: int
) -> None:
    project_id = await make_project(db, tokens.user_id)
    await ledger.credit(db, tokens.user_id, 1_000)
    await entitle(db, tokens.user_id)
    status, job = await submit(api, tokens.user, render_body(project_id, **changes))
    assert status == 201, job
    assert (job["paid_price_minor"], job["frame_rate"]) == (price, frame_rate)
    assert job["duration_sec"] == 10.0
    row = await jobs.get_job(db, UUID(job["id"]))
    assert row is not None and row.end_frame == end_frame
    assert await ledger.balance(db, tokens.user_id) == 1_000 - price


async def test_free_job_writes_no_charge_entry(api, db, tokens: Tokens) -> None:
    project_id = await make_project(db, tokens.user_id)
    await entitle(db, tokens.user_id)
    status, job = await submit(api, tokens.user, render_body(project_id, price_type="Free"))
    assert status == 201, job
    assert job["priority_queue"] == "Free"
    assert await ledger_rows(db, tokens.user_id) == []


async def test_discount_applies_once_per_user_and_code(api, db, tokens: Tokens) -> None:
    project_id = await make_project(db, tokens.user_id)
    await ledger.credit(db, tokens.user_id, 1_000)
    await ledger.credit(db, tokens.other_user_id, 1_000)
    status, job = await submit(api, tokens.user, render_body(project_id, discount_code="HALF"))
    assert status == 201, job
    assert job["paid_price_minor"] == 50

    status, again = await submit(api, tokens.user, render_body(project_id, discount_code="HALF"))
    assert status == 409
    assert again["error"]["code"] == "discount_code_used"
    assert await ledger.balance(db, tokens.user_id) == 950
    # Another code, and the same code for another user, still apply.
    status, other = await submit(api, tokens.user, render_body(project_id, discount_code="TENOFF"))
    assert (status, other["paid_price_minor"]) == (201, 90)
    theirs = await make_project(db, tokens.other_user_id)
    status, job = await submit(api, tokens.other_user, render_body(theirs, discount_code="HALF"))
    assert (status, job["paid_price_minor"]) == (201, 50)


async def test_unknown_discount_code_is_422_and_writes_nothing(api, db, tokens: Tokens) -> None:
    project_id = await make_project(db, tokens.user_id)
    await ledger.credit(db, tokens.user_id, 1_000)
    status, body = await submit(api, tokens.user, render_body(project_id, discount_code="NOPE"))
    assert status == 422
    assert body["error"]["code"] == "unknown_discount_code"
    assert error_fields(body) == ["$.discount_code"]
    assert await db.fetchval("SELECT count(*) FROM render_jobs") == 0


async def test_blank_discount_code_means_none(api, db, tokens: Tokens) -> None:
    project_id = await make_project(db, tokens.user_id)
    await ledger.credit(db, tokens.user_id, 1_000)
    status, job = await submit(api, tokens.user, render_body(project_id, discount_code=" "))
    assert (status, job["paid_price_minor"]) == (201, 100)
    assert await db.fetchval("SELECT count(*) FROM discount_redemptions") == 0


async def test_empty_balance_is_402_and_writes_nothing(api, db, tokens: Tokens) -> None:
    project_id = await make_project(db, tokens.user_id)
    status, body = await submit(api, tokens.user, render_body(project_id, discount_code="HALF"))
    assert status == 402
    assert body["error"]["code"] == "insufficient_balance"
    assert body["error"]["details"] == {"balance_minor": 0, "price_minor": 50}
    for table in ("render_jobs", "ledger_entries", "discount_redemptions", "job_logs", "accounts"):
        assert await db.fetchval(f"SELECT count(*) FROM {table}") == 0, table


LOCK_WAITERS = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND wait_event_type = 'Lock'
"""


async def test_two_submits_racing_for_the_last_money_one_wins(
    api, db, tokens: Tokens, monkeypatch: pytest.MonkeyPatch
) -> None:
    project_id = await make_project(db, tokens.user_id)
    await ledger.credit(db, tokens.user_id, 100)  # exactly one Medium FullHD 10 s render
    real_lock = ledger.lock_account
    balances_read = 0

    async def lock_then_hold(conn: Any, user_id: UUID) -> int:
        # Force the overlap: the first submit keeps its transaction open until the second has
        # read a balance too (which only a missing lock allows) or waits for the row lock.
        nonlocal balances_read
        balance = await real_lock(conn, user_id)
        balances_read += 1
        for _ in range(500):  # polled: a lock wait happens in PostgreSQL, no Event tells it
            if balances_read == 2 or await db.fetchval(LOCK_WAITERS):
                return balance
            await trio.sleep(0.01)
        raise AssertionError("the other submit neither read a balance nor waited for the lock")

    monkeypatch.setattr(ledger, "lock_account", lock_then_hold)
    statuses: list[int] = []

    async def one() -> None:
        status, _ = await submit(api, tokens.user, render_body(project_id))
        statuses.append(status)

    async with trio.open_nursery() as nursery:
        for _ in range(2):
            nursery.start_soon(one)
    assert sorted(statuses) == [201, 402]
    assert await ledger.balance(db, tokens.user_id) == 0
    assert await db.fetchval("SELECT count(*) FROM render_jobs") == 1
    assert [kind for kind, _, _ in await ledger_rows(db, tokens.user_id)] == ["credit", "charge"]


async def test_unknown_or_foreign_project_is_404(api, db, tokens: Tokens) -> None:
    await ledger.credit(db, tokens.user_id, 1_000)
    theirs = await make_project(db, tokens.other_user_id)
    for project_id in (uuid4(), theirs):
        status, body = await submit(api, tokens.user, render_body(project_id))
        assert (status, body["error"]["code"]) == (404, "not_found")
    assert await ledger.balance(db, tokens.user_id) == 1_000


@pytest.mark.parametrize(
    ("changes", "field", "hint"),
    [
        ({"quality": "Ultra"}, "$.quality", "Lossless"),
        ({"resolution": "8K"}, "$.resolution", "FourK"),
        ({"price_type": "Gold"}, "$.price_type", "Reseller"),
        ({"frame_rate": 29}, "$.frame_rate", "24, 25, 30, 60"),
        ({"frame_rate": "30"}, "$.frame_rate", "integer"),
        ({"frame_rate": 30, "is_60_fps": True}, "$.is_60_fps", "frame_rate is 30"),
        ({"is_60_fps": "yes"}, "$.is_60_fps", "true or false"),
        ({"saved_project_id": "p-1"}, "$.saved_project_id", "uuid"),
        ({"saved_project_id": None}, "$.saved_project_id", ""),
    ],
)
async def test_invalid_fields_are_422_naming_the_field(
    api, db, tokens: Tokens, changes: dict[str, Any], field: str, hint: str
) -> None:
    project_id = await make_project(db, tokens.user_id)
    status, body = await submit(api, tokens.user, render_body(project_id, **changes))
    assert status == 422, body
    assert error_fields(body) == [field]
    assert hint in body["error"]["details"]["errors"][0]["message"]


@pytest.mark.parametrize("missing", ["saved_project_id", "quality", "resolution"])
async def test_missing_required_field_is_422(api, db, tokens: Tokens, missing: str) -> None:
    body = render_body(uuid4())
    del body[missing]
    status, answer = await submit(api, tokens.user, body)
    assert status == 422
    assert error_fields(answer) == [f"$.{missing}"]


async def test_submit_needs_a_token(api, db, tokens: Tokens) -> None:
    project_id = await make_project(db, tokens.user_id)
    response = await api.post("/v1/renders", json=render_body(project_id))
    assert response.status_code == 401
    status, _ = await submit(api, "not-a-token", render_body(project_id))
    assert status == 401


# ------------------------------------------------------------------ reads


async def entitle(db: Database, user_id: UUID) -> None:
    """Let the user submit every price type (the rule itself: test_entitlements.py)."""
    await ledger.set_entitlements(db, user_id, ("Free", "Plan", "Preview", "Reseller"))


async def free_jobs(api: Any, db: Database, token: str, project_id: UUID, n: int) -> list[str]:
    project = await catalog.get(db, project_id)
    assert project is not None
    await entitle(db, project.owner_user_id)
    ids = []
    for _ in range(n):
        status, job = await submit(api, token, render_body(project_id, price_type="Free"))
        assert status == 201, job
        ids.append(job["id"])
    return ids


async def test_list_is_own_jobs_newest_first_paged(api, db, tokens: Tokens) -> None:
    mine = await make_project(db, tokens.user_id)
    theirs = await make_project(db, tokens.other_user_id)
    ids = await free_jobs(api, db, tokens.user, mine, 3)
    await free_jobs(api, db, tokens.other_user, theirs, 2)

    response = await api.get("/v1/renders?page_size=2", headers=bearer(tokens.user))
    first = await response.get_json()
    assert [j["id"] for j in first["data"]] == [ids[2], ids[1]]
    assert first["meta"] == {"page": 1, "page_size": 2, "total": 3, "has_more": True}
    response = await api.get("/v1/renders?page=2&page_size=2", headers=bearer(tokens.user))
    second = await response.get_json()
    assert [j["id"] for j in second["data"]] == [ids[0]]
    assert second["meta"]["has_more"] is False
    assert set(second["data"][0]) == set(renders.RENDER_JOB)

    response = await api.get("/v1/renders", headers=bearer(tokens.other_user))
    assert (await response.get_json())["meta"]["total"] == 2


async def test_list_filters_by_step(api, db, tokens: Tokens) -> None:
    project_id = await make_project(db, tokens.user_id)
    ids = await free_jobs(api, db, tokens.user, project_id, 2)
    await db.execute("UPDATE render_jobs SET step = 'Failed' WHERE id = $1", UUID(ids[0]))
    headers = bearer(tokens.user)
    failed = await (await api.get("/v1/renders?status=Failed", headers=headers)).get_json()
    assert [j["id"] for j in failed["data"]] == [ids[0]]
    empty = await (await api.get("/v1/renders?status=Completed", headers=headers)).get_json()
    assert empty == {
        "data": [],
        "meta": {"page": 1, "page_size": 20, "total": 0, "has_more": False},
    }


@pytest.mark.parametrize(
    "query",
    ["status=Done", "status=failed", "page=x", "page=1000001", "page=1000000000000000000"],
)
async def test_list_rejects_bad_query(api, tokens: Tokens, query: str) -> None:
    response = await api.get(f"/v1/renders?{query}", headers=bearer(tokens.user))
    assert response.status_code == 422
    assert (await response.get_json())["error"]["details"]["errors"][0]["field"] in (
        "status",
        "page",
    )


async def test_list_scope_all_is_everyones_jobs_for_admins_and_services(
    api, db, tokens: Tokens
) -> None:
    mine = await make_project(db, tokens.user_id)
    theirs = await make_project(db, tokens.other_user_id)
    ids = await free_jobs(api, db, tokens.user, mine, 2)
    ids += await free_jobs(api, db, tokens.other_user, theirs, 1)
    for token in (tokens.admin, tokens.service):
        response = await api.get("/v1/renders?scope=all&page_size=100", headers=bearer(token))
        assert response.status_code == 200
        assert {j["id"] for j in (await response.get_json())["data"]} == set(ids)
    own = await api.get("/v1/renders?status=Queued", headers=bearer(tokens.admin))
    assert (await own.get_json())["meta"]["total"] == 0  # without scope: the admin's own
    refused = await api.get("/v1/renders?scope=all", headers=bearer(tokens.user))
    assert refused.status_code == 403
    bad = await api.get("/v1/renders?scope=everyone", headers=bearer(tokens.admin))
    assert (await bad.get_json())["error"]["details"]["errors"][0]["field"] == "scope"


async def test_list_needs_a_user(api, tokens: Tokens) -> None:
    assert (await api.get("/v1/renders")).status_code == 401
    response = await api.get("/v1/renders", headers=bearer(tokens.service))
    assert response.status_code == 403


async def add_frame_job_and_export(db: Database, job_id: UUID, user_id: UUID) -> UUID:
    project_id = await db.fetchval("SELECT saved_project_id FROM render_jobs WHERE id = $1", job_id)
    await db.execute(
        "INSERT INTO frame_jobs (id, job_id, start_frame, end_frame, order_value, status, "
        "frames_rendered, last_error) VALUES ($1, $2, 0, 149, 0, 'Rendering', 12, 'slow')",
        uuid4(),
        job_id,
    )
    export_id = uuid4()
    await db.execute(
        "INSERT INTO exports (id, user_id, job_id, saved_project_id, path, image, size_bytes, "
        "duration_sec, width, height, file_extension, file_type, render_quality, create_type, "
        "auto_delete_date) VALUES ($1, $2, $3, $4, 'exports/x/video.mp4', 'exports/x/thumb.png', "
        "1234, 10.0, 1920, 1080, 'mp4', 'video', 'Medium', 'Render', $5)",
        export_id,
        user_id,
        job_id,
        project_id,
        datetime.now(UTC) + timedelta(days=7),
    )
    await db.execute("UPDATE render_jobs SET export_id = $1 WHERE id = $2", export_id, job_id)
    return export_id


async def test_detail_for_owner_admin_and_service(api, db, tokens: Tokens) -> None:
    project_id = await make_project(db, tokens.user_id)
    [job_id] = await free_jobs(api, db, tokens.user, project_id, 1)
    export_id = await add_frame_job_and_export(db, UUID(job_id), tokens.user_id)
    for token in (tokens.user, tokens.admin, tokens.service):
        response = await api.get(f"/v1/renders/{job_id}", headers=bearer(token))
        assert response.status_code == 200
        detail = await response.get_json()
        assert detail["id"] == job_id
        assert (detail["retry_count"], detail["repair_attempts"]) == (0, 0)
        [frame_job] = detail["frame_jobs"]
        assert set(frame_job) == set(renders.FRAME_JOB) - {"node_id"}  # no node holds it yet
        assert (frame_job["end_frame"], frame_job["status"]) == (149, "Rendering")
        assert (frame_job["frames_rendered"], frame_job["attempt"]) == (12, 1)
        assert frame_job["last_error"] == "slow"
        export = detail["export"]
        assert export["id"] == str(export_id) == detail["export_id"]
        assert export["saved_project_id"] == str(project_id)
        assert (export["size_bytes"], export["width"], export["file_extension"]) == (
            1234,
            1920,
            "mp4",
        )
        assert export["auto_delete_date"].endswith("Z")
        assert "user_id" not in export and "job_id" not in export


async def test_detail_without_export_or_ranges(api, db, tokens: Tokens) -> None:
    project_id = await make_project(db, tokens.user_id)
    [job_id] = await free_jobs(api, db, tokens.user, project_id, 1)
    detail = await (await api.get(f"/v1/renders/{job_id}", headers=bearer(tokens.user))).get_json()
    assert (detail["frame_jobs"], detail["export"]) == ([], None)


async def test_detail_of_another_users_or_unknown_job_is_404(api, db, tokens: Tokens) -> None:
    project_id = await make_project(db, tokens.user_id)
    [job_id] = await free_jobs(api, db, tokens.user, project_id, 1)
    for path in (f"/v1/renders/{job_id}", f"/v1/renders/{uuid4()}"):
        response = await api.get(path, headers=bearer(tokens.other_user))
        assert response.status_code == 404
        assert (await response.get_json())["error"]["code"] == "not_found"
    response = await api.get("/v1/renders/nope", headers=bearer(tokens.user))
    assert response.status_code == 422
    assert (await api.get(f"/v1/renders/{job_id}")).status_code == 401


async def test_logs_oldest_first_filtered_by_level(api, db, tokens: Tokens) -> None:
    project_id = await make_project(db, tokens.user_id)
    [job_id] = await free_jobs(api, db, tokens.user, project_id, 1)
    node_id = uuid4()
    for level in ("debug", "warn", "error"):
        await jobs.log(db, UUID(job_id), level, f"a {level} line", node_id=node_id, meta={"n": 1})
    path = f"/v1/renders/{job_id}/logs"

    everything = (await (await api.get(path, headers=bearer(tokens.user))).get_json())["logs"]
    assert [line["level"] for line in everything] == ["info", "debug", "warn", "error"]
    assert everything[0]["message"].startswith("submitted")
    assert everything[0]["node_id"] is None
    assert everything[1]["node_id"] == str(node_id)
    assert everything[1]["meta"] == {"n": 1}
    assert everything[1]["timestamp"].endswith("Z")
    assert set(everything[1]) == {"timestamp", "level", "node_id", "message", "meta"}

    response = await api.get(f"{path}?level=warn", headers=bearer(tokens.admin))
    assert [line["level"] for line in (await response.get_json())["logs"]] == ["warn", "error"]
    response = await api.get(f"{path}?level=info", headers=bearer(tokens.service))
    assert [line["level"] for line in (await response.get_json())["logs"]] == [
        "info",
        "warn",
        "error",
    ]


async def test_logs_refuse_bad_level_and_strangers(api, db, tokens: Tokens) -> None:
    project_id = await make_project(db, tokens.user_id)
    [job_id] = await free_jobs(api, db, tokens.user, project_id, 1)
    path = f"/v1/renders/{job_id}/logs"
    response = await api.get(f"{path}?level=trace", headers=bearer(tokens.user))
    assert response.status_code == 422
    [error] = (await response.get_json())["error"]["details"]["errors"]
    assert error == {"field": "level", "message": "must be one of debug, info, warn, error"}
    assert (await api.get(path, headers=bearer(tokens.other_user))).status_code == 404
    assert (await api.get(path)).status_code == 401


async def test_progress_of_a_queued_job_and_owner_only(api, db, tokens: Tokens) -> None:
    project_id = await make_project(db, tokens.user_id)
    await ledger.credit(db, tokens.user_id, 10_000)
    _, job = await submit(api, tokens.user, render_body(project_id))
    path = f"/v1/renders/{job['id']}/progress"
    response = await api.get(path, headers=bearer(tokens.user))
    assert response.status_code == 200
    assert await response.get_json() == {
        "job_id": job["id"],
        "step": "Queued",
        "progress": 0,
        "current_frame": None,
        "total_frames": 300,
        "eta_seconds": None,
        "preview_b64": None,
        "active_nodes": 0,
        "message": None,
    }
    assert (await api.get(path, headers=bearer(tokens.other_user))).status_code == 404
    assert (await api.get(path)).status_code == 401
