"""``flatrender agent``: simulated render nodes speaking node protocol v1 to an orchestrator."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any
from uuid import UUID

import trio

from flatrender import logs
from flatrender.agent.faults import FaultSettings
from flatrender.agent.options import DEFAULT_API, DEFAULT_STATE_FILE, AgentOptions, OptionsError
from flatrender.agent.runner import AgentError, run_agent

ADMIN_TOKEN_ENV = "FLATRENDER_ADMIN_TOKEN"
NODE_SECRET_ENV = "FLATRENDER_NODE_SECRET"

DESCRIPTION = """\
Run simulated render nodes in one process. Each node goes online, heartbeats, and executes the
commands of node protocol v1: it renders tiny real videos with PyAV for RenderFrames (exactly the
range's frames) and uploads them with the presigned urls, builds replicas for PrepareReplica, and
plays CloseAE, Restart, Release, UpdateSoftware, TrimRange and CancelRender. Nodes come from
--state-file, are registered with --admin-token (and remembered there), or --node-id/--secret
names one node registered elsewhere. Faults on demand: AE crashes (--crash-rate), slow frames,
and a power cut (--die-after)."""


def add_parser(subparsers: Any) -> None:
    """Add the ``agent`` command to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "agent",
        help="run simulated render nodes against an orchestrator",
        description=DESCRIPTION,
    )
    who = p.add_argument_group("which nodes")
    who.add_argument(
        "--api", default=DEFAULT_API, help=f"orchestrator base url, /v1 optional ({DEFAULT_API})"
    )
    who.add_argument("--nodes", type=int, default=1, help="how many nodes to run (1)")
    who.add_argument(
        "--admin-token",
        help=f"admin JWT or service token to register missing nodes (or ${ADMIN_TOKEN_ENV})",
    )
    who.add_argument("--node-id", type=UUID, help="run this one pre-registered node")
    who.add_argument("--secret", help=f"the --node-id's secret (or ${NODE_SECRET_ENV})")
    who.add_argument(
        "--name-prefix", default="sim", help="nodes are named PREFIX-1, PREFIX-2, ... (sim)"
    )
    who.add_argument(
        "--state-file",
        type=Path,
        default=DEFAULT_STATE_FILE,
        help=f"JSON of the registered nodes (name -> id, secret) ({DEFAULT_STATE_FILE})",
    )
    what = p.add_argument_group("what the nodes say about themselves")
    what.add_argument("--region", default="local", help="(local)")
    what.add_argument("--ae-version", default="2024", help="AfterFX version (2024)")
    what.add_argument(
        "--agent-version", default="agent-1.0.0", help="node_agent_version at start (agent-1.0.0)"
    )
    what.add_argument("--ram-gb", type=int, default=32, help="(32)")
    what.add_argument("--cpu-cores", type=int, default=16, help="(16)")
    timing = p.add_argument_group("timing, in seconds")
    timing.add_argument("--frame-time", type=float, default=0.05, help="to render a frame (0.05)")
    timing.add_argument("--restart-delay", type=float, default=2.0, help="silence of a reboot (2)")
    timing.add_argument(
        "--ae-restart-delay", type=float, default=0.5, help="AE restart after a crash (0.5)"
    )
    timing.add_argument(
        "--install-time", type=float, default=0.5, help="to install an update (0.5)"
    )
    timing.add_argument(
        "--min-heartbeat", type=float, default=0.5, help="floor of the heartbeat interval (0.5)"
    )
    faults = p.add_argument_group("faults")
    faults.add_argument(
        "--crash-rate", type=float, default=0.0, help="probability of an AE crash per range (0)"
    )
    faults.add_argument(
        "--slow-frame-rate", type=float, default=0.0, help="probability of a slow frame (0)"
    )
    faults.add_argument(
        "--slow-frame-factor", type=float, default=10.0, help="a slow frame takes K times (10)"
    )
    faults.add_argument(
        "--die-after", type=float, help="power cut: every node stops dead after S seconds"
    )
    faults.add_argument("--seed", type=int, help="makes the injected faults reproducible")
    p.add_argument("--work-dir", type=Path, help="outputs before upload (a temporary folder)")
    p.add_argument("--log-level", default="info", help="debug, info, warning, error (info)")
    p.set_defaults(run=run)


def options_from_args(args: argparse.Namespace) -> AgentOptions:
    """The options of a parsed ``agent`` command line; secrets may come from the environment."""
    secret = args.secret or os.environ.get(NODE_SECRET_ENV)
    return AgentOptions(
        api=args.api,
        nodes=args.nodes,
        admin_token=args.admin_token or os.environ.get(ADMIN_TOKEN_ENV),
        node_id=args.node_id,
        secret=secret if args.node_id is not None else None,
        name_prefix=args.name_prefix,
        state_file=args.state_file,
        region=args.region,
        ae_version=args.ae_version,
        agent_version=args.agent_version,
        ram_gb=args.ram_gb,
        cpu_cores=args.cpu_cores,
        frame_time=args.frame_time,
        restart_delay=args.restart_delay,
        ae_restart_delay=args.ae_restart_delay,
        install_time=args.install_time,
        min_heartbeat_sec=args.min_heartbeat,
        faults=FaultSettings(
            crash_rate=args.crash_rate,
            slow_frame_rate=args.slow_frame_rate,
            slow_frame_factor=args.slow_frame_factor,
        ),
        die_after=args.die_after,
        seed=args.seed,
        work_dir=args.work_dir,
    )


def run(args: argparse.Namespace) -> int:
    """The ``agent`` command: 0 after the nodes stop (``--die-after``), 2 for bad options or
    identities. Ctrl-C raises KeyboardInterrupt to the caller."""
    try:
        options = options_from_args(args)
    except (OptionsError, ValueError) as e:
        print(f"flatrender agent: {e}", file=sys.stderr)
        return 2
    logs.configure(args.log_level)
    logging.getLogger("flatrender.agent").debug("options: %r", options)
    try:
        trio.run(run_agent, options)
    except AgentError as e:
        print(f"flatrender agent: {e}", file=sys.stderr)
        return 2
    return 0
