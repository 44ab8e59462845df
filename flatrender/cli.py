"""The ``flatrender`` command: serve, migrate, dev, node-secret, token, watch."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from uuid import UUID

import trio
import trio_asyncio

from flatrender import logs
from flatrender.config import Config, ConfigError

CONFIG_ENV = "FLATRENDER_CONFIG"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return int(args.run(args))
    except ConfigError as e:
        print(f"flatrender: configuration error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flatrender", description="FlatRender render orchestrator (render-farm control plane)."
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    p = sub.add_parser(
        "serve",
        help="run the daemon (production; under systemd)",
        description="Run the orchestrator daemon: REST and WebSocket front, actors, state in "
        "PostgreSQL. "
        "SIGTERM stops it gracefully, SIGHUP reloads the configuration.",
    )
    _config_arg(p, required=True)
    p.set_defaults(run=_serve)

    p = sub.add_parser(
        "migrate",
        help="apply pending database migrations",
        description="Apply every numbered SQL migration not yet recorded; safe to run twice.",
    )
    _config_arg(p, required=True)
    p.set_defaults(run=_migrate)

    p = sub.add_parser(
        "dev",
        help="run everything locally with embedded Postgres and S3",
        description="One command, no set-up: embedded PostgreSQL and S3 in a state folder, "
        "migrations applied, demo data seeded, simulated nodes, tokens in <state-dir>/dev.json.",
    )
    p.add_argument("--state-dir", type=Path, default=Path(".state"), help="default: .state")
    p.add_argument("--port", type=int, default=8080, help="HTTP port (default 8080)")
    p.add_argument("--nodes", type=int, default=4, help="simulated node agents (default 4)")
    _config_arg(p, required=False)
    p.set_defaults(run=_dev)

    p = sub.add_parser(
        "node-secret",
        help="print a node's HMAC secret",
        description="Print the node protocol secret of NODE_ID, derived from "
        "[auth] node_master_key.",
    )
    p.add_argument("node_id", type=UUID, metavar="NODE_ID")
    _config_arg(p, required=False)
    p.set_defaults(run=_node_secret)

    p = sub.add_parser(
        "token",
        help="mint a user JWT for operations",
        description="Print a JWT (HS256, signed with [auth] jwt_secret) for a user id.",
    )
    p.add_argument("--user", type=UUID, required=True, help="user uuid (the token's sub)")
    p.add_argument("--role", choices=("user", "admin"), default="user")
    p.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
    _config_arg(p, required=False)
    p.set_defaults(run=_token)

    p = sub.add_parser(
        "watch",
        help="follow a render live: progress bar, then the export's link",
        description="Follow render JOB_ID over the progress WebSocket until it ends, then print "
        "its export's download link. Exit 0 when Completed, 1 when Failed or Cancelled, 2 when "
        "refused, 3 when the orchestrator cannot be reached, 4 when it reports an error. "
        "--api and --token default to "
        ".state/dev.json (written by `flatrender dev`).",
    )
    p.add_argument("job_id", type=UUID, metavar="JOB_ID")
    p.add_argument("--api", help="orchestrator base URL (default: dev.json's, or :8080)")
    p.add_argument("--token", help="user JWT or service token (default: dev.json's user token)")
    p.add_argument("--state-dir", type=Path, default=Path(".state"), help=argparse.SUPPRESS)
    p.set_defaults(run=_watch)

    p = sub.add_parser(
        "submit",
        help="submit a render job (user token), optionally follow it",
        description="Submit a render of PROJECT_ID (or --demo: the first demo project of "
        "`flatrender dev`) and print its id and price; --watch then follows it like "
        "`flatrender watch` and exits with its status. An API error prints its message: exit 1 "
        "(402, 404, 422), 2 refused (401/403), 3 unreachable, 4 server error. --api and --token "
        "default to .state/dev.json.",
    )
    p.add_argument("project_id", type=UUID, nargs="?", metavar="PROJECT_ID")
    p.add_argument("--demo", action="store_true", help="the first of dev.json's demo projects")
    p.add_argument("--quality", default="Low", help="Low, Medium, High, Full, Lossless (Low)")
    p.add_argument("--resolution", default="HD", help="HD, FullHD, TwoK, FourK (HD)")
    p.add_argument("--watch", action="store_true", help="follow the job until it ends")
    p.add_argument("--api", help="orchestrator base URL (default: dev.json's, or :8080)")
    p.add_argument("--token", help="user JWT (default: dev.json's user token)")
    p.add_argument("--state-dir", type=Path, default=Path(".state"), help=argparse.SUPPRESS)
    p.set_defaults(run=_submit)

    p = sub.add_parser(
        "status",
        help="the fleet and the queue: nodes by status and region, jobs, progress",
        description="Nodes by status and by region, jobs by step and the running jobs with "
        "their progress, read from the API with an admin token. Exit 2 when refused (401/403), "
        "3 when unreachable, 4 on an API error. --api and --token default to .state/dev.json.",
    )
    p.add_argument("--api", help="orchestrator base URL (default: dev.json's, or :8080)")
    p.add_argument("--token", help="admin JWT (default: dev.json's admin token)")
    p.add_argument("--watch", type=float, metavar="SEC", help="redraw every SEC seconds")
    p.add_argument("--state-dir", type=Path, default=Path(".state"), help=argparse.SUPPRESS)
    p.set_defaults(run=_status)

    from flatrender.agent.cli import add_parser as add_agent
    from flatrender.updates_cli import add_parser as add_updates

    add_agent(sub)
    add_updates(sub)
    return parser


def _config_arg(p: argparse.ArgumentParser, *, required: bool) -> None:
    default = os.environ.get(CONFIG_ENV)
    p.add_argument(
        "--config",
        type=Path,
        required=required and default is None,
        default=default,
        help=f"TOML configuration file (or ${CONFIG_ENV}); FLATRENDER_<SECTION>_<KEY> overrides",
    )


def _load(args: argparse.Namespace) -> Config:
    return Config.load(args.config)


def _serve(args: argparse.Namespace) -> int:
    from flatrender import systemd
    from flatrender.daemon import Daemon, serve_forever
    from flatrender.persistence.db import DatabaseUnavailable
    from flatrender.persistence.migrate import SchemaBehind

    config = Config.load_for_serve(args.config)
    logs.configure(config.log.level, config.log.format)
    daemon = Daemon(config, config_path=args.config, listen_fds=systemd.listen_fds())
    try:
        trio.run(serve_forever, daemon)
    except (SchemaBehind, DatabaseUnavailable) as e:
        print(f"flatrender: {e}", file=sys.stderr)
        return 1
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from flatrender.daemon import sole_leaf
    from flatrender.persistence.db import DatabaseUnavailable, open_database
    from flatrender.persistence.migrate import migrate

    config = _load(args)
    if not config.database.url:
        raise ConfigError("[database] url: must be set")
    logs.configure(config.log.level, config.log.format)

    async def run() -> int:
        try:
            async with trio_asyncio.open_loop(), open_database(config.database.url, 1, 2) as db:
                applied = await migrate(db)
        except BaseExceptionGroup as group:
            raise sole_leaf(group) or group from None
        print(f"applied {len(applied)} migration(s)" if applied else "schema is up to date")
        return 0

    try:
        return trio.run(run)
    except DatabaseUnavailable as e:
        print(f"flatrender: {e}", file=sys.stderr)
        return 1


def _dev(args: argparse.Namespace) -> int:
    from flatrender.devmode import run_dev

    return run_dev(args.state_dir, port=args.port, nodes=args.nodes, config_path=args.config)


def _node_secret(args: argparse.Namespace) -> int:
    from flatrender.domain.signing import node_secret

    key = _load(args).auth.node_master_key or _dev_value("node_master_key")
    if not key:
        raise ConfigError("[auth] node_master_key: must be set (or run inside `flatrender dev`)")
    print(node_secret(key, args.node_id))
    return 0


def _token(args: argparse.Namespace) -> int:
    from flatrender.http.auth import mint_token

    auth = _load(args).auth
    secret = auth.jwt_secret or _dev_value("jwt_secret")
    if not secret:
        raise ConfigError("[auth] jwt_secret: must be set")
    token = mint_token(
        secret,
        args.user,
        args.role,
        args.ttl,
        audience=auth.jwt_audience,
        issuer=auth.jwt_issuer,
    )
    print(token)
    return 0


def _watch(args: argparse.Namespace) -> int:
    from flatrender.watch import run_watch

    return run_watch(args.job_id, args.api, args.token, args.state_dir)


def _submit(args: argparse.Namespace) -> int:
    from flatrender.submit_cli import run_submit

    return run_submit(
        args.project_id,
        demo=args.demo,
        quality=args.quality,
        resolution=args.resolution,
        api=args.api,
        token=args.token,
        follow=args.watch,
        state_dir=args.state_dir,
    )


def _status(args: argparse.Namespace) -> int:
    from flatrender.status_cli import run_status

    return run_status(args.api, args.token, args.state_dir, args.watch)


def _dev_value(key: str) -> str:
    """A secret of the local `flatrender dev` state, for commands run beside it."""
    from flatrender.devmode import read_dev_secrets

    return read_dev_secrets(Path(".state")).get(key, "")


if __name__ == "__main__":
    raise SystemExit(main())
