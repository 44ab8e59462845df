"""The Notifier: delivers the notification outbox to the configured webhook, with retries.

Owns the outbox's delivery columns and one HTTP client. Rows are written by the job actors in
the transaction that ends a job (DESIGN §6 ``tell_me_when_done``); the Notifier posts each as
JSON to ``[notify] webhook_url`` and marks it delivered on a 2xx answer, or records the error
and tries again after a doubling delay until ``max_attempts`` are spent. Delivery is at least
once: a daemon killed between the POST and the commit posts it again after its restart, and
receivers deduplicate by ``notification_id``. With an empty ``webhook_url`` nothing is sent and
rows wait (a SIGHUP that sets the url delivers them). When ``secret`` is set, each POST is
signed like the node protocol: ``X-Flatrender-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret,
"<t>.POST.<url path>.<sha256 of body>")>``. Neither the url nor the secret is logged.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import attrs
import httpx
import trio

from flatrender.actors.mailbox import MESSAGE_ERRORS
from flatrender.clock import utc_now
from flatrender.config import Config, NotifyConfig
from flatrender.domain import notify, signing
from flatrender.persistence import notifications
from flatrender.persistence.db import UNAVAILABLE_ERRORS, Database, DatabaseUnavailable

log = logging.getLogger("flatrender.notify")

BATCH = 50
_DB_DOWN: tuple[type[BaseException], ...] = (DatabaseUnavailable, *UNAVAILABLE_ERRORS)


@attrs.frozen
class NotifierStatistics:
    delivered: int
    failed: int  # attempts that failed (each is retried until max_attempts)
    abandoned: int  # notifications whose attempts are spent


class Notifier:
    def __init__(
        self,
        db: Database,
        config: Callable[[], Config],
        *,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self._db = db
        self._config = config
        self._now = now
        self._wake = trio.Event()
        self._delivered = self._failed = self._abandoned = 0

    def wake(self) -> None:
        """A notification was just committed: look at the outbox now, not at the next poll."""
        self._wake.set()

    async def run(
        self, *, task_status: trio.TaskStatus[Notifier] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Deliver what is due, then wait for a wake-up or the poll interval; until cancelled."""
        async with httpx.AsyncClient() as client:
            task_status.started(self)
            while True:
                cfg = self._config().notify
                if cfg.webhook_url:
                    try:
                        while await self.deliver_due(client) == BATCH:
                            pass  # a backlog: keep going without waiting
                    except _DB_DOWN as e:
                        log.warning("notifications wait, database unavailable: %s", e)
                    except MESSAGE_ERRORS as e:
                        log.error("notifications wait, the database refused a write: %s", e)
                with trio.move_on_after(cfg.poll_interval_sec):
                    await self._wake.wait()
                self._wake = trio.Event()

    async def deliver_due(self, client: httpx.AsyncClient) -> int:
        """One pass over the due notifications (at most ``BATCH``); returns how many it tried."""
        cfg = self._config().notify
        if not cfg.webhook_url:
            return 0
        batch = await notifications.due(self._db, self._now(), cfg.max_attempts, BATCH)
        for pending in batch:
            await self._deliver(client, cfg, pending)
        return len(batch)

    async def _deliver(
        self, client: httpx.AsyncClient, cfg: NotifyConfig, pending: notifications.Pending
    ) -> None:
        body = json.dumps({**pending.payload, "notification_id": pending.id}).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Flatrender-Event": pending.event,
            "X-Flatrender-Delivery": str(pending.id),
        }
        if cfg.secret:
            path = urlsplit(cfg.webhook_url).path or "/"
            headers[notify.SIGNATURE_HEADER] = signing.sign(
                cfg.secret, int(time.time()), "POST", path, body
            )
        error: str | None = None
        try:
            answer = await client.post(
                cfg.webhook_url, content=body, headers=headers, timeout=cfg.timeout_sec
            )
            if not notify.delivered(answer.status_code):
                error = f"webhook answered {answer.status_code}"
        except httpx.HTTPError as e:
            # Text from the wire and the receiver: kept printable, so that PostgreSQL can store
            # it (a NUL would fail the row's every attempt and the Notifier with it).
            error = _printable(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
        now = self._now()
        if error is None:
            await notifications.mark_delivered(self._db, pending.id, now)
            self._delivered += 1
            log.info(
                "notification %d (%s, job %s) delivered", pending.id, pending.event, pending.job_id
            )
            return
        attempts = pending.attempts + 1
        delay = notify.retry_delay(attempts, base_sec=cfg.retry_base_sec, max_sec=cfg.retry_max_sec)
        await notifications.mark_failed(self._db, pending.id, error, now + timedelta(seconds=delay))
        self._failed += 1
        if attempts >= cfg.max_attempts:
            self._abandoned += 1
            log.error(
                "notification %d (%s, job %s) abandoned after %d attempts: %s",
                pending.id,
                pending.event,
                pending.job_id,
                attempts,
                error,
            )
        else:
            log.warning(
                "notification %d (%s, job %s) attempt %d failed, next in %.0f s: %s",
                pending.id,
                pending.event,
                pending.job_id,
                attempts,
                delay,
                error,
            )

    def statistics(self) -> NotifierStatistics:
        return NotifierStatistics(self._delivered, self._failed, self._abandoned)


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else " " for c in text)
