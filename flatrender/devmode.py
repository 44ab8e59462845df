"""``flatrender dev``: the whole system on one machine with nothing set up beforehand.

Embedded PostgreSQL and S3 live in the state folder (a configured DSN or S3 endpoint replaces
them), migrations are applied, demo projects and a balance are seeded, and the tokens a person
needs are printed and written to ``<state-dir>/dev.json``. Secrets are generated once and kept in
``<state-dir>/secrets.json`` so a second run reuses the data and the tokens stay valid.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4, uuid5

import attrs
import trio
import trio_asyncio

from flatrender import logs
from flatrender.agent import AgentOptions, run_agent
from flatrender.config import Config, S3Config
from flatrender.daemon import Daemon, serve_forever
from flatrender.domain.catalog import ProjectSpec, Scene
from flatrender.embedded import EmbeddedPostgres, EmbeddedS3
from flatrender.http.auth import mint_token
from flatrender.persistence import catalog, ledger
from flatrender.persistence.db import Database, open_database
from flatrender.persistence.migrate import migrate

log = logging.getLogger("flatrender.dev")

DEV_DATABASE = "flatrender"
DEMO_NAMESPACE = UUID("5d0e8a9c-7a51-4d0c-9a8e-0f1a2b3c4d5e")
DEMO_BALANCE_MINOR = 1_000_000
TOKEN_TTL_SEC = 30 * 24 * 3600


def read_dev_secrets(state_dir: Path) -> dict[str, str]:
    path = state_dir / "secrets.json"
    if not path.exists():
        return {}
    data: dict[str, str] = json.loads(path.read_text())
    return data


def _secrets(state_dir: Path) -> dict[str, str]:
    found = read_dev_secrets(state_dir)
    wanted: dict[str, Callable[[], str]] = {
        "jwt_secret": lambda: secrets.token_urlsafe(32),
        "service_token": lambda: "svc-" + secrets.token_urlsafe(24),
        "node_master_key": lambda: secrets.token_hex(32),
        "user_id": lambda: str(uuid4()),
        "admin_id": lambda: str(uuid4()),
        "s3_access_key": lambda: "dev" + secrets.token_hex(8),
        "s3_secret_key": lambda: secrets.token_urlsafe(24),
    }
    missing = {k: make() for k, make in wanted.items() if k not in found}
    if missing:
        found.update(missing)
        write_private(state_dir / "secrets.json", json.dumps(found, indent=2))
    return found


def write_private(path: Path, text: str) -> None:
    """``text`` in ``path``, readable by this user alone from its first byte (created 0600, not
    restricted after writing) and moved into place whole, so a reader never sees a part."""
    part = path.with_name(f".{path.name}.part")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(fd, 0o600)  # a part file left by a crash may have been created wider
        f.write(text)
    os.replace(part, path)


def demo_projects(owner: UUID) -> list[tuple[UUID, ProjectSpec]]:
    """Short projects so the simulated farm renders them in seconds."""

    def spec(name: str, fps: int, scenes: list[Scene]) -> tuple[UUID, ProjectSpec]:
        total = scenes[-1].end_frame + 1
        md5 = uuid5(DEMO_NAMESPACE, "template:" + name).hex
        return uuid5(DEMO_NAMESPACE, name), ProjectSpec(
            owner_user_id=owner,
            name=name,
            template_md5=md5,
            template_url=f"demo://templates/{md5}.aep",
            ae_version="2024",
            frame_rate=fps,
            total_frames=total,
            duration_sec=total / fps,
            scenes=scenes,
            has_voiceover=False,
        )

    return [
        spec(
            "Demo promo",
            30,
            [Scene("intro", 0, 89), Scene("product", 90, 209), Scene("outro", 210, 299)],
        ),
        spec("Demo story", 25, [Scene("opening", 0, 124), Scene("ending", 125, 249)]),
        spec("Demo teaser", 60, [Scene("main", 0, 179)]),
    ]


async def seed(db: Database, user_id: UUID) -> list[UUID]:
    """Idempotent: projects are upserted, the balance is credited once."""
    ids = []
    for project_id, spec in demo_projects(user_id):
        await catalog.upsert(db, project_id, spec)
        ids.append(project_id)
    seeded = await db.fetchval(
        "SELECT 1 FROM ledger_entries WHERE user_id = $1 AND note = 'dev seed'", user_id
    )
    if not seeded:
        await ledger.credit(db, user_id, DEMO_BALANCE_MINOR, note="dev seed")
    return ids


def run_dev(state_dir: Path, *, port: int, nodes: int, config_path: Path | None) -> int:
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    keys = _secrets(state_dir)
    base = Config.load(config_path)
    logs.configure(base.log.level, base.log.format)
    pg: EmbeddedPostgres | None = None
    s3: EmbeddedS3 | None = None
    try:
        database_url = base.database.url
        if not database_url:
            pg = EmbeddedPostgres(state_dir / "pg").start()
            database_url = pg.create_database(DEV_DATABASE, replace=False)
        embedded_s3: S3Config | None = None
        if not base.s3.endpoint:
            s3 = EmbeddedS3(
                state_dir / "s3",
                access_key=keys["s3_access_key"],
                secret_key=keys["s3_secret_key"],
                bucket=base.s3.bucket,
            ).start()
            embedded_s3 = s3.s3_config()

        def dev_config(path: Path | None) -> Config:
            """The file's configuration with what dev provides filled in: at start and on
            reload (SIGHUP), with ``serve``'s checks."""
            return _dev_config(Config.load(path), keys, port, database_url, embedded_s3)

        config = dev_config(config_path)
        trio.run(_run, config, dev_config, config_path, state_dir, keys, nodes)
    finally:
        if s3 is not None:
            s3.stop()
        if pg is not None:
            pg.stop()
    return 0


