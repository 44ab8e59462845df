"""Operations endpoints (DESIGN §5), no token: ``/livez``, ``/readyz`` and ``/metrics``.

``/livez`` says the process answers. ``/readyz`` is 200 only when PostgreSQL and the object
store answer, the actors are rebuilt and this daemon leads (``AppState.leading``); else 503
with the error body naming each failed check. ``/metrics`` is the Prometheus text format, from
a registry of this app's own (several apps in one process never share one), filled by
:class:`DaemonCollector` at scrape time from what the actors already keep.
"""

from __future__ import annotations

import logging
from typing import Any

import trio
from flask.sansio.blueprints import BlueprintSetupState
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.process_collector import ProcessCollector
from quart import Blueprint, Response, current_app

from flatrender.http.common import AppState, state
from flatrender.http.errors import error_response
from flatrender.http.ops_metrics import DaemonCollector

log = logging.getLogger("flatrender.http")

bp = Blueprint("ops", __name__)

_METRICS = "flatrender.metrics"
# Each readiness check gets this long: a probe must answer well within a balancer's timeout.
CHECK_SEC = 2.0
# A key no one writes: a stat that answers "not found" proves the store answers.
PROBE_KEY = "flatrender-readyz-probe"


@bp.record_once
def _install_metrics(setup: BlueprintSetupState) -> None:
    app_state = setup.app.config["FLATRENDER_STATE"]
    registry = CollectorRegistry(auto_describe=False)
    collector = DaemonCollector(app_state)
    registry.register(collector)
    ProcessCollector(registry=registry)
    setup.app.extensions[_METRICS] = (registry, collector)


@bp.get("/livez")
async def livez() -> dict[str, Any]:
    # Liveness only (no database): also the trivial endpoint bench/heartbeats measures.
    return {"status": "ok"}


@bp.get("/readyz")
async def readyz() -> Response | dict[str, Any]:
    checks = await readiness(state())
    if all(value == "ok" for value in checks.values()):
        return {"status": "ready", "checks": checks}
    failed = ", ".join(name for name, value in checks.items() if value != "ok")
    return error_response(503, "not_ready", f"not ready: {failed}", {"checks": checks})


@bp.get("/metrics")
async def metrics() -> Response:
    registry, collector = current_app.extensions[_METRICS]
    await collector.refresh()
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


async def readiness(app_state: AppState) -> dict[str, str]:
    """Each check's outcome, ``"ok"`` or why not; the two probes run side by side."""
    checks = {
        "database": "unchecked",
        "object_storage": "unchecked",
        "actors": "ok" if app_state.actors is not None else "not rebuilt yet",
        "leader": "ok" if app_state.leading else "standby",
        "running": "stopping" if app_state.draining else "ok",
    }

    async def database() -> None:
        await app_state.db.fetchval("SELECT 1")

    async def object_storage() -> None:
        await app_state.store.stat(PROBE_KEY)

    async def probe(name: str, check: Any) -> None:
        with trio.move_on_after(CHECK_SEC):
            try:
                await check()
            except Exception as e:  # any failure of a probe is "not ready", never a 500
                checks[name] = f"unavailable: {type(e).__name__}"
                log.debug("readiness: %s unavailable: %s", name, e)
                return
            checks[name] = "ok"
            return
        checks[name] = f"no answer within {CHECK_SEC:g}s"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(probe, "database", database)
        nursery.start_soon(probe, "object_storage", object_storage)
    return checks
