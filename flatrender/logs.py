"""Process-wide logging: one line per event, level and format changeable at run time.

Two formats (``[log] format``): ``text``, a readable line with the context in the message, and
``json``, one JSON object per line (``time``, ``level``, ``logger``, ``message``, ``exception``
when there is one) for journald and log shippers. An event about one job or one node says so
with ``extra={"job_id": ..., "node_id": ...}`` (see :func:`about`); the JSON line carries those
as fields of their own, so a node's or a job's history is one filter away.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FORMATS = ("text", "json")
# Record attributes a log call may set through ``extra=`` that the JSON line carries.
CONTEXT_FIELDS = ("job_id", "node_id")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in the message stay escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = str(value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def about(*, job_id: UUID | None = None, node_id: UUID | None = None) -> dict[str, Any]:
    """The ``extra=`` of an event about a job and/or a node."""
    extra: dict[str, Any] = {}
    if job_id is not None:
        extra["job_id"] = job_id
    if node_id is not None:
        extra["node_id"] = node_id
    return extra


def configure(level: str, format: str = "text") -> None:
    root = logging.getLogger()
    if _handler() is None:
        handler = logging.StreamHandler(sys.stderr)
        handler._flatrender = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    set_format(format)
    set_level(level)
    # Hypercorn logs every request at INFO through its own loggers; keep them at WARNING.
    logging.getLogger("hypercorn.access").setLevel(logging.WARNING)


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())


def set_format(format: str) -> None:
    """Switch our handler to ``format`` (``text`` or ``json``); a no-op before :func:`configure`."""
    if format not in FORMATS:
        raise ValueError(f"unknown log format {format!r}")
    handler = _handler()
    if handler is not None:
        handler.setFormatter(JsonFormatter() if format == "json" else logging.Formatter(FORMAT))


def _handler() -> logging.Handler | None:
    return next((h for h in logging.getLogger().handlers if getattr(h, "_flatrender", False)), None)
