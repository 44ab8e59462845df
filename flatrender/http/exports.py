"""Exports for their owners (issue 5): list, detail, delete, paid extension, download urls.

Someone else's export is 404, never 403: ids do not leak (admins and services see any by id).
Lists show the caller's own exports, like the render list. Deleting removes the objects first,
then the rows, under the row's lock (``retention.delete_export``); when object storage is down
the answer is 503 (502 when it refuses an object) and the export stays whole enough to delete
again. An extension is priced by the domain (``pricing.extension_price``, ``extension``) and
charged to the export's owner in the transaction that moves the date
(``exports.extend_paid``): concurrent extensions serialise like submits, each charged once.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import attrs
from quart import Blueprint, request

from flatrender.actors.retention import delete_export
from flatrender.clock import utc_now
from flatrender.domain.bounds import Int4
from flatrender.domain.extension import MAX_DAYS, MIN_DAYS, ExtensionVerdict
from flatrender.domain.pricing import extension_price
from flatrender.http.auth import acting_user, require_owner
from flatrender.http.codec import dump
from flatrender.http.common import body, caller, page_from_query, path_uuid, state
from flatrender.http.errors import (
    ApiError,
    conflict,
    insufficient_balance,
    not_found,
    unprocessable,
)
from flatrender.persistence import exports

bp = Blueprint("exports", __name__)

EXPORT = tuple(f for f in exports.EXPORT_FIELDS if f not in ("user_id", "job_id"))
FILE = ("id", "thumbnail", "path", "size_bytes", "file_type")
FORMAT = re.compile(r"^[a-z0-9]{1,16}$")


@attrs.frozen
class ExtendIn:
    days: Int4


def export_json(row: exports.ExportRow) -> dict[str, Any]:
    data = dump(row)
    return {key: data[key] for key in EXPORT}


def file_json(row: exports.ExportFile) -> dict[str, Any]:
    data = dump(row)
    return {key: data[key] for key in FILE}


async def visible_export(export_id: str) -> exports.ExportRow:
    """The export if the caller may see it (owner, admin, service); else 404."""
    principal = caller()
    eid = path_uuid("export_id", export_id)
    row = await exports.get(state().db, eid)
    if row is None:
        raise not_found("export", eid)
    require_owner(principal, row.user_id, "export", eid)
    return row


@bp.get("/v1/exports")
async def list_exports() -> dict[str, Any]:
    user_id = acting_user(caller())
    page = page_from_query()
    rows, total = await exports.list_exports(state().db, user_id, page.page_size, page.offset)
    return {"data": [export_json(row) for row in rows], "meta": page.meta(total)}


@bp.get("/v1/exports/<export_id>")
async def get_export(export_id: str) -> dict[str, Any]:
    row = await visible_export(export_id)
    files = await exports.files_of(state().db, [row.id])
    return {**export_json(row), "files": [file_json(f) for f in files]}


@bp.delete("/v1/exports/<export_id>")
async def delete(export_id: str) -> tuple[str, int]:
    """204 once objects and rows are gone; 404 when already deleted; 503 if storage is down,
    502 if it refuses an object (the rows stay either way)."""
    row = await visible_export(export_id)
    app = state()
    if not await delete_export(app.db, app.store, row.id):
        raise not_found("export", row.id)  # deleted meanwhile by another request or the Reaper
    return "", 204


@bp.post("/v1/exports/<export_id>/extend")
async def extend(export_id: str) -> dict[str, Any]:
    """Move ``auto_delete_date`` by ``days`` (1..365) for the per-day price (domain.pricing).

    402 when the owner's balance does not cover it and 409 when the export is already due for
    deletion (domain.extension); a refusal writes nothing.
    """
    row = await visible_export(export_id)
    spec = await body(ExtendIn)
    if not MIN_DAYS <= spec.days <= MAX_DAYS:
        raise unprocessable(
            "days is out of range",
            [{"field": "$.days", "message": f"must be between {MIN_DAYS} and {MAX_DAYS}"}],
        )
    app = state()
    price = extension_price(spec.days, app.config.pricing)
    done = await exports.extend_paid(app.db, row.user_id, row.id, spec.days, price, utc_now())
    if done is None:
        raise not_found("export", row.id)  # deleted meanwhile
    match done.verdict:
        case ExtensionVerdict.ALLOWED:
            return {"new_auto_delete_date": dump(done.auto_delete_date)}
        case ExtensionVerdict.ALREADY_DUE:
            raise conflict(
                "export_expired",
                "the export is due for deletion and can no longer be extended",
                auto_delete_date=dump(done.auto_delete_date),
            )
        case ExtensionVerdict.INSUFFICIENT_BALANCE:
            raise insufficient_balance("this extension", done.balance_minor, price)


@bp.get("/v1/exports/<export_id>/download-url")
async def download_url(export_id: str) -> dict[str, Any]:
    """A presigned GET for the file of ``format`` (default mp4), valid ``download_url_ttl_sec``."""
    principal = caller()
    eid = path_uuid("export_id", export_id)
    wanted = (request.args.get("format") or "mp4").lower()
    if not FORMAT.match(wanted):
        raise unprocessable(
            "query parameter format is invalid",
            [{"field": "format", "message": "must be a file format such as mp4 or png"}],
        )
    target = await exports.download_target(state().db, eid, wanted)
    if target is None:
        raise not_found("export", eid)
    require_owner(principal, target.user_id, "export", eid)
    if target.key is None:
        raise ApiError(
            404,
            "format_not_found",
            f"the export has no {wanted} file",
            {"id": str(eid), "format": wanted, "available": list(target.formats)},
        )
    ttl = state().config.exports.download_url_ttl_sec
    issued = utc_now()
    url = await state().store.presign_get(target.key, ttl)
    return {"url": url, "expires_at": dump(issued + timedelta(seconds=ttl))}
