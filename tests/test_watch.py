"""`flatrender watch` without a daemon: where it connects, what it prints."""

from __future__ import annotations

import io
import json
from pathlib import Path
from uuid import uuid4

import trio
import trio.lowlevel
from trio_websocket import WebSocketRequest, serve_websocket

from flatrender.cli import _parser
from flatrender.watch import (
    RECONNECTS,
    SERVER_ERROR,
    UNREACHABLE,
    Display,
    Target,
    bar_line,
    reconnect_delay,
    target,
    watch,
)

JOB = uuid4()


def test_defaults_come_from_dev_json(tmp_path: Path) -> None:
    (tmp_path / "dev.json").write_text(
        json.dumps(
            {
                "api_url": "http://127.0.0.1:9000/v1",
                "ws_url": "ws://127.0.0.1:9000/ws/v1",
                "user_token": "tok",
            }
        )
    )
    t = target(JOB, None, None, tmp_path)
    assert (t.api_url, t.ws_url, t.token) == (
        "http://127.0.0.1:9000",
        f"ws://127.0.0.1:9000/ws/v1/render/{JOB}",
        "tok",
    )
    t = target(JOB, "https://farm.example/v1/", "mine", tmp_path)
    assert (t.api_url, t.ws_url, t.token) == (
        "https://farm.example",
        f"wss://farm.example/ws/v1/render/{JOB}",
        "mine",
    )


def test_without_dev_json_the_local_default(tmp_path: Path) -> None:
    t = target(JOB, None, "x", tmp_path)
    assert t.ws_url == f"ws://127.0.0.1:8080/ws/v1/render/{JOB}"


def test_the_bar_shows_frames_percent_eta_nodes_and_step() -> None:
    p = {
        "step": "Rendering",
        "progress": 50,
        "current_frame": 149,
        "total_frames": 300,
        "eta_seconds": 75,
        "active_nodes": 3,
        "message": None,
    }
    assert bar_line(p) == (
        "[###############...............]   50%  frame 149/300  ETA 1:15  nodes 3  Rendering"
    )


def test_plain_output_prints_a_line_per_change_of_step_or_percent() -> None:
    out = io.StringIO()
    display = Display(out, tty=False)
    base = {"step": "Rendering", "progress": 10, "total_frames": 30, "active_nodes": 1}
    for p in (base, {**base, "current_frame": 3}, {**base, "progress": 20}):
        display.show(p)
    assert len(out.getvalue().splitlines()) == 2


def test_the_command_is_wired() -> None:
    args = _parser().parse_args(["watch", str(JOB), "--api", "http://h:1", "--token", "t"])
    assert (args.job_id, args.api, args.token) == (JOB, "http://h:1", "t")


async def _serve_then_close(nursery: trio.Nursery, code: int, connections: list[int]) -> Target:
    """A stand-in orchestrator: each connection gets a snapshot, then a close with ``code``."""

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        connections.append(code)
        await ws.send_message(json.dumps({"step": "Rendering", "progress": 10}))
        await ws.aclose(code)

    server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
    return Target("http://127.0.0.1:1", f"ws://127.0.0.1:{server.port}/ws", "", JOB)


async def test_a_server_that_keeps_closing_1013_is_retried_with_backoff_then_given_up(
    nursery: trio.Nursery,
) -> None:
    connections: list[int] = []
    t = await _serve_then_close(nursery, 1013, connections)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await trio.lowlevel.checkpoint()

    err = io.StringIO()
    with trio.fail_after(20):
        status = await watch(t, io.StringIO(), err, tty=False, sleep=sleep)
    assert status == UNREACHABLE, err.getvalue()
    assert len(connections) == RECONNECTS + 1  # every one sent a snapshot: no reset
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0, 30.0]
    assert waits == [reconnect_delay(n) for n in range(1, RECONNECTS + 1)]


async def test_a_close_1011_is_final_and_not_zero(nursery: trio.Nursery) -> None:
    connections: list[int] = []
    t = await _serve_then_close(nursery, 1011, connections)

    async def sleep(seconds: float) -> None:
        raise AssertionError("a 1011 is not retried")

    err = io.StringIO()
    with trio.fail_after(20):
        status = await watch(t, io.StringIO(), err, tty=False, sleep=sleep)
    assert status == SERVER_ERROR
    assert connections == [1011]
    assert "1011" in err.getvalue()
