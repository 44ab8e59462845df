"""The service extensions: catalog projects and billing accounts (DESIGN §5)."""

from uuid import uuid4

import asyncpg
import pytest

from flatrender.persistence import ledger
from tests.helpers import Tokens, bearer
from tests.http.test_errors import project_body


async def test_project_upsert_reads_back_identically(client, tokens: Tokens) -> None:
    project_id = uuid4()
    body = project_body(
        scenes=[
            {"scene_key": "outro", "start_frame": 200, "end_frame": 299},
            {"scene_key": "intro", "start_frame": 0, "end_frame": 89},
        ],
        has_voiceover=True,
    )
    put = await client.put(
        f"/v1/catalog/projects/{project_id}", json=body, headers=bearer(tokens.service)
    )
    assert put.status_code == 200
    got = await (
        await client.get(f"/v1/catalog/projects/{project_id}", headers=bearer(tokens.service))
    ).get_json()
    assert got["saved_project_id"] == str(project_id)
    assert got["version"] == 1
    assert got["has_voiceover"] is True
    assert [s["scene_key"] for s in got["scenes"]] == ["intro", "outro"]
    for key in ("owner_user_id", "name", "template_md5", "template_url", "ae_version"):
        assert got[key] == body[key]
    assert got["total_frames"] == 300 and got["frame_rate"] == 30


async def test_new_template_bumps_version_same_template_does_not(client, tokens) -> None:
    path = f"/v1/catalog/projects/{uuid4()}"
    headers = bearer(tokens.service)
    body = project_body()
    await client.put(path, json=body, headers=headers)
    renamed = await client.put(path, json={**body, "name": "Renamed"}, headers=headers)
    assert (await renamed.get_json())["version"] == 1
    changed = await client.put(path, json={**body, "template_md5": "b" * 32}, headers=headers)
    assert (await changed.get_json())["version"] == 2


async def test_replacing_scenes_drops_old_ones(client, tokens: Tokens) -> None:
    path = f"/v1/catalog/projects/{uuid4()}"
    headers = bearer(tokens.service)
    await client.put(path, json=project_body(), headers=headers)
    new_scenes = [{"scene_key": "main", "start_frame": 0, "end_frame": 299}]
    await client.put(path, json=project_body(scenes=new_scenes), headers=headers)
    got = await (await client.get(path, headers=headers)).get_json()
    assert [s["scene_key"] for s in got["scenes"]] == ["main"]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"total_frames": 0}, "$.total_frames"),
        ({"duration_sec": 0}, "$.duration_sec"),
        ({"name": " "}, "$.name"),
        (
            {"scenes": [{"scene_key": "a", "start_frame": 5, "end_frame": 2}]},
            "$.scenes[0].end_frame",
        ),
        (
            {"scenes": [{"scene_key": "a", "start_frame": 0, "end_frame": 300}]},
            "$.scenes[0].end_frame",
        ),
        (
            {
                "scenes": [
                    {"scene_key": "a", "start_frame": 0, "end_frame": 1},
                    {"scene_key": "a", "start_frame": 2, "end_frame": 3},
                ]
            },
            "$.scenes[1].scene_key",
        ),
    ],
)
async def test_invalid_project_is_422_and_not_written(client, tokens, changes, field) -> None:
    path = f"/v1/catalog/projects/{uuid4()}"
    response = await client.put(path, json=project_body(**changes), headers=bearer(tokens.service))
    assert response.status_code == 422
    errors = (await response.get_json())["error"]["details"]["errors"]
    assert field in [e["field"] for e in errors]
    assert (await client.get(path, headers=bearer(tokens.service))).status_code == 404


async def test_catalog_rejects_user_tokens(client, tokens: Tokens) -> None:
    path = f"/v1/catalog/projects/{uuid4()}"
    for token in (tokens.user, tokens.admin):
        assert (
            await client.put(path, json=project_body(), headers=bearer(token))
        ).status_code == 403
    assert (await client.put(path, json=project_body())).status_code == 401


async def test_credit_then_read_balance(client, tokens: Tokens) -> None:
    user = uuid4()
    headers = bearer(tokens.service)
    empty = await (await client.get(f"/v1/billing/accounts/{user}", headers=headers)).get_json()
    assert empty == {"user_id": str(user), "balance_minor": 0, "entitlements": []}
    for amount, expected in ((500, 500), (250, 750)):
        response = await client.post(
            f"/v1/billing/accounts/{user}/credit", json={"amount_minor": amount}, headers=headers
        )
        assert response.status_code == 200
        assert (await response.get_json())["balance_minor"] == expected
    read = await (await client.get(f"/v1/billing/accounts/{user}", headers=headers)).get_json()
    assert read["balance_minor"] == 750


@pytest.mark.parametrize("amount", [0, -5, 1.5, "10", None, 10**13])
async def test_bad_credit_amount_is_422_and_changes_nothing(client, tokens, amount) -> None:
    user = uuid4()
    headers = bearer(tokens.service)
    response = await client.post(
        f"/v1/billing/accounts/{user}/credit", json={"amount_minor": amount}, headers=headers
    )
    assert response.status_code == 422
    read = await (await client.get(f"/v1/billing/accounts/{user}", headers=headers)).get_json()
    assert read["balance_minor"] == 0


async def test_billing_rejects_user_tokens(client, tokens: Tokens) -> None:
    path = f"/v1/billing/accounts/{tokens.user_id}/credit"
    response = await client.post(path, json={"amount_minor": 5}, headers=bearer(tokens.user))
    assert response.status_code == 403


async def test_ledger_is_append_only_and_balance_is_the_sum(db) -> None:
    user = uuid4()
    await ledger.credit(db, user, 300)
    await ledger.credit(db, user, 200)
    assert await ledger.balance(db, user) == 500
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await db.execute("UPDATE ledger_entries SET amount_minor = 1 WHERE user_id = $1", user)
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await db.execute("DELETE FROM ledger_entries WHERE user_id = $1", user)
    view = await db.fetchval("SELECT balance_minor FROM account_balances WHERE user_id = $1", user)
    assert view == 500


async def test_one_charge_per_job_is_enforced_by_the_schema(db) -> None:
    user, job = uuid4(), uuid4()
    await ledger.credit(db, user, 1000)
    async with db.transaction() as conn:
        await ledger.lock_account(conn, user)
        await ledger.append(conn, user, "charge", -100, job_id=job)
    with pytest.raises(asyncpg.UniqueViolationError):
        async with db.transaction() as conn:
            await ledger.append(conn, user, "charge", -100, job_id=job)
    assert await ledger.balance(db, user) == 900
