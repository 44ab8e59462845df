"""The ``agent`` subcommand: its options, and the errors it turns into exit codes."""

from __future__ import annotations

import argparse
from pathlib import Path
from uuid import uuid4

import pytest

from flatrender.agent.cli import add_parser, options_from_args, run


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="flatrender")
    add_parser(parser.add_subparsers())
    return parser.parse_args(["agent", *argv])


def test_help_says_what_it_does(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("--help")
    out = capsys.readouterr().out
    assert "simulated render nodes" in out.lower()
    for option in ("--nodes", "--admin-token", "--crash-rate", "--die-after", "--state-file"):
        assert option in out


def test_options_from_the_command_line() -> None:
    args = parse(
        "--api",
        "http://127.0.0.1:9000/v1",
        "--nodes",
        "3",
        "--crash-rate",
        "0.25",
        "--slow-frame-rate",
        "0.1",
        "--die-after",
        "30",
        "--seed",
        "4",
        "--frame-time",
        "0.01",
    )
    options = options_from_args(args)
    assert options.nodes == 3 and options.seed == 4 and options.die_after == 30
    assert options.faults.crash_rate == 0.25 and options.faults.slow_frame_rate == 0.1
    assert options.frame_time == 0.01 and options.api == "http://127.0.0.1:9000/v1"
    assert args.run is run


def test_one_pre_registered_node(monkeypatch: pytest.MonkeyPatch) -> None:
    node_id = uuid4()
    options = options_from_args(parse("--node-id", str(node_id), "--secret", "abc"))
    assert options.node_id == node_id and options.secret == "abc"
    assert "abc" not in repr(options)
    monkeypatch.setenv("FLATRENDER_NODE_SECRET", "from-env")  # kept out of `ps`
    assert options_from_args(parse("--node-id", str(node_id))).secret == "from-env"


@pytest.mark.parametrize(
    "argv",
    [
        ["--node-id", str(uuid4())],  # no secret
        ["--node-id", str(uuid4()), "--secret", "x", "--nodes", "2"],
        ["--nodes", "0"],
        ["--crash-rate", "2"],
    ],
)
def test_contradictory_options_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert run(parse(*argv)) == 2
    assert "flatrender agent:" in capsys.readouterr().err


def test_unknown_nodes_without_admin_token_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("flatrender.agent.cli.logs.configure", lambda level: None)
    monkeypatch.delenv("FLATRENDER_ADMIN_TOKEN", raising=False)
    args = parse("--state-file", str(tmp_path / "none.json"), "--api", "http://127.0.0.1:9")
    assert run(args) == 2
    assert "--admin-token" in capsys.readouterr().err
