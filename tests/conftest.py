"""Real services for the test session: an embedded PostgreSQL (pgserver) and S3 (weed mini).

The schema is migrated once into a template database; every test gets its own copy of it, so
tests are isolated and still run against the real migrations.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from uuid import uuid4

import pytest
import trio
import trio_asyncio

from flatrender.actors.system import ActorSystem
from flatrender.config import Config
from flatrender.embedded import EmbeddedPostgres, EmbeddedS3
from flatrender.http.app import create_app
from flatrender.http.auth import mint_token
from flatrender.http.common import AppState
from flatrender.persistence.db import Database, open_database
from flatrender.persistence.migrate import migrate
from flatrender.storage import MinioStore
from tests import conformance
from tests.helpers import Tokens

TEMPLATE_DB = "flatrender_template"
JWT_SECRET = "test-jwt-secret-0123456789-abcdefghij"
SERVICE_TOKEN = "svc-test-token-0123456789abcdef"
NODE_MASTER_KEY = "test-node-master-key-0123456789abcdef"

_db_names = itertools.count()


async def _migrate(url: str) -> None:
    async with trio_asyncio.open_loop(), open_database(url, 1, 1) as db:
        await migrate(db)


@pytest.fixture(autouse=True)
def contract_conformance(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every response a test client receives under /v1 must conform to the served document."""
    conformance.install(monkeypatch)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    root = tmp_path_factory.mktemp("pg")
    with EmbeddedPostgres(root / "data", delete_on_stop=True) as server:
        trio.run(_migrate, server.create_database(TEMPLATE_DB))
        yield server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedS3]:
    with EmbeddedS3(tmp_path_factory.mktemp("s3"), bucket="flatrender-test") as server:
        yield server


@pytest.fixture
def database_url(pg_server: EmbeddedPostgres) -> str:
    """A fresh, fully migrated database for this test."""
    name = f"t{os.getpid()}_{next(_db_names)}"
    return pg_server.create_database(name, template=TEMPLATE_DB)


@pytest.fixture
def config(database_url: str, s3_server: EmbeddedS3) -> Config:
    return Config.from_mapping(
        {
            "database": {"url": database_url},
            "s3": {
                "endpoint": s3_server.endpoint,
                "access_key": s3_server.access_key,
                "secret_key": s3_server.secret_key,
                "bucket": s3_server.bucket,
            },
            "auth": {
                "jwt_secret": JWT_SECRET,
                "service_tokens": [SERVICE_TOKEN],
                "node_master_key": NODE_MASTER_KEY,
            },
            "http": {"port": 8080, "grace_sec": 2.0},
        }
    )


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    async with trio_asyncio.open_loop(), open_database(database_url, 1, 4) as database:
        yield database


@pytest.fixture
def tokens() -> Tokens:
    user, other, admin = uuid4(), uuid4(), uuid4()
    return Tokens(
        secret=JWT_SECRET,
        user_id=user,
        user=mint_token(JWT_SECRET, user),
        other_user_id=other,
        other_user=mint_token(JWT_SECRET, other),
        admin=mint_token(JWT_SECRET, admin, role="admin"),
        service=SERVICE_TOKEN,
    )


@pytest.fixture
async def actor_system(
    db: Database, config: Config, nursery: trio.Nursery
) -> AsyncIterator[ActorSystem]:
    """The real actor system (health writer, fleet, reaper) on this test's database."""
    system = ActorSystem(db, MinioStore(config.s3), lambda: config)
    await nursery.start(system.run)
    yield system
    await system.drain()


@pytest.fixture
async def app_state(config: Config, db: Database, actor_system: ActorSystem) -> AppState:
    return AppState(config=config, db=db, store=MinioStore(config.s3), actors=actor_system)


@pytest.fixture
async def client(app_state: AppState) -> AsyncIterator[object]:
    app = create_app(app_state)
    async with app.test_app() as test_app:
        yield test_app.test_client()


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
