"""Operations endpoints: /livez, /readyz (each dependency and state) and /metrics."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any
from uuid import uuid4

import attrs
import pytest
import trio
import trio_asyncio
from prometheus_client.parser import text_string_to_metric_families

from flatrender.actors import job
from flatrender.actors.supervisor import ChildSpec, Supervisor
from flatrender.actors.system import ActorSystem
from flatrender.config import Config
from flatrender.daemon import Daemon
from flatrender.embedded import EmbeddedPostgres
from flatrender.http.app import create_app
from flatrender.http.common import AppState
from flatrender.persistence import nodes
from flatrender.persistence.db import Database, open_database
from flatrender.storage import MinioStore
from tests.actors.test_job_actor import rendering_job
from tests.helpers import Tokens
from tests.http.test_internal import NodeClient


async def get(app_state: AppState, path: str) -> Any:
    app = create_app(app_state)
    async with app.test_app() as test_app:
        return await test_app.test_client().get(path)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def not_ready(response: Any) -> dict[str, str]:
    assert response.status_code == 503
    body = await response.get_json()
    assert body["error"]["code"] == "not_ready"
    checks: dict[str, str] = body["error"]["details"]["checks"]
    return checks


async def test_livez_answers_without_a_token(client) -> None:
    response = await client.get("/livez")
    assert response.status_code == 200
    assert await response.get_json() == {"status": "ok"}


async def test_readyz_is_200_when_database_storage_and_actors_answer(client) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    checks = {
        "database": "ok",
        "object_storage": "ok",
        "actors": "ok",
        "leader": "ok",
        "running": "ok",
    }
    assert await response.get_json() == {"status": "ready", "checks": checks}


async def test_readyz_is_503_before_the_actors_are_rebuilt(config: Config, db: Database) -> None:
    starting = AppState(config=config, db=db, store=MinioStore(config.s3))
    checks = await not_ready(await get(starting, "/readyz"))
    assert checks == {
        "database": "ok",
        "object_storage": "ok",
        "actors": "not rebuilt yet",
        "leader": "ok",
        "running": "ok",
    }


async def test_readyz_is_503_on_a_standby(app_state: AppState) -> None:
    app_state.leading = False
    checks = await not_ready(await get(app_state, "/readyz"))
    assert checks["leader"] == "standby"
    assert checks["database"] == checks["object_storage"] == checks["actors"] == "ok"


async def test_readyz_is_503_from_the_moment_the_daemon_is_told_to_stop(
    app_state: AppState,
) -> None:
    daemon = Daemon(app_state.config, app_state=app_state)
    daemon.stop()
    checks = await not_ready(await get(app_state, "/readyz"))
    assert checks["running"] == "stopping"
    assert checks["leader"] == checks["database"] == checks["actors"] == "ok"


async def test_readyz_is_503_when_object_storage_is_unreachable(app_state: AppState) -> None:
    s3 = attrs.evolve(app_state.config.s3, endpoint=f"127.0.0.1:{closed_port()}")
    app_state.store = MinioStore(s3)
    checks = await not_ready(await get(app_state, "/readyz"))
    assert checks["object_storage"] == "unavailable: StorageUnavailable"
    assert checks["database"] == "ok"


@pytest.fixture
async def doomed_db(pg_server: EmbeddedPostgres) -> AsyncIterator[tuple[str, Database]]:
    """A pool on a database of its own, which the test may drop under it."""
    name = f"doomed_{uuid4().hex[:8]}"
    url = pg_server.create_database(name, template="flatrender_template")
    async with trio_asyncio.open_loop(), open_database(url, 1, 2) as database:
        yield name, database


async def test_readyz_is_503_when_the_database_is_gone(
    config: Config, doomed_db: tuple[str, Database], pg_server: EmbeddedPostgres
) -> None:
    name, database = doomed_db
    state = AppState(config=config, db=database, store=MinioStore(config.s3))
    state.actors = object()  # type: ignore[assignment]  # only the database is under test
    response = await get(state, "/readyz")
    assert response.status_code == 200
    async with open_database(pg_server.url_for("postgres"), 1, 1) as admin:
        # Terminates the pool's sessions: every query from now on fails to connect.
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    checks = await not_ready(await get(state, "/readyz"))
    assert checks["database"].startswith("unavailable: ")
    assert checks["object_storage"] == "ok"


# ------------------------------------------------------------------ /metrics


async def scrape(client: Any) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample of the exposition, by sample name and then by its sorted labels."""
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    text = (await response.get_data()).decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def one(samples: dict[str, dict[Any, float]], name: str, **labels: str) -> float:
    return samples[name][tuple(sorted(labels.items()))]


