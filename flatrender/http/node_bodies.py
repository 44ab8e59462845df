"""The bodies node agents send (DESIGN §4), each with the bounds of the columns it lands in.

Structuring (cattrs, strict types) refuses wrong types; ``errors()`` then refuses values the
database would: every number outside its column's range, text or lists past a sane length, and
times Python cannot convert to UTC (text holding NUL or a lone surrogate never gets this far:
``parse_json`` refuses it in any body). Each refusal names its field, so a bad report is a 422
and never reaches an actor.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import attrs

from flatrender.domain.bounds import BIGINT, INT4
from flatrender.http.codec import parse_json, structure
from flatrender.http.errors import unprocessable

# A frame number or "none yet" (-1, the frame before a range starting at 0).
NO_FRAME = -1
# Crash logs are kept to their tail; the full log lives at log_file_url.
MAX_ERROR_LOG = 64 * 1024
MAX_NAME = 100  # versions, signals, statuses
MAX_URL = 2048
MAX_MD5 = 64  # an md5 is 32 hex digits; room for a sha256
MAX_LIST = 10_000
MAX_BODY_TEXT = 1024 * 1024  # as long as a whole body may be
# Times a node reports: any its clock may plausibly say, all convertible to UTC.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)

CACHE_ACTIONS = ("Downloaded", "Evicted", "Verified", "Failed")

Errors = list[dict[str, str]]


class Check:
    """Collects the field errors of one body."""

    def __init__(self) -> None:
        self.errors: Errors = []

    def fail(self, field: str, message: str) -> None:
        self.errors.append({"field": f"$.{field}", "message": message})

    def number(self, field: str, value: int | None, low: int = 0, high: int = INT4.high) -> None:
        if value is not None and not low <= value <= high:
            self.fail(field, f"must be {low}..{high}")

    def text(
        self, field: str, value: str | None, max_length: int, *, required: bool = False
    ) -> None:
        if value is None:
            return
        if len(value) > max_length:
            self.fail(field, f"at most {max_length} characters")
        elif required and not value:
            self.fail(field, "must not be empty")

    def texts(self, field: str, values: Sequence[str], max_items: int, max_length: int) -> None:
        if len(values) > max_items:
            self.fail(field, f"at most {max_items} items")
            return
        for i, value in enumerate(values):
            before = len(self.errors)
            self.text(f"{field}[{i}]", value, max_length, required=True)
            if len(self.errors) > before:
                return  # the first bad item is enough to name

    def time(self, field: str, value: datetime | None) -> None:
        if value is not None and not EARLIEST <= value < LATEST:
            self.fail(field, f"must lie between {EARLIEST.year} and {LATEST.year}")


@attrs.frozen
class HeartbeatIn:
    cpu_pct: int = 0
    ram_available_mb: int = 0
    ae_running: bool = False
    cache_used_gb: int = 0
    node_id: UUID | None = None
    recorded_at: datetime | None = None
    status: str | None = None
    current_job_id: UUID | None = None
    current_frame: int | None = None
    acked_command_ids: list[UUID] = attrs.Factory(list)

    def errors(self, path_node_id: UUID | None) -> Errors:
        check = Check()
        if self.node_id is not None and self.node_id != path_node_id:
            check.fail("node_id", "differs from the node in the path")
        check.number("cpu_pct", self.cpu_pct, 0, 100)
        check.number("ram_available_mb", self.ram_available_mb)
        check.number("cache_used_gb", self.cache_used_gb)
        check.number("current_frame", self.current_frame)
        check.time("recorded_at", self.recorded_at)
        check.text("status", self.status, MAX_NAME)
        if len(self.acked_command_ids) > 1000:
            check.fail("acked_command_ids", "at most 1000 ids")
        return check.errors


@attrs.frozen
class OnlineIn:
    node_agent_version: str
    current_ae_version: str
    available_ae_versions: list[str] = attrs.Factory(list)
    ram_gb: int = 0
    cpu_cores: int = 0
    cache_used_gb: int = 0
    cached_template_md5s: list[str] = attrs.Factory(list)

    def errors(self, _: UUID | None) -> Errors:
        check = Check()
        for name in ("ram_gb", "cpu_cores", "cache_used_gb"):
            check.number(name, getattr(self, name))
        check.text("node_agent_version", self.node_agent_version, MAX_NAME, required=True)
        check.text("current_ae_version", self.current_ae_version, MAX_NAME, required=True)
        check.texts("available_ae_versions", self.available_ae_versions, 100, MAX_NAME)
        check.texts("cached_template_md5s", self.cached_template_md5s, MAX_LIST, MAX_MD5)
        return check.errors


@attrs.frozen
class CacheUpdateIn:
    action: str
    aep_file_md5: str
    project_id: UUID | None = None
    file_size_bytes: int | None = None
    cache_used_gb: int | None = None
    error_message: str | None = None

    def errors(self, _: UUID | None) -> Errors:
        check = Check()
        if self.action not in CACHE_ACTIONS:
            check.fail("action", f"must be one of {', '.join(CACHE_ACTIONS)}")
        check.text("aep_file_md5", self.aep_file_md5, MAX_MD5, required=True)
        check.number("file_size_bytes", self.file_size_bytes, 0, BIGINT.high)
        check.number("cache_used_gb", self.cache_used_gb)
        check.text("error_message", self.error_message, MAX_ERROR_LOG)
        return check.errors


@attrs.frozen
class CrashIn:
    node_id: UUID
    frame_job_id: UUID | None = None
    last_known_frame: int | None = None
    crash_signal: str = ""
    ae_version: str = ""
    error_log_tail: str = ""
    log_file_url: str = ""

    def errors(self, _: UUID | None) -> Errors:
        check = Check()
        check.number("last_known_frame", self.last_known_frame, NO_FRAME)
        check.text("crash_signal", self.crash_signal, MAX_NAME)
        check.text("ae_version", self.ae_version, MAX_NAME)
        # Cut to its last MAX_ERROR_LOG characters when stored; the body's cap bounds it here.
        check.text("error_log_tail", self.error_log_tail, MAX_BODY_TEXT)
        check.text("log_file_url", self.log_file_url, MAX_URL)
        return check.errors


@attrs.frozen
class FrameIn:
    node_id: UUID
    frame_job_id: UUID
    frame_number: int
    file_size_bytes: int | None = None
    completed_at: datetime | None = None

    def errors(self, _: UUID | None) -> Errors:
        check = Check()
        check.number("frame_number", self.frame_number)
        check.number("file_size_bytes", self.file_size_bytes, 0, BIGINT.high)
        check.time("completed_at", self.completed_at)
        return check.errors


@attrs.frozen
class ReplicaReadyIn:
    node_id: UUID
    replica_path: str
    replica_md5: str | None = None

    def errors(self, _: UUID | None) -> Errors:
        # replica_path is checked against the key the job issued (see the handler).
        check = Check()
        check.text("replica_md5", self.replica_md5, MAX_MD5)
        return check.errors


def validated(raw: bytes, cls: type[Any], path_node_id: UUID | None = None) -> Any:
    """The body structured into ``cls`` and checked; a 422 naming every bad field."""
    value = structure(parse_json(raw), cls)
    errors: Errors = value.errors(path_node_id)
    if errors:
        raise unprocessable("the request body is invalid", errors)
    return value