def _dev_config(
    base: Config, keys: dict[str, str], port: int, database_url: str, s3: S3Config | None
) -> Config:
    if not base.s3.endpoint and s3 is not None:
        embedded = attrs.evolve(
            base.s3, endpoint=s3.endpoint, access_key=s3.access_key, secret_key=s3.secret_key
        )
        base = attrs.evolve(base, s3=embedded)
    config = attrs.evolve(
        base,
        http=attrs.evolve(base.http, port=port),
        database=attrs.evolve(base.database, url=base.database.url or database_url),
        auth=attrs.evolve(
            base.auth,
            jwt_secret=base.auth.jwt_secret or keys["jwt_secret"],
            service_tokens=base.auth.service_tokens or (keys["service_token"],),
            node_master_key=base.auth.node_master_key or keys["node_master_key"],
        ),
    )
    config.validate()
    config.require_secrets()
    return config


async def _run(
    config: Config,
    loader: Callable[[Path | None], Config],
    config_path: Path | None,
    state_dir: Path,
    keys: dict[str, str],
    nodes: int,
) -> None:
    user_id = UUID(keys["user_id"])
    async with trio_asyncio.open_loop(), open_database(config.database.url, 1, 2) as db:
        applied = await migrate(db)
        if applied:
            log.info("applied %d migration(s)", len(applied))
        project_ids = await seed(db, user_id)
    daemon = Daemon(config, config_path=config_path, loader=loader)
    async with trio.open_nursery() as nursery:

        async def serve(*, task_status: trio.TaskStatus[Daemon]) -> None:
            await serve_forever(daemon, task_status=task_status)
            nursery.cancel_scope.cancel()  # the daemon stopped: so do the simulated nodes

        await nursery.start(serve)
        info = dev_info(config, keys, daemon.binds)
        info["demo_project_ids"] = [str(p) for p in project_ids]
        path = state_dir / "dev.json"
        write_private(path, json.dumps(info, indent=2))
        _announce(info, path, nodes)
        if nodes:
            agents = AgentOptions(
                api=info["api_url"],
                nodes=nodes,
                admin_token=info["service_token"],
                name_prefix="sim",
                state_file=state_dir / "agent-nodes.json",
                work_dir=state_dir / "agent",
            )
            await nursery.start(_agents_until_stop, daemon, agents)


async def _agents_until_stop(
    daemon: Daemon, options: AgentOptions, *, task_status: trio.TaskStatus[None]
) -> None:
    """The simulated nodes, stopped first when the daemon is asked to stop (no noise from
    nodes knocking on a closed port while the daemon drains)."""
    async with trio.open_nursery() as nursery:
        await nursery.start(run_agent, options)
        task_status.started()
        await daemon.stopping()
        nursery.cancel_scope.cancel()


def dev_info(config: Config, keys: dict[str, str], binds: list[str]) -> dict[str, Any]:
    api = binds[0] if binds else f"http://{config.http.host}:{config.http.port}"
    return {
        "api_url": f"{api}/v1",
        "ws_url": api.replace("http://", "ws://", 1) + "/ws/v1",
        "admin_token": _token(config, keys["admin_id"], "admin"),
        "user_token": _token(config, keys["user_id"], "user"),
        "user_id": keys["user_id"],
        "service_token": config.auth.service_tokens[0],
        "node_master_key": config.auth.node_master_key,
        "s3_endpoint": config.s3.endpoint,
        "s3_access_key": config.s3.access_key,
        "s3_secret_key": config.s3.secret_key,
        "s3_bucket": config.s3.bucket,
        "database_url": config.database.url,
    }


def _token(config: Config, user_id: str, role: str) -> str:
    auth = config.auth
    return mint_token(
        auth.jwt_secret,
        UUID(user_id),
        role,
        TOKEN_TTL_SEC,
        audience=auth.jwt_audience,
        issuer=auth.jwt_issuer,
    )


def _announce(info: dict[str, Any], path: Path, nodes: int) -> None:
    lines = [
        "",
        "FlatRender dev is up.",
        f"  API         {info['api_url']}   (OpenAPI: {info['api_url']}/openapi.json)",
        f"  WebSocket   {info['ws_url']}/render/<job_id>",
        f"  user id     {info['user_id']}",
        f"  user token  {info['user_token']}",
        f"  admin token {info['admin_token']}",
        f"  service     {info['service_token']}",
        f"  S3          {info['s3_endpoint']} bucket {info['s3_bucket']}",
        f"  everything above is in {path}",
    ]
    if nodes:
        lines.append(f"  simulated nodes: {nodes} (flatrender agent, in this process)")
    lines.append("Ctrl-C stops everything.")
    print("\n".join(lines), file=sys.stderr, flush=True)
