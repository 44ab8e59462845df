"""`flatrender watch` without a daemon: where it connects, what it prints."""

from __future__ import annotations

import io
import json
from pathlib import Path
from uuid import uuid4

from flatrender.cli import _parser
from flatrender.watch import Display, bar_line, target

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
