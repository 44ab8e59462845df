"""Job-end notifications: written with the job's end, delivered to a real webhook with retries."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import attrs
import httpx
import trio

from flatrender.actors.notifier import Notifier
from flatrender.actors.system import ActorSystem
from flatrender.config import Config
from flatrender.domain import notify, signing
from flatrender.persistence import notifications
from flatrender.persistence.db import Database
from tests.actors.test_job_actor import PRICE, rendering_job
from tests.helpers import Tokens, bearer
from tests.webhook import start_receiver

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def with_webhook(config: Config, url: str, **notify_keys: Any) -> Config:
    return attrs.evolve(config, notify=attrs.evolve(config.notify, webhook_url=url, **notify_keys))


async def ended_job(db: Database, user: UUID) -> UUID:
    """A job row with one job-end notification in its outbox (written as the actor writes it)."""
    job_id = await rendering_job(db, user)
    payload = notify.job_end_payload(
        job_id=job_id,
        user_id=user,
        name="Promo",
        step="Failed",
        export_id=None,
        message="range 0-79 failed 3 times",
        ended_at=T0,
    )
    async with db.transaction() as conn:
        await notifications.enqueue(conn, job_id, user, payload, T0)
        await notifications.enqueue(conn, job_id, user, payload, T0)  # a repeat is ignored
    return job_id


async def test_cancel_of_a_job_that_asked_writes_one_notification_with_the_reason(
    client: Any, db: Database, actor_system: ActorSystem, tokens: Tokens
) -> None:
    asked = await rendering_job(db, tokens.user_id)
    await db.execute("UPDATE render_jobs SET tell_me_when_done = true WHERE id = $1", asked)
    silent = await rendering_job(db, tokens.user_id)
    for job_id in (asked, silent):
        await actor_system.jobs.start_job(job_id)
        response = await client.post(
            f"/v1/renders/{job_id}/cancel",
            json={"reason": "wrong logo"},
            headers=bearer(tokens.user),
        )
        assert (await response.get_json())["refund_amount_minor"] == PRICE

    [row] = await notifications.for_job(db, asked)
    assert row.event == "render.cancelled"
    assert row.payload["step"] == "Cancelled"
    assert row.payload["message"] == "wrong logo"
    assert row.payload["job_id"] == str(asked)
    assert await notifications.for_job(db, silent) == []
    reason = await db.fetchval("SELECT cancel_reason FROM render_jobs WHERE id = $1", asked)
    assert reason == "wrong logo"


async def test_delivery_posts_signed_json_and_marks_it_delivered(
    db: Database, config: Config, tokens: Tokens, nursery: trio.Nursery
) -> None:
    receiver = await start_receiver(nursery)
    cfg = with_webhook(config, receiver.url, secret="hook-secret")
    job_id = await ended_job(db, tokens.user_id)
    notifier = Notifier(db, lambda: cfg, now=lambda: T0)

    async with httpx.AsyncClient() as http:
        assert await notifier.deliver_due(http) == 1
        assert await notifier.deliver_due(http) == 0  # delivered: not sent again

    [hook] = receiver.received
    assert (hook.method, hook.path) == ("POST", "/hooks/render")
    body = json.loads(hook.body)
    [row] = await notifications.for_job(db, job_id)
    assert body["notification_id"] == row.id
    assert body["event"] == "render.failed" == hook.headers["x-flatrender-event"]
    assert body["message"] == "range 0-79 failed 3 times"
    assert signing.verify(
        "hook-secret",
        hook.headers[notify.SIGNATURE_HEADER.lower()],
        "POST",
        "/hooks/render",
        hook.body,
        now=time.time(),
        max_skew=60,
    )
    assert row.delivered_at == T0
    assert row.attempts == 1
    assert notifier.statistics().delivered == 1


async def test_a_failing_webhook_is_retried_after_a_doubling_delay_then_abandoned(
    db: Database, config: Config, tokens: Tokens, nursery: trio.Nursery
) -> None:
    receiver = await start_receiver(nursery)
    receiver.statuses.extend([500, 503, 502])
    cfg = with_webhook(config, receiver.url, max_attempts=3, retry_base_sec=10.0)
    job_id = await ended_job(db, tokens.user_id)
    now = T0
    notifier = Notifier(db, lambda: cfg, now=lambda: now)

    async with httpx.AsyncClient() as http:
        assert await notifier.deliver_due(http) == 1  # 500
        [row] = await notifications.for_job(db, job_id)
        assert (row.attempts, row.last_error) == (1, "webhook answered 500")
        assert row.next_attempt_at == T0 + timedelta(seconds=10)

        now = T0 + timedelta(seconds=9)
        assert await notifier.deliver_due(http) == 0  # not yet
        now = T0 + timedelta(seconds=10)
        assert await notifier.deliver_due(http) == 1  # 503
        [row] = await notifications.for_job(db, job_id)
        assert row.next_attempt_at == now + timedelta(seconds=20)

        now += timedelta(seconds=20)
        assert await notifier.deliver_due(http) == 1  # 502: the third and last attempt
        now += timedelta(days=30)
        assert await notifier.deliver_due(http) == 0  # abandoned, never sent again

    [row] = await notifications.for_job(db, job_id)
    assert (row.attempts, row.delivered_at, row.last_error) == (3, None, "webhook answered 502")
    assert len(receiver.received) == 3
    assert notifier.statistics().abandoned == 1


async def test_an_unreachable_webhook_is_a_failed_attempt_not_a_crash(
    db: Database, config: Config, tokens: Tokens
) -> None:
    with trio.socket.socket() as sock:  # a port nobody listens on
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = with_webhook(config, f"http://127.0.0.1:{port}/hook")
    job_id = await ended_job(db, tokens.user_id)
    notifier = Notifier(db, lambda: cfg, now=lambda: T0)
    async with httpx.AsyncClient() as http:
        assert await notifier.deliver_due(http) == 1
    [row] = await notifications.for_job(db, job_id)
    assert row.attempts == 1
    assert row.delivered_at is None
    assert row.last_error is not None and "ConnectError" in row.last_error


async def test_without_a_webhook_notifications_wait_until_one_is_configured(
    db: Database, config: Config, tokens: Tokens, nursery: trio.Nursery
) -> None:
    job_id = await ended_job(db, tokens.user_id)
    current = with_webhook(config, "")
    notifier = Notifier(db, lambda: current, now=lambda: T0)
    async with httpx.AsyncClient() as http:
        assert await notifier.deliver_due(http) == 0
        [row] = await notifications.for_job(db, job_id)
        assert (row.attempts, row.delivered_at) == (0, None)

        receiver = await start_receiver(nursery)
        current = with_webhook(config, receiver.url)  # as a SIGHUP reload would
        assert await notifier.deliver_due(http) == 1
    assert len(receiver.received) == 1


async def test_the_running_notifier_delivers_as_soon_as_it_is_woken(
    db: Database, config: Config, tokens: Tokens, nursery: trio.Nursery
) -> None:
    receiver = await start_receiver(nursery)
    cfg = with_webhook(config, receiver.url, poll_interval_sec=3600.0)
    notifier = Notifier(db, lambda: cfg, now=lambda: T0)
    await nursery.start(notifier.run)
    job_id = await ended_job(db, tokens.user_id)  # after the first pass found nothing
    notifier.wake()
    [hook] = await receiver.wait_for(1)
    assert json.loads(hook.body)["job_id"] == str(job_id)
