"""Node updates end to end: published by the CLI, listed and rolled out over HTTP, carried out by
the RolloutActor, confirmed by the node's signed ``online`` call."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest

from flatrender.actors.rollout import RolloutActor
from flatrender.actors.system import ActorSystem
from flatrender.config import Config
from flatrender.http.common import AppState
from flatrender.persistence import nodes, updates
from flatrender.updates_cli import main as updates_main
from flatrender.updates_cli import publish
from tests.actors.test_rollout import CONTENT, FILE_NAME, STEM, row_statuses
from tests.helpers import Tokens, bearer
from tests.http.test_internal import NodeClient

ROUTES = [("GET", "/v1/node-updates"), ("POST", "/v1/node-updates/{}/rollout")]
NODE_UPDATE_FIELDS = {
    "id",
    "update_file_name",
    "update_number",
    "description",
    "target_ae_version",
    "in_update_queue",
    "rolled_out_to_node_ids",
    "create_date",
    "halted_reason",
}


@pytest.fixture
async def update(app_state: AppState, tmp_path: Path) -> updates.NodeUpdate:
    path = tmp_path / FILE_NAME
    path.write_bytes(CONTENT)
    return await publish(app_state.db, app_state.store, path, "2024", "faster AE start")


async def add_nodes(system: ActorSystem, count: int) -> list[UUID]:
    ids = []
    for _ in range(count):
        node_id = uuid4()
        await system.fleet.register(
            node_id, nodes.NewNode(f"n-{node_id}", "eu", "10.0.0.3", 9000, "2024")
        )
        ids.append(node_id)
    return ids


async def roll_out(client: Any, token: str, update_id: object, body: Any) -> Any:
    return await client.post(
        f"/v1/node-updates/{update_id}/rollout", json=body, headers=bearer(token)
    )


async def error_of(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, await response.get_json()
    error: dict[str, Any] = (await response.get_json())["error"]
    assert error["code"] == code
    return error


# ------------------------------------------------------------------ publish and list


async def test_published_update_is_stored_byte_for_byte_and_listed(
    client: Any, tokens: Tokens, app_state: AppState, update: updates.NodeUpdate
) -> None:
    assert update.storage_key == f"updates/{update.id}/{FILE_NAME}"
    assert await app_state.store.get_bytes(update.storage_key) == CONTENT
    assert update.size_bytes == len(CONTENT)
    response = await client.get("/v1/node-updates", headers=bearer(tokens.admin))
    assert response.status_code == 200
    (listed,) = (await response.get_json())["data"]
    assert set(listed) == NODE_UPDATE_FIELDS
    assert listed["id"] == str(update.id)
    assert (listed["update_number"], listed["update_file_name"]) == (1, FILE_NAME)
    assert (listed["target_ae_version"], listed["description"]) == ("2024", "faster AE start")
    assert (listed["in_update_queue"], listed["rolled_out_to_node_ids"]) == (False, [])
    assert listed["halted_reason"] is None
    assert listed["create_date"].endswith("Z")


async def test_list_is_newest_first(
    client: Any, tokens: Tokens, app_state: AppState, update: updates.NodeUpdate, tmp_path: Path
) -> None:
    path = tmp_path / "agent-2.1.0.zip"
    path.write_bytes(b"next")
    newer = await publish(app_state.db, app_state.store, path, "2024", "")
    response = await client.get("/v1/node-updates", headers=bearer(tokens.service))
    numbers = [u["update_number"] for u in (await response.get_json())["data"]]
    assert numbers == [newer.update_number, update.update_number] == [2, 1]


# ------------------------------------------------------------------ auth and validation


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_every_route_needs_an_admin_or_service_token(
    client: Any, tokens: Tokens, method: str, path: str
) -> None:
    path = path.format(uuid4())
    body = {"json": {"node_ids": [str(uuid4())]}} if method == "POST" else {}
    await error_of(await client.open(path, method=method, **body), 401, "unauthorized")
    response = await client.open(path, method=method, headers=bearer(tokens.user), **body)
    await error_of(response, 403, "forbidden")


async def test_rollout_of_an_unknown_update_is_404(
    client: Any, tokens: Tokens, actor_system: ActorSystem
) -> None:
    (node_id,) = await add_nodes(actor_system, 1)
    missing = uuid4()
    response = await roll_out(client, tokens.admin, missing, {"node_ids": [str(node_id)]})
    error = await error_of(response, 404, "not_found")
    assert error["details"]["id"] == str(missing)


@pytest.mark.parametrize(
    "body",
    [{}, {"node_ids": []}, {"node_ids": None}, {"node_ids": "abc"}, {"node_ids": ["nope"]}],
)
async def test_missing_empty_or_malformed_node_ids_are_422(
    client: Any, tokens: Tokens, update: updates.NodeUpdate, body: dict[str, Any]
) -> None:
    await error_of(await roll_out(client, tokens.admin, update.id, body), 422, "validation_failed")


async def test_non_uuid_update_id_is_422(client: Any, tokens: Tokens) -> None:
    response = await roll_out(client, tokens.admin, "v2", {"node_ids": [str(uuid4())]})
    error = await error_of(response, 422, "validation_failed")
    assert error["details"]["errors"][0]["field"] == "update_id"


async def test_unknown_node_ids_are_422_listing_them_and_nothing_is_queued(
    client: Any, tokens: Tokens, actor_system: ActorSystem, update: updates.NodeUpdate
) -> None:
    (known,) = await add_nodes(actor_system, 1)
    ghost = uuid4()
    body = {"node_ids": [str(known), str(ghost)]}
    error = await error_of(
        await roll_out(client, tokens.admin, update.id, body), 422, "validation_failed"
    )
    assert error["details"]["errors"] == [{"field": "$.node_ids[1]", "message": f"no node {ghost}"}]
    assert str(ghost) in error["message"]
    assert await row_statuses(actor_system.db, update.id) == {}
    got = await updates.get(actor_system.db, update.id)
    assert got is not None and got.in_update_queue is False


# ------------------------------------------------------------------ rollout


async def test_rollout_is_202_with_the_queued_nodes_and_puts_the_update_in_its_queue(
    client: Any, tokens: Tokens, actor_system: ActorSystem, update: updates.NodeUpdate
) -> None:
    a, b = await add_nodes(actor_system, 2)
    response = await roll_out(client, tokens.service, update.id, {"node_ids": [str(a), str(b)]})
    assert response.status_code == 202
    assert await response.get_json() == {
        "update_id": str(update.id),
        "queued": [str(a), str(b)],
        "skipped": {},
    }
    listed = await (await client.get("/v1/node-updates", headers=bearer(tokens.admin))).get_json()
    assert listed["data"][0]["in_update_queue"] is True


async def test_a_halted_update_can_be_rolled_out_again_explicitly(
    client: Any, tokens: Tokens, actor_system: ActorSystem, update: updates.NodeUpdate
) -> None:
    db = actor_system.db
    (node_id,) = await add_nodes(actor_system, 1)
    await roll_out(client, tokens.admin, update.id, {"node_ids": [str(node_id)]})
    _, wave_at = await updates.targets(db, update.id, update.create_date)
    assert await updates.halt(db, update.id, wave_at, "crash rate", [])
    listed = await (await client.get("/v1/node-updates", headers=bearer(tokens.admin))).get_json()
    assert listed["data"][0]["halted_reason"] == "crash rate"
    response = await roll_out(client, tokens.admin, update.id, {"node_ids": [str(node_id)]})
    assert (await response.get_json())["queued"] == [str(node_id)]
    listed = await (await client.get("/v1/node-updates", headers=bearer(tokens.admin))).get_json()
    assert (listed["data"][0]["halted_reason"], listed["data"][0]["in_update_queue"]) == (
        None,
        True,
    )


async def test_node_downloads_the_update_and_confirms_it_with_its_signed_online_call(
    client: Any, tokens: Tokens, app_state: AppState, update: updates.NodeUpdate
) -> None:
    assert app_state.actors is not None
    actor = RolloutActor(
        app_state.db, app_state.actors.fleet, app_state.store, lambda: app_state.config
    )
    (node_id,) = await add_nodes(app_state.actors, 1)
    agent = NodeClient(client, node_id)
    await agent.heartbeat()  # Idle
    await roll_out(client, tokens.admin, update.id, {"node_ids": [str(node_id)]})
    await actor.tick()

    answer = await (await agent.heartbeat()).get_json()
    (command,) = answer["pending_commands"]
    assert command["type"] == "UpdateSoftware"
    assert (command["update_id"], command["update_file_name"]) == (str(update.id), FILE_NAME)
    async with httpx.AsyncClient() as http:
        assert (await http.get(command["download_url"])).content == CONTENT
    await agent.heartbeat(acked_command_ids=[command["id"]])

    online = {
        "node_agent_version": STEM,
        "current_ae_version": "2024",
        "available_ae_versions": ["2024"],
        "ram_gb": 32,
        "cpu_cores": 8,
        "cache_used_gb": 0,
    }
    assert (await agent.post(f"/v1/internal/nodes/{node_id}/online", online)).status_code == 200
    await actor.tick()
    listed = await (await client.get("/v1/node-updates", headers=bearer(tokens.admin))).get_json()
    assert listed["data"][0]["rolled_out_to_node_ids"] == [str(node_id)]
    again = await roll_out(client, tokens.admin, update.id, {"node_ids": [str(node_id)]})
    assert await again.get_json() == {
        "update_id": str(update.id),
        "queued": [],
        "skipped": {str(node_id): "Confirmed"},
    }


# ------------------------------------------------------------------ the command line


def write_config(config: Config, path: Path, *, s3_endpoint: str | None = None) -> Path:
    s3 = config.s3
    path.write_text(
        f'[database]\nurl = "{config.database.url}"\n'
        f'[s3]\nendpoint = "{s3_endpoint or s3.endpoint}"\naccess_key = "{s3.access_key}"\n'
        f'secret_key = "{s3.secret_key}"\nbucket = "{s3.bucket}"\n'
    )
    return path


def test_cli_publish_prints_id_and_number_and_list_shows_it(
    config: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(config, tmp_path / "f.toml")
    file = tmp_path / FILE_NAME
    file.write_bytes(CONTENT)
    done = subprocess.run(
        [sys.executable, "-m", "flatrender.updates_cli", "updates", "publish", str(file),
         "--target-ae-version", "2024", "--description", "from the shell", "--config", str(cfg)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    first_line = done.stdout.splitlines()[0]
    assert first_line.startswith("published update #1 ")
    update_id = UUID(first_line.split()[-1])
    assert updates_main(["updates", "list", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert f"#1 {update_id} {FILE_NAME} AE 2024 idle" in out and "from the shell" in out


def test_cli_publish_of_a_missing_file_is_one_line_and_exit_1(
    config: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(config, tmp_path / "f.toml")
    args = ["updates", "publish", str(tmp_path / "nope.zip"), "--target-ae-version", "2024",
            "--description", "x", "--config", str(cfg)]  # fmt: skip
    assert updates_main(args) == 1
    assert capsys.readouterr().err == f"flatrender: {tmp_path / 'nope.zip'}: no such file\n"


def test_cli_publish_with_object_storage_down_is_one_line_and_exit_1(
    config: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(config, tmp_path / "f.toml", s3_endpoint="127.0.0.1:1")
    file = tmp_path / FILE_NAME
    file.write_bytes(CONTENT)
    args = ["updates", "publish", str(file), "--target-ae-version", "2024",
            "--description", "x", "--config", str(cfg)]  # fmt: skip
    assert updates_main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("flatrender: object storage: ") and err.count("\n") == 1


def test_cli_publish_with_the_database_down_is_one_line_and_exit_1(
    config: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    down = Config.from_mapping({"database": {"url": "postgresql://u:p@127.0.0.1:1/x"}})
    cfg = tmp_path / "f.toml"
    write_config(config, cfg)
    cfg.write_text(cfg.read_text().replace(config.database.url, down.database.url))
    file = tmp_path / FILE_NAME
    file.write_bytes(CONTENT)
    args = ["updates", "publish", str(file), "--target-ae-version", "2024",
            "--description", "x", "--config", str(cfg)]  # fmt: skip
    assert updates_main(args) == 1
    assert capsys.readouterr().err.startswith("flatrender: database unavailable: ")


def test_cli_without_a_database_url_is_a_configuration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "empty.toml"
    cfg.write_text("")
    assert updates_main(["updates", "list", "--config", str(cfg)]) == 2
    assert "[database] url: must be set" in capsys.readouterr().err
