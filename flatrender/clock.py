"""Wall-clock time, injected wherever a timestamp is stored (deadlines use trio's clock)."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    return datetime.now(UTC)
