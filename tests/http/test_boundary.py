"""The one input boundary (issue 10): text the database cannot hold, integers past their column,
and JSON that is not ordinary are refused before anything is written, never a 5xx."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from uuid import UUID, uuid4

import attrs
import pytest

from flatrender.domain.bounds import INT4, Int4
from flatrender.http import codec
from flatrender.http.errors import ApiError
from flatrender.persistence import jobs, ledger
from flatrender.persistence.db import Database
from tests.helpers import Tokens, bearer
from tests.http.test_internal import NodeClient
from tests.http.test_nodes_admin import node_body, register
from tests.http.test_renders import make_project, render_body
from tests.http.test_ws import a_job, closed_with

NUL = "a\x00b"
SURROGATE = "a\ud800b"
BEYOND_INT4 = 2**31
BEYOND_BIGINT = 2**63


@attrs.frozen
class World:
    project: UUID
    node: UUID


@pytest.fixture
async def world(client: Any, db: Database, tokens: Tokens) -> World:
    project = await make_project(db, tokens.user_id)
    await ledger.credit(db, tokens.user_id, 10_000)
    node = await register(client, tokens)
    return World(project, UUID(node["id"]))


def project_body(owner: UUID, **changes: Any) -> dict[str, Any]:
    return {
        "owner_user_id": str(owner),
        "name": "Promo",
        "template_md5": "a" * 32,
        "template_url": "demo://promo",
        "ae_version": "2024",
        "frame_rate": 30,
        "total_frames": 300,
        "duration_sec": 10.0,
        "scenes": [{"scene_key": "main", "start_frame": 0, "end_frame": 299}],
        **changes,
    }


def snapshot_body(project: UUID, **changes: Any) -> dict[str, Any]:
    return {"saved_project_id": str(project), "scene_key": "main", "frame_number": 3, **changes}


# (method, path, who, body builder, the field the 422 must name)
Case = tuple[str, str, str, Any, str]

TEXT_CASES: dict[str, Case] = {
    "render discount_code NUL": (
        "POST", "/v1/renders", "user",
        lambda w, t: render_body(w.project, discount_code=NUL), "$.discount_code",
    ),
    "render preferred_region surrogate": (
        "POST", "/v1/renders", "user",
        lambda w, t: render_body(w.project, preferred_region=SURROGATE), "$.preferred_region",
    ),
    "render unknown key NUL": (
        "POST", "/v1/renders", "user",
        lambda w, t: render_body(w.project, **{"x\x00": 1}), '$["x\\u0000"]',
    ),
    "snapshot scene_key surrogate": (
        "POST", "/v1/snapshots", "user",
        lambda w, t: snapshot_body(w.project, scene_key=SURROGATE), "$.scene_key",
    ),
    "catalog name NUL": (
        "PUT", "/v1/catalog/projects/{project}", "service",
        lambda w, t: project_body(t.user_id, name=NUL), "$.name",
    ),
    "catalog scene_key in a list item": (
        "PUT", "/v1/catalog/projects/{project}", "service",
        lambda w, t: project_body(
            t.user_id, scenes=[{"scene_key": SURROGATE, "start_frame": 0, "end_frame": 9}]
        ),
        "$.scenes[0].scene_key",
    ),
    "catalog key of a list item": (
        "PUT", "/v1/catalog/projects/{project}", "service",
        lambda w, t: project_body(
            t.user_id,
            scenes=[{"scene_key": "s", "start_frame": 0, "end_frame": 9, "\ud800": 0}],
        ),
        '$.scenes[0]["\\ud800"]',
    ),
    "node create name NUL": (
        "POST", "/v1/nodes", "admin", lambda w, t: node_body(name=NUL), "$.name",
    ),
    "node create region surrogate": (
        "POST", "/v1/nodes", "admin", lambda w, t: node_body(region=SURROGATE), "$.region",
    ),
    "node patch maintenance_reason NUL": (
        "PATCH", "/v1/nodes/{node}", "admin",
        lambda w, t: {"maintenance_reason": NUL}, "$.maintenance_reason",
    ),
    "node patch node_kind surrogate": (
        "PATCH", "/v1/nodes/{node}", "admin",
        lambda w, t: {"node_kind": SURROGATE}, "$.node_kind",
    ),
    "rollout node id NUL": (
        "POST", "/v1/node-updates/{uuid}/rollout", "admin",
        lambda w, t: {"node_ids": [str(w.node), NUL]}, "$.node_ids[1]",
    ),
    "credit unknown key deep": (
        "POST", "/v1/billing/accounts/{user}/credit", "service",
        lambda w, t: {"amount_minor": 5, "note": {"deep": [["x", NUL]]}}, "$.note.deep[0][1]",
    ),
}  # fmt: skip

INT_CASES: dict[str, Case] = {
    "render frame_rate past int4": (
        "POST", "/v1/renders", "user",
        lambda w, t: render_body(w.project, frame_rate=BEYOND_INT4), "$.frame_rate",
    ),
    "snapshot frame_number past int4": (
        "POST", "/v1/snapshots", "user",
        lambda w, t: snapshot_body(w.project, frame_number=BEYOND_INT4), "$.frame_number",
    ),
    "catalog total_frames past int4": (
        "PUT", "/v1/catalog/projects/{project}", "service",
        lambda w, t: project_body(t.user_id, total_frames=BEYOND_INT4), "$.total_frames",
    ),
    "catalog scene end_frame past int4": (
        "PUT", "/v1/catalog/projects/{project}", "service",
        lambda w, t: project_body(
            t.user_id, scenes=[{"scene_key": "s", "start_frame": 0, "end_frame": BEYOND_INT4}]
        ),
        "$.scenes[0].end_frame",
    ),
    "catalog duration_sec past what int4 frames can hold": (
        "PUT", "/v1/catalog/projects/{project}", "service",
        lambda w, t: project_body(t.user_id, duration_sec=1e300), "$.duration_sec",
    ),
    "node create priority past int4": (
        "POST", "/v1/nodes", "admin",
        lambda w, t: node_body(priority=BEYOND_INT4), "$.priority",
    ),
    "node patch priority below int4": (
        "PATCH", "/v1/nodes/{node}", "admin",
        lambda w, t: {"priority": -(2**31) - 1}, "$.priority",
    ),
    "credit amount past bigint": (
        "POST", "/v1/billing/accounts/{user}/credit", "service",
        lambda w, t: {"amount_minor": BEYOND_BIGINT}, "$.amount_minor",
    ),
    "credit amount below bigint (60 digits)": (
        "POST", "/v1/billing/accounts/{user}/credit", "service",
        lambda w, t: {"amount_minor": -(10**60)}, "$.amount_minor",
    ),
}  # fmt: skip

# Bodies that are not ordinary JSON: 400 on every endpoint that reads a body.
NOT_ORDINARY: dict[str, bytes] = {
    "5,000-digit number": b'{"amount_minor": ' + b"9" * 5000 + b"}",
    "5,000-digit float": b'{"amount_minor": 0.' + b"1" * 5000 + b"}",
    "50,000 deep": b"[" * 50_000 + b"]" * 50_000,
    "65 deep object": b'{"a":' * 65 + b"1" + b"}" * 65,
    "NaN": b'{"amount_minor": NaN}',
    "Infinity": b'{"amount_minor": -Infinity}',
    "1e999": b'{"amount_minor": 1e999}',
    "encoded surrogate": b'{"amount_minor": 1, "x": "\xed\xa0\x80"}',
}
BODY_ENDPOINTS = {
    "credit": ("POST", "/v1/billing/accounts/{user}/credit", "service"),
    "catalog": ("PUT", "/v1/catalog/projects/{project}", "service"),
    "render": ("POST", "/v1/renders", "user"),
    "node patch": ("PATCH", "/v1/nodes/{node}", "admin"),
}


def token(tokens: Tokens, who: str) -> str:
    return {"user": tokens.user, "admin": tokens.admin, "service": tokens.service}[who]


def fill(path: str, world: World, tokens: Tokens) -> str:
    return path.format(project=world.project, node=world.node, user=tokens.user_id, uuid=uuid4())


async def written(db: Database, tokens: Tokens) -> tuple[Any, ...]:
    """Everything these requests could have written."""
    return (
        await db.fetchval("SELECT count(*) FROM render_jobs"),
        await db.fetchval("SELECT count(*) FROM ledger_entries"),
        await db.fetchval("SELECT count(*) FROM catalog_projects"),
        await db.fetchval("SELECT count(*) FROM snapshots"),
        await db.fetch("SELECT * FROM nodes ORDER BY id"),
        await db.fetchval("SELECT count(*) FROM node_update_rollouts"),
    )


async def refused(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, await response.get_data(as_text=True)
    error: dict[str, Any] = (await response.get_json())["error"]
    assert error["code"] == code
    return error


def fields(error: dict[str, Any]) -> list[str]:
    return [e["field"] for e in error["details"]["errors"]]


@pytest.mark.parametrize("case", [*TEXT_CASES, *INT_CASES])
async def test_unstorable_text_and_out_of_range_integers_are_422_naming_the_field(
    client: Any, db: Database, tokens: Tokens, world: World, case: str
) -> None:
    method, path, who, make, field = {**TEXT_CASES, **INT_CASES}[case]
    before = await written(db, tokens)
    response = await client.open(
        fill(path, world, tokens),
        method=method,
        json=make(world, tokens),
        headers=bearer(token(tokens, who)),
    )
    error = await refused(response, 422, "validation_failed")
    assert field in fields(error)
    assert await written(db, tokens) == before


@pytest.mark.parametrize("endpoint", BODY_ENDPOINTS)
@pytest.mark.parametrize("raw", NOT_ORDINARY)
async def test_json_that_is_not_ordinary_is_400(
    client: Any, db: Database, tokens: Tokens, world: World, endpoint: str, raw: str
) -> None:
    method, path, who = BODY_ENDPOINTS[endpoint]
    before = await written(db, tokens)
    response = await client.open(
        fill(path, world, tokens),
        method=method,
        data=NOT_ORDINARY[raw],
        headers={**bearer(token(tokens, who)), "Content-Type": "application/json"},
    )
    await refused(response, 400, "malformed_json")
    assert await written(db, tokens) == before


async def test_cancel_with_a_nul_reason_is_422_and_the_job_cancels_normally_after(
    client: Any, db: Database, tokens: Tokens
) -> None:
    job_id = await a_job(client, db, tokens)
    path = f"/v1/renders/{job_id}/cancel"
    for reason in (NUL, SURROGATE, "x" * 10 + "\x00"):
        response = await client.post(path, json={"reason": reason}, headers=bearer(tokens.user))
        assert fields(await refused(response, 422, "validation_failed")) == ["$.reason"]
        row = await jobs.get_job(db, UUID(job_id))
        assert row is not None and row.step == "Preparing"
    response = await client.post(
        path, json={"reason": "changed my mind"}, headers=bearer(tokens.user)
    )
    assert response.status_code == 200, await response.get_json()
    assert (await response.get_json())["cancelled"] is True
    row = await jobs.get_job(db, UUID(job_id))
    assert row is not None and row.step == "Cancelled"


HISTORY = "/v1/nodes/{node}/health/history"
QUERY_CASES = {
    "nodes region NUL": ("/v1/nodes", "admin", {"region": NUL}, "region"),
    "nodes status NUL": ("/v1/nodes", "admin", {"status": "\x00"}, "status"),
    "renders status NUL": ("/v1/renders", "user", {"status": NUL}, "status"),
    "renders page NUL": ("/v1/renders", "user", {"page": "1\x00"}, "page"),
    "renders page past bigint": ("/v1/renders", "user", {"page": "9" * 25}, "page"),
    "renders page 5,000 digits": ("/v1/renders", "user", {"page": "9" * 5000}, "page"),
    "renders page_size past bigint": ("/v1/renders", "user", {"page_size": "-" + "9" * 25},
                                      "page_size"),
    "renders page not ascii digits": ("/v1/renders", "user", {"page": "\u0661"}, "page"),
    "renders page with underscore": ("/v1/renders", "user", {"page": "1_0"}, "page"),
    "history limit past bigint": (HISTORY, "admin", {"limit": "9" * 30}, "limit"),
    "history from NUL": (HISTORY, "admin", {"from": "\x00"}, "from"),
    "crashes limit float": ("/v1/nodes/{node}/crashes", "admin", {"limit": "1e3"}, "limit"),
    "export format NUL": ("/v1/exports/{uuid}/download-url", "user", {"format": "mp4\x00"},
                          "format"),
    "logs level NUL": ("/v1/renders/{uuid}/logs", "user", {"level": "\x00"}, "level"),
    "a parameter's name": ("/v1/nodes", "admin", {"a\x00": "1"}, '"a\\u0000"'),
}  # fmt: skip


@pytest.mark.parametrize("case", QUERY_CASES)
async def test_bad_query_parameters_are_422_naming_them(
    client: Any, tokens: Tokens, world: World, case: str
) -> None:
    path, who, query, field = QUERY_CASES[case]
    response = await client.get(
        fill(path, world, tokens), query_string=query, headers=bearer(token(tokens, who))
    )
    assert fields(await refused(response, 422, "validation_failed")) == [field]


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/renders/%00", "job_id"),
        ("/v1/catalog/projects/a%00b", "saved_project_id"),
        ("/v1/nodes/%00/health", "node_id"),
        ("/v1/exports/x%00/download-url", "export_id"),
    ],
)
async def test_path_parameters_with_nul_are_422_naming_them(
    client: Any, tokens: Tokens, path: str, field: str
) -> None:
    response = await client.get(path, headers=bearer(tokens.service))
    assert fields(await refused(response, 422, "validation_failed")) == [field]


@pytest.mark.parametrize(
    "value", ["Bearer \x00", "Bearer a\x00.b.c", "Bearer \xe9\xff", "Bearer " + "x" * 8000, "\x00"]
)
async def test_odd_authorization_headers_are_401(client: Any, value: str) -> None:
    response = await client.get("/v1/nodes", headers={"Authorization": value})
    await refused(response, 401, "unauthorized")


async def test_a_websocket_token_with_nul_closes_4401(client: Any, tokens: Tokens) -> None:
    path = f"/ws/v1/render/{uuid4()}"
    for value in ("\x00", tokens.user + "\x00", "\x00" + tokens.service):
        assert await closed_with(client, path, query_string={"access_token": value}) == ([], 4401)


async def test_a_node_body_with_nul_is_422_and_its_actor_lives_on(
    client: Any, actor_system: Any, world: World
) -> None:
    node = NodeClient(client, world.node)
    path = f"/v1/internal/nodes/{world.node}/heartbeat"
    response = await node.heartbeat(status=NUL)
    assert fields(await refused(response, 422, "validation_failed")) == ["$.status"]
    response = await node.post(path, b'{"cpu_pct": 1' + b"0" * 5000 + b"}")
    await refused(response, 400, "malformed_json")
    response = await node.heartbeat(cache_used_gb=BEYOND_BIGINT)
    assert fields(await refused(response, 422, "validation_failed")) == ["$.cache_used_gb"]
    assert (await node.heartbeat()).status_code == 200


# ------------------------------------------------------------------ the codec itself


def parse_error(raw: bytes) -> ApiError:
    with pytest.raises(ApiError) as caught:
        codec.parse_json(raw)
    return caught.value


@pytest.mark.parametrize(
    ("raw", "depth"),
    [
        (b"1", 0),
        (b"[]", 1),
        (b'{"a": [[1], {"b": []}]}', 4),
        (b'{"a": "[[[[{{{{"}', 1),
        (b'{"a": "\\"[[[[", "b": ["\\\\", [1]]}', 3),
        (b"[" * 50_000, 50_000),
        (b'"unterminated [[[', 0),
    ],
)
def test_nesting_depth_ignores_brackets_in_strings(raw: bytes, depth: int) -> None:
    assert codec.nesting_depth(raw) == depth


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * (codec.MAX_DEPTH + 1) + b"]" * (codec.MAX_DEPTH + 1),
        b"1" * (codec.MAX_NUMBER_CHARS + 1),
        b"-" + b"1" * codec.MAX_NUMBER_CHARS,
        b"1e400",
        b"-1e400",
        b"[NaN]",
        b"[Infinity]",
        b"\xff",
        b'"\xed\xa0\x80"',
        b"",
    ],
)
def test_parse_json_refuses_what_is_not_ordinary_json_with_400(raw: bytes) -> None:
    error = parse_error(raw)
    assert (error.status, error.code) == (400, "malformed_json")


def test_parse_json_accepts_the_edges_of_ordinary() -> None:
    deep = b"[" * codec.MAX_DEPTH + b"]" * codec.MAX_DEPTH
    assert codec.nesting_depth(deep) == codec.MAX_DEPTH
    codec.parse_json(deep)
    assert codec.parse_json(b"9" * codec.MAX_NUMBER_CHARS) == int("9" * codec.MAX_NUMBER_CHARS)
    assert codec.parse_json(b"[1e308, -0.5]") == [1e308, -0.5]
    # A surrogate pair is one character, and an escaped backslash before u0000 is no NUL.
    assert codec.parse_json(b'{"a": "\\ud83d\\ude00", "b": "\\\\u0000"}') == {
        "a": "\U0001f600",
        "b": "\\u0000",
    }


def test_parse_json_names_every_unstorable_string_and_key() -> None:
    raw = json.dumps(
        {"a": NUL, "b": ["ok", SURROGATE], "c\x00": 1, "d": {"e f": [{"g": "\udfff"}]}}
    ).encode()
    error = parse_error(raw)
    assert (error.status, error.code) == (422, "validation_failed")
    assert {(e["field"], e["message"]) for e in error.details["errors"]} == {
        ("$.a", "must not contain NUL characters"),
        ("$.b[1]", "must not contain a lone surrogate (U+D800)"),
        ('$["c\\u0000"]', "the key must not contain NUL characters"),
        ('$.d["e f"][0].g', "must not contain a lone surrogate (U+DFFF)"),
    }
    assert [e["field"] for e in parse_error(b'"\\u0000"').details["errors"]] == ["$"]


def test_text_errors_are_capped() -> None:
    errors = codec.text_errors(["\x00"] * 1000)
    assert len(errors) == codec.MAX_TEXT_ERRORS
    assert errors[0]["field"] == "$[0]"


class CountedList(list[Any]):
    """A list that counts the items iterated over."""

    iterated = 0

    def __iter__(self) -> Iterator[Any]:
        for item in super().__iter__():
            self.iterated += 1
            yield item


def test_text_errors_stop_at_the_cap_within_one_container() -> None:
    bad = CountedList(["\x00"] * 100_000)
    errors = codec.text_errors({"a": bad})
    assert len(errors) == codec.MAX_TEXT_ERRORS
    assert errors[-1]["field"] == f"$.a[{codec.MAX_TEXT_ERRORS - 1}]"
    assert bad.iterated <= codec.MAX_TEXT_ERRORS + 1


def test_only_a_body_with_many_brackets_is_measured_for_depth(monkeypatch) -> None:
    measured: list[bytes] = []
    real = codec.nesting_depth
    monkeypatch.setattr(codec, "nesting_depth", lambda raw: measured.append(raw) or real(raw))
    ordinary = json.dumps({"a": [{"b": [1, 2]}] * 16}).encode()
    codec.parse_json(ordinary)
    assert measured == []
    deep = b"[" * (codec.MAX_DEPTH + 1) + b"]" * (codec.MAX_DEPTH + 1)
    assert parse_error(deep).code == "malformed_json"
    assert measured == [deep]


@attrs.frozen
class Bounded:
    small: Int4
    maybe: Int4 | None = None
    many: list[Int4] = attrs.Factory(list)
    big: int = 0


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"small": INT4.high + 1}, "$.small"),
        ({"small": INT4.low - 1}, "$.small"),
        ({"small": 1, "maybe": INT4.high + 1}, "$.maybe"),
        ({"small": 1, "many": [1, INT4.low - 1]}, "$.many[1]"),
        ({"small": 1, "big": 2**63}, "$.big"),
        ({"small": 1, "big": -(2**63) - 1}, "$.big"),
        ({"small": True}, "$.small"),
        ({"small": 1.0}, "$.small"),
    ],
)
def test_structure_bounds_integers_to_their_column(data: dict[str, Any], field: str) -> None:
    with pytest.raises(ApiError) as caught:
        codec.structure(data, Bounded)
    assert caught.value.status == 422
    assert [e["field"] for e in caught.value.details["errors"]] == [field]


def test_structure_admits_the_bounds_themselves() -> None:
    data = {"small": INT4.high, "maybe": INT4.low, "many": [0], "big": -(2**63)}
    assert codec.structure(data, Bounded) == Bounded(INT4.high, INT4.low, [0], -(2**63))


@pytest.mark.parametrize("value", ["Free", {"0": 1}, 7, None])
def test_structure_takes_only_an_array_where_a_list_belongs(value: Any) -> None:
    # cattrs alone takes any iterable: "Free" became ['F', 'r', 'e', 'e'].
    with pytest.raises(ApiError) as caught:
        codec.structure({"small": 1, "many": value}, Bounded)
    assert caught.value.status == 422
    assert [e["field"] for e in caught.value.details["errors"]] == ["$.many"]
