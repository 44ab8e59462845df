"""Logging: JSON lines with job_id / node_id, the format switched like the level, and the
actors' main lines naming what they are about."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from flatrender import logs
from flatrender.actors import job
from flatrender.actors.system import ActorSystem
from flatrender.config import Config, ConfigError
from flatrender.persistence.db import Database
from tests.actors.test_job_actor import rendering_job
from tests.actors.test_node_actor import heartbeat, register
from tests.helpers import Tokens


def json_lines(records: list[logging.LogRecord]) -> list[dict[str, Any]]:
    formatter = logs.JsonFormatter()
    return [json.loads(formatter.format(r)) for r in records]


def test_a_json_line_is_one_object_with_the_ids_as_fields() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("flatrender.test_logs")
    logger.addHandler(handler)
    logger.propagate = False
    job_id, node_id = uuid4(), uuid4()
    try:
        logger.warning("two\nlines %s", "é", extra=logs.about(job_id=job_id, node_id=node_id))
        logger.warning("plain")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logger.exception("failed", extra=logs.about(node_id=node_id))
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    lines = out.getvalue().splitlines()
    assert len(lines) == 3  # one line per event, the message's own newline escaped
    first, plain, failed = (json.loads(line) for line in lines)
    assert set(first) == {"time", "level", "logger", "message", "job_id", "node_id"}
    assert first["time"].endswith("+00:00")
    assert (first["level"], first["logger"]) == ("WARNING", "flatrender.test_logs")
    assert first["message"] == "two\nlines é"
    assert (first["job_id"], first["node_id"]) == (str(job_id), str(node_id))
    assert set(plain) == {"time", "level", "logger", "message"}
    assert failed["node_id"] == str(node_id) and "job_id" not in failed
    assert "RuntimeError: boom" in failed["exception"]


@pytest.fixture
def our_handler() -> Iterator[logging.Handler]:
    """Our root handler, as `flatrender serve` installs it; removed again afterwards."""
    root = logging.getLogger()
    had = [h for h in root.handlers if getattr(h, "_flatrender", False)]
    level = root.level
    logs.configure("INFO", "json")
    handler = logs._handler()
    assert handler is not None
    yield handler
    if not had:
        root.removeHandler(handler)
    else:
        logs.set_format("text")
    root.setLevel(level)


def test_the_format_switches_at_run_time_like_the_level(our_handler: logging.Handler) -> None:
    assert isinstance(our_handler.formatter, logs.JsonFormatter)
    logs.set_format("text")
    assert type(our_handler.formatter) is logging.Formatter
    logs.configure("DEBUG", "json")  # configuring again reuses the one handler
    assert [h for h in logging.getLogger().handlers if getattr(h, "_flatrender", False)] == [
        our_handler
    ]
    assert isinstance(our_handler.formatter, logs.JsonFormatter)
    assert logging.getLogger().level == logging.DEBUG
    with pytest.raises(ValueError, match="xml"):
        logs.set_format("xml")


def test_an_unknown_format_is_refused_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "flatrender.toml"
    path.write_text("[log]\nformat = 'xml'\n")
    with pytest.raises(ConfigError, match=r"\[log\] format"):
        Config.load(path, {})
    path.write_text("[log]\nformat = 'json'\n")
    assert Config.load(path, {}).log.format == "json"
    assert Config.load(None, {"FLATRENDER_LOG_FORMAT": "json"}).log.format == "json"


async def test_node_and_job_actor_lines_carry_their_ids(
    actor_system: ActorSystem, db: Database, tokens: Tokens, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    node_id = await register(actor_system)
    await heartbeat(actor_system, node_id)  # Offline -> Idle
    job_id = await rendering_job(db, tokens.user_id)
    await actor_system.jobs.start_job(job_id)
    await actor_system.jobs.call(job_id, job.Inspect)  # served once it has planned its ranges

    lines = json_lines(caplog.records)
    about_node = [line for line in lines if line.get("node_id") == str(node_id)]
    assert any(f"node {node_id}: Offline -> Idle" in line["message"] for line in about_node)
    about_job = [line for line in lines if line.get("job_id") == str(job_id)]
    assert [line["message"] for line in about_job] == [f"job {job_id}: Queued -> Rendering"]
    assert about_job[0]["logger"] == "flatrender.job"
