"""The whole agent (run_agent: registration, N nodes, heartbeats, commands) against the stand-in
orchestrator of ``stub_orchestrator.py``. To be rerun against the real daemon when its internal
endpoints land."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import attrs
import httpx
import pytest
import trio

from flatrender.agent import AgentError, AgentOptions
from flatrender.agent.faults import FaultSettings
from flatrender.agent.node import SimNode
from flatrender.agent.runner import resolve_identities, run_agent
from flatrender.storage import MinioStore
from tests.agent.stub_orchestrator import (
    ADMIN_TOKEN,
    StubState,
    create_stub,
    free_port,
    serve,
    wait_for,
)


@pytest.fixture
def options(stub_url: str, tmp_path: Path) -> AgentOptions:
    return AgentOptions(
        api=stub_url + "/v1",
        nodes=2,
        admin_token=ADMIN_TOKEN,
        state_file=tmp_path / "state" / "agent-nodes.json",
        frame_time=0.005,
        restart_delay=0.05,
        ae_restart_delay=0.01,
        install_time=0.01,
        download_time=0.01,
        min_heartbeat_sec=0.02,
        max_backoff=0.1,
        seed=1,
        work_dir=tmp_path / "work",
    )


async def start(nursery: trio.Nursery, options: AgentOptions) -> list[SimNode]:
    nodes: list[SimNode] = await nursery.start(run_agent, options)
    return nodes


def heartbeats(stub: StubState, node: SimNode) -> list[dict[str, Any]]:
    return stub.of("/heartbeat", node.node_id)


def last_beat(stub: StubState, node: SimNode) -> dict[str, Any]:
    beats = heartbeats(stub, node)
    return beats[-1] if beats else {}


def after_ack(stub: StubState, node: SimNode, command_id: str) -> list[dict[str, Any]]:
    """The heartbeats from the first one acknowledging ``command_id``: they were built after
    the node acted on it (earlier ones may still be arriving after a frame report)."""
    beats = heartbeats(stub, node)
    for i, beat in enumerate(beats):
        if command_id in beat["acked_command_ids"]:
            return beats[i:]
    return []


def idle_after(stub: StubState, node: SimNode, command_id: str) -> bool:
    return any(b["status"] == "Idle" for b in after_ack(stub, node, command_id))


async def test_nodes_register_once_and_reuse_the_state_file(
    stub: StubState, options: AgentOptions
) -> None:
    async with httpx.AsyncClient() as http:
        first = await resolve_identities(http, options)
        again = await resolve_identities(http, attrs.evolve(options, nodes=3))
    assert [i.name for i in first] == ["sim-1", "sim-2"]
    assert again[:2] == first and again[2].name == "sim-3"
    assert len(stub.of("/v1/nodes")) == 3
    state = json.loads(options.state_file.read_text())
    assert set(state["nodes"]) == {"sim-1", "sim-2", "sim-3"}
    assert options.state_file.stat().st_mode & 0o077 == 0


async def test_a_taken_name_without_a_state_entry_is_a_clear_error(
    stub: StubState, options: AgentOptions
) -> None:
    stub.names["sim-1"] = uuid4()
    async with httpx.AsyncClient() as http:
        with pytest.raises(AgentError, match="already registered.*--name-prefix"):
            await resolve_identities(http, options)


async def test_missing_nodes_without_admin_token_is_a_clear_error(options: AgentOptions) -> None:
    async with httpx.AsyncClient() as http:
        with pytest.raises(AgentError, match="--admin-token"):
            await resolve_identities(http, attrs.evolve(options, admin_token=None))


async def test_nodes_go_online_then_heartbeat_signed(
    nursery: trio.Nursery, stub: StubState, options: AgentOptions
) -> None:
    nodes = await start(nursery, options)
    await wait_for(lambda: all(len(heartbeats(stub, n)) >= 3 for n in nodes))
    for node in nodes:
        (online,) = stub.of("/online", node.node_id)
        assert online["node_agent_version"] == "agent-1.0.0"
        assert online["current_ae_version"] == "2024"
        beat = heartbeats(stub, node)[-1]
        assert beat["node_id"] == str(node.node_id) and beat["status"] == "Idle"
        assert beat["acked_command_ids"] == [] and beat["current_job_id"] is None
        assert beat["recorded_at"].endswith("Z")
    assert stub.bad_signatures == 0


async def test_a_render_command_runs_once_is_acked_and_uploads_the_range(
    nursery: trio.Nursery, stub: StubState, options: AgentOptions, store: MinioStore
) -> None:
    node = (await start(nursery, attrs.evolve(options, nodes=1)))[0]
    job_id, range_id = uuid4(), uuid4()
    key = f"renders/{job_id}/{range_id}.mp4"
    command_id = stub.command(
        node.node_id,
        "RenderFrames",
        job_id=str(job_id),
        frame_job_id=str(range_id),
        start_frame=100,
        end_frame=119,
        attempt=1,
        replica_url="",
        quality="High",
        resolution="1080p",
        frame_rate=30,
        output_format="mp4",
        upload_url=await store.presign_put(key),
        output_key=key,
    )
    await wait_for(lambda: len(stub.of(f"/jobs/{job_id}/frames")) == 20)
    assert [f["frame_number"] for f in stub.of(f"/jobs/{job_id}/frames")] == list(range(100, 120))
    info = await store.stat(key)
    assert info is not None and info.size > 0
    beats = heartbeats(stub, node)
    acked = [b for b in beats if command_id in b["acked_command_ids"]]
    assert acked  # acknowledged in a heartbeat after receipt
    busy = [b for b in beats if b["status"] == "Busy"]
    assert busy and busy[0]["current_job_id"] == str(job_id) and busy[0]["ae_running"]
    assert 100 <= busy[-1]["current_frame"] <= 119


def render_forever(stub: StubState, node: SimNode, job_id: UUID) -> dict[str, str]:
    """A long range for ``node``; the ids of the range."""
    ids = {"job_id": str(job_id), "frame_job_id": str(uuid4())}
    stub.command(
        node.node_id, "RenderFrames", **ids, start_frame=0, end_frame=9999, upload_url="http://x"
    )
    return ids


async def quiet_for_some_heartbeats(stub: StubState, node: SimNode) -> None:
    seen = len(heartbeats(stub, node))
    await wait_for(lambda: len(heartbeats(stub, node)) >= seen + 3)


async def test_cancel_render_stops_reports_and_the_node_goes_idle(
    nursery: trio.Nursery, stub: StubState, options: AgentOptions
) -> None:
    node = (await start(nursery, attrs.evolve(options, nodes=1, frame_time=0.02)))[0]
    job_id = uuid4()
    ids = render_forever(stub, node, job_id)
    await wait_for(lambda: len(stub.of(f"/jobs/{job_id}/frames")) >= 2)
    cancel = stub.command(node.node_id, "CancelRender", **ids)
    await wait_for(lambda: idle_after(stub, node, cancel))
    count = len(stub.of(f"/jobs/{job_id}/frames"))
    await quiet_for_some_heartbeats(stub, node)
    assert len(stub.of(f"/jobs/{job_id}/frames")) == count


async def test_close_ae_aborts_the_running_range_and_the_next_one_starts(
    nursery: trio.Nursery, stub: StubState, options: AgentOptions
) -> None:
    node = (await start(nursery, attrs.evolve(options, nodes=1, frame_time=0.02)))[0]
    first, second = uuid4(), uuid4()
    render_forever(stub, node, first)
    render_forever(stub, node, second)
    await wait_for(lambda: stub.of(f"/jobs/{first}/frames"))
    stub.command(node.node_id, "CloseAE")
    await wait_for(lambda: stub.of(f"/jobs/{second}/frames"))
    count = len(stub.of(f"/jobs/{first}/frames"))
    await quiet_for_some_heartbeats(stub, node)
    assert len(stub.of(f"/jobs/{first}/frames")) == count
    assert last_beat(stub, node).get("current_job_id") == str(second)


async def test_release_drops_running_and_waiting_work(
    nursery: trio.Nursery, stub: StubState, options: AgentOptions
) -> None:
    node = (await start(nursery, attrs.evolve(options, nodes=1, frame_time=0.02)))[0]
    first, second = uuid4(), uuid4()
    render_forever(stub, node, first)
    render_forever(stub, node, second)
    await wait_for(lambda: stub.of(f"/jobs/{first}/frames"))
    release = stub.command(node.node_id, "Release")
    await wait_for(lambda: idle_after(stub, node, release))
    await quiet_for_some_heartbeats(stub, node)
    assert last_beat(stub, node).get("current_job_id") is None
    assert not stub.of(f"/jobs/{second}/frames")


async def test_close_ae_when_idle_reports_ae_not_running(
    nursery: trio.Nursery, stub: StubState, options: AgentOptions
) -> None:
    node = (await start(nursery, attrs.evolve(options, nodes=1)))[0]
    job_id = uuid4()
    render_forever(stub, node, job_id)
    await wait_for(lambda: last_beat(stub, node).get("ae_running"))
    release = stub.command(node.node_id, "Release")
    await wait_for(lambda: after_ack(stub, node, release))
    beat = after_ack(stub, node, release)[0]
    assert beat["status"] == "Idle" and beat["ae_running"]  # Release leaves AE open
    close = stub.command(node.node_id, "CloseAE")
    await wait_for(lambda: after_ack(stub, node, close))
    assert not after_ack(stub, node, close)[0]["ae_running"]


async def test_restart_goes_silent_then_online_again(
    nursery: trio.Nursery, stub: StubState, options: AgentOptions
) -> None:
    node = (await start(nursery, attrs.evolve(options, nodes=1)))[0]
    await wait_for(lambda: heartbeats(stub, node))
    restart_id = stub.command(node.node_id, "Restart")
    await wait_for(lambda: len(stub.of("/online", node.node_id)) == 2)
    # Acknowledged after the reboot, and not executed a second time.
    await wait_for(lambda: restart_id in last_beat(stub, node).get("acked_command_ids"))
    await wait_for(lambda: not stub.pending[node.node_id])
    assert node.boots == 2 and len(stub.of("/online", node.node_id)) == 2


async def test_update_software_comes_back_with_the_new_version(
    nursery: trio.Nursery, stub: StubState, stub_url: str, options: AgentOptions
) -> None:
    stub.downloads["agent-2.0.0.zip"] = b"PK\x03\x04 new agent"
    node = (await start(nursery, attrs.evolve(options, nodes=1)))[0]
    stub.command(
        node.node_id,
        "UpdateSoftware",
        update_id=str(uuid4()),
        update_file_name="agent-2.0.0.zip",
        download_url=f"{stub_url}/downloads/agent-2.0.0.zip",
    )
    await wait_for(lambda: len(stub.of("/online", node.node_id)) == 2)
    assert stub.of("/online", node.node_id)[-1]["node_agent_version"] == "agent-2.0.0"


async def test_a_failed_update_download_keeps_the_node_running(
    nursery: trio.Nursery, stub: StubState, stub_url: str, options: AgentOptions
) -> None:
    node = (await start(nursery, attrs.evolve(options, nodes=1)))[0]
    stub.command(
        node.node_id,
        "UpdateSoftware",
        update_id=str(uuid4()),
        update_file_name="agent-9.zip",
        download_url=f"{stub_url}/downloads/missing.zip",
    )
    await wait_for(lambda: not stub.pending.get(node.node_id))
    beats = len(heartbeats(stub, node))
    await wait_for(lambda: len(heartbeats(stub, node)) > beats + 3)
    assert node.version == "agent-1.0.0" and node.boots == 1


async def test_prepare_replica_caches_the_template_and_uploads_the_replica(
    nursery: trio.Nursery, stub: StubState, options: AgentOptions, store: MinioStore
) -> None:
    node = (await start(nursery, attrs.evolve(options, nodes=1)))[0]
    job_id, project_id = uuid4(), uuid4()
    key = f"replicas/{project_id}/1.aep"
    stub.command(
        node.node_id,
        "PrepareReplica",
        job_id=str(job_id),
        saved_project_id=str(project_id),
        template_md5="0123456789abcdef0123456789abcdef",
        template_url="demo://templates/intro",
        replica_upload_url=await store.presign_put(key),
        replica_key=key,
    )
    await wait_for(lambda: stub.of(f"/jobs/{job_id}/replica-ready"))
    (cache,) = stub.of("/cache-update", node.node_id)
    assert cache["action"] == "Downloaded" and cache["project_id"] == str(project_id)
    (ready,) = stub.of(f"/jobs/{job_id}/replica-ready")
    assert ready["replica_path"] == key and ready["node_id"] == str(node.node_id)
    replica = await store.get_bytes(key)
    assert json.loads(replica)["template_md5"] == "0123456789abcdef0123456789abcdef"
    # The template stays cached across a reboot and is announced when the node comes back.
    stub.command(node.node_id, "Restart")
    await wait_for(lambda: len(stub.of("/online", node.node_id)) == 2)
    assert stub.of("/online", node.node_id)[-1]["cached_template_md5s"] == [cache["aep_file_md5"]]


async def test_die_after_stops_every_call(stub: StubState, options: AgentOptions) -> None:
    with trio.fail_after(5):
        await run_agent(attrs.evolve(options, die_after=0.3))
    calls = len(stub.calls)
    assert any(c.path.endswith("/heartbeat") for c in stub.calls)
    await trio.sleep(0.2)
    assert len(stub.calls) == calls


async def test_nodes_ride_out_an_orchestrator_restart(
    stub: StubState, options: AgentOptions, nursery: trio.Nursery
) -> None:
    """Refused connections while the daemon is down are retried; nothing crashes, and the
    heartbeats resume (acknowledging what was received before) once it is back."""
    port = free_port()
    app = create_stub(stub)
    async with trio.open_nursery() as server:
        url = await serve(server, app, port)
        node = (await start(nursery, attrs.evolve(options, nodes=1, api=url)))[0]
        await wait_for(lambda: heartbeats(stub, node))
        server.cancel_scope.cancel()
    down_at = len(stub.calls)
    await trio.sleep(0.3)  # several failed heartbeats
    assert len(stub.calls) == down_at
    async with trio.open_nursery() as server:
        await serve(server, app, port)
        await wait_for(lambda: len(stub.calls) > down_at + 2)
        server.cancel_scope.cancel()
    assert node.boots == 1 and stub.bad_signatures == 0


async def test_trim_range_through_a_heartbeat_ends_the_running_range_early(
    nursery: trio.Nursery, stub: StubState, options: AgentOptions, store: MinioStore
) -> None:
    node = (await start(nursery, attrs.evolve(options, nodes=1, frame_time=0.02)))[0]
    job_id, range_id = uuid4(), uuid4()
    key = f"renders/{job_id}/{range_id}.mp4"
    ids = {"job_id": str(job_id), "frame_job_id": str(range_id)}
    upload_url = await store.presign_put(key)
    stub.command(
        node.node_id, "RenderFrames", **ids, start_frame=0, end_frame=999, upload_url=upload_url
    )
    await wait_for(lambda: stub.of(f"/jobs/{job_id}/frames"))
    new_end = stub.of(f"/jobs/{job_id}/frames")[-1]["frame_number"] + 15
    trim = stub.command(node.node_id, "TrimRange", **ids, end_frame=new_end)
    await wait_for(lambda: idle_after(stub, node, trim))
    await quiet_for_some_heartbeats(stub, node)
    numbers = [f["frame_number"] for f in stub.of(f"/jobs/{job_id}/frames")]
    assert numbers == list(range(new_end + 1))
    assert await store.stat(key) is not None


async def test_crash_rate_makes_ae_crash_and_the_range_still_completes(
    nursery: trio.Nursery, stub: StubState, options: AgentOptions, store: MinioStore
) -> None:
    crashing = attrs.evolve(options, nodes=1, faults=FaultSettings(crash_rate=1.0))
    node = (await start(nursery, crashing))[0]
    job_id, range_id = uuid4(), uuid4()
    key = f"renders/{job_id}/{range_id}.mp4"
    stub.command(
        node.node_id,
        "RenderFrames",
        job_id=str(job_id),
        frame_job_id=str(range_id),
        start_frame=0,
        end_frame=9,
        upload_url=await store.presign_put(key),
    )
    await wait_for(lambda: len(stub.of(f"/jobs/{job_id}/frames")) == 10)
    (crash,) = stub.of(f"/jobs/{job_id}/crash")
    assert -1 <= crash["last_known_frame"] <= 8 and crash["ae_version"] == "2024"
    assert [f["frame_number"] for f in stub.of(f"/jobs/{job_id}/frames")] == list(range(10))