async def test_metrics_parse_and_the_counters_move_with_the_farm(
    client, actor_system: ActorSystem, db: Database, tokens: Tokens
) -> None:
    before = await scrape(client)
    assert one(before, "flatrender_heartbeats_total") == 0
    assert one(before, "flatrender_frame_reports_total") == 0
    assert one(before, "flatrender_dispatch_latency_seconds_count") == 0
    assert one(before, "flatrender_actors", kind="service", state="running") == 8
    assert one(before, "flatrender_actors", kind="node", state="running") == 0
    assert one(before, "flatrender_websocket_watchers") == 0
    assert one(before, "flatrender_db_pool_max") == 4
    assert "process_resident_memory_bytes" in before

    node_id = uuid4()
    await actor_system.fleet.register(node_id, nodes.NewNode("m1", "eu", "10.0.0.9", 9000, "2024"))
    agent = NodeClient(client, node_id)
    assert (await agent.heartbeat()).status_code == 200
    job_id = await rendering_job(db, tokens.user_id)
    await actor_system.jobs.start_job(job_id)
    await actor_system.jobs.call(job_id, job.Inspect)  # served once its ranges are planned
    await actor_system.scheduler.round()
    assert actor_system.scheduler.stats.dispatched == 1
    answer = await (await agent.heartbeat()).get_json()
    (command,) = answer["pending_commands"]
    assert command["type"] == "RenderFrames"
    await agent.heartbeat(acked_command_ids=[command["id"]])  # delivered once, measured once
    range_id = command["frame_job_id"]
    report = {"node_id": str(node_id), "frame_job_id": range_id, "frame_number": 0}
    response = await agent.post(f"/v1/internal/render/jobs/{job_id}/frames", report)
    assert response.status_code == 204

    after = await scrape(client)
    assert one(after, "flatrender_heartbeats_total") == 3
    assert one(after, "flatrender_frame_reports_total") == 1
    assert one(after, "flatrender_crash_reports_total") == 0
    assert one(after, "flatrender_dispatch_latency_seconds_count") == 1
    assert one(after, "flatrender_dispatch_latency_seconds_bucket", le="+Inf") == 1
    assert 0 < one(after, "flatrender_dispatch_latency_seconds_sum") < 60
    assert one(after, "flatrender_dispatched_total") == 1
    assert one(after, "flatrender_actors", kind="node", state="running") == 1
    assert one(after, "flatrender_actors", kind="job", state="running") == 1
    assert one(after, "flatrender_mailbox_depth_max", kind="node") == 0
    assert one(after, "flatrender_nodes", status="Busy") == 1
    assert one(after, "flatrender_jobs", step="Rendering") == 1
    assert one(after, "flatrender_db_pool_connections", state="in_use") == 0


async def test_crash_reports_are_counted_once(client, actor_system: ActorSystem, db) -> None:
    from tests.http.test_internal import make_job

    node_id = uuid4()
    await actor_system.fleet.register(node_id, nodes.NewNode("m2", "eu", "10.0.0.8", 9000, "2024"))
    agent = NodeClient(client, node_id)
    job_id = await make_job(db, uuid4())
    crash = {"node_id": str(node_id), "last_known_frame": 3}
    for _ in range(2):  # the same report again: recorded (and counted) once
        response = await agent.post(f"/v1/internal/render/jobs/{job_id}/crash", crash)
        assert response.status_code == 200
    assert one(await scrape(client), "flatrender_crash_reports_total") == 1


async def test_each_app_has_its_own_registry_and_s3_errors_count(app_state: AppState) -> None:
    s3 = attrs.evolve(app_state.config.s3, endpoint=f"127.0.0.1:{closed_port()}")
    unreachable = attrs.evolve(app_state, store=MinioStore(s3))
    # Two apps in one process: a shared (global) registry would refuse the second collector.
    async with create_app(app_state).test_app() as a, create_app(unreachable).test_app() as b:
        await b.test_client().get("/readyz")  # one failed call to the store
        assert one(await scrape(a.test_client()), "flatrender_s3_errors_total") == 0
        assert one(await scrape(b.test_client()), "flatrender_s3_errors_total") == 1


async def test_metrics_leave_out_the_counts_while_the_database_is_gone(
    config: Config, doomed_db: tuple[str, Database], pg_server: EmbeddedPostgres
) -> None:
    name, database = doomed_db
    await nodes.insert(database, uuid4(), nodes.NewNode("d1", "eu", "10.0.0.7", 9000, "2024"))
    state = AppState(config=config, db=database, store=MinioStore(config.s3))
    app = create_app(state)
    async with app.test_app() as test_app:
        http = test_app.test_client()
        assert sum((await scrape(http))["flatrender_nodes"].values()) == 1
        async with open_database(pg_server.url_for("postgres"), 1, 1) as admin:
            await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        samples = await scrape(http)
    assert "flatrender_nodes" not in samples and "flatrender_jobs" not in samples
    assert one(samples, "flatrender_s3_errors_total") == 0


async def test_the_mailbox_depth_is_what_waits_in_a_childs_inbox(nursery) -> None:
    supervisor = await nursery.start(Supervisor().run)

    async def deaf(*, task_status: trio.TaskStatus[trio.MemorySendChannel[int]]) -> None:
        send, receive = trio.open_memory_channel[int](8)
        task_status.started(send)
        async with receive:
            await trio.sleep_forever()  # never reads: whatever is sent waits

    async def service(*, task_status: trio.TaskStatus[object]) -> None:
        task_status.started(object())  # a handle that is no inbox
        await trio.sleep_forever()

    inbox = await supervisor.start_child(ChildSpec("deaf", deaf))
    await supervisor.start_child(ChildSpec("service", service))
    for n in range(3):
        inbox.send_nowait(n)
    children = supervisor.statistics().children
    assert (children["deaf"].queued, children["service"].queued) == (3, 0)
