"""``flatrender updates publish|list``: publish node software updates, list them.

``publish FILE --target-ae-version V --description TEXT`` uploads FILE to object storage under
``updates/{update_id}/{file name}`` and then records the `NodeUpdate` (sha256, size, the next
``update_number``), so a recorded update always has its file. It prints the id and the number.
Every failure (unreadable file, database or object storage unreachable, bad configuration) is
one line on stderr and a non-zero exit status: 2 for usage and configuration, 1 for the rest.

Hooked into ``flatrender`` with :func:`add_parser`; ``python -m flatrender.updates_cli`` runs the
same commands on their own.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from uuid import uuid4

import trio
import trio_asyncio

from flatrender.config import Config, ConfigError
from flatrender.persistence import updates
from flatrender.persistence.db import Database, DatabaseUnavailable, open_database
from flatrender.storage import MinioStore, ObjectStore, StorageError

CONFIG_ENV = "FLATRENDER_CONFIG"
_CHUNK = 1024 * 1024

_Command = Callable[[Database], Awaitable[None]]


class PublishError(Exception):
    """The update cannot be published; the message is one line for the operator."""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``updates`` (with ``publish`` and ``list``) to the ``flatrender`` sub-commands."""
    parser = subparsers.add_parser(
        "updates",
        help="publish and list node software updates",
        description="Node software updates: publish a file for the nodes, list what exists. "
        "Rollouts are started with POST /v1/node-updates/{id}/rollout.",
    )
    parser.set_defaults(run=lambda _args: _usage(parser))
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    p = sub.add_parser(
        "publish",
        help="upload an update file and record it",
        description="Upload FILE to object storage under updates/{update_id}/{file name} and "
        "record it as a node update. Nodes report the file name without its extension as their "
        "agent version once installed (agent-2.0.0.zip -> agent-2.0.0).",
    )
    p.add_argument("file", type=Path, metavar="FILE")
    p.add_argument("--target-ae-version", required=True, metavar="V")
    p.add_argument("--description", required=True, metavar="TEXT")
    _config_arg(p)
    p.set_defaults(run=run_publish)

    p = sub.add_parser("list", help="list published updates, newest first")
    _config_arg(p)
    p.set_defaults(run=run_list)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _config_arg(p: argparse.ArgumentParser) -> None:
    default = os.environ.get(CONFIG_ENV)
    p.add_argument(
        "--config",
        type=Path,
        required=default is None,
        default=default,
        help=f"TOML configuration file (or ${CONFIG_ENV}); needs [database] url and [s3]",
    )


# ------------------------------------------------------------------ publish


def file_digest(path: Path) -> tuple[str, int]:
    """(hex sha256, size in bytes) of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


async def publish(
    db: Database, store: ObjectStore, path: Path, target_ae_version: str, description: str
) -> updates.NodeUpdate:
    """Upload, then record. Raises `PublishError` for a bad file or argument, `StorageError`
    and `DatabaseUnavailable` for outages; an upload whose record fails is removed again."""
    if not target_ae_version.strip():
        raise PublishError("--target-ae-version must not be empty")
    try:
        sha256, size = await trio.to_thread.run_sync(file_digest, path)
    except FileNotFoundError:
        raise PublishError(f"{path}: no such file") from None
    except OSError as e:
        raise PublishError(f"{path}: cannot read: {e.strerror or e}") from None
    update_id = uuid4()
    key = f"updates/{update_id}/{path.name}"
    await store.ensure_bucket()
    await store.put_file(key, path)
    new = updates.NewUpdate(
        update_id, path.name, key, sha256, size, description, target_ae_version.strip()
    )
    try:
        return await updates.publish(db, new)
    except BaseException:
        with trio.CancelScope(shield=True), contextlib.suppress(StorageError):
            await store.delete(key)
        raise


def run_publish(args: argparse.Namespace) -> int:
    config = _load(args, s3=True)
    if not args.file.is_file():  # before connecting to anything
        return _fail(f"{args.file}: no such file")

    async def run(db: Database) -> None:
        store = MinioStore(config.s3)
        try:
            update = await publish(db, store, args.file, args.target_ae_version, args.description)
        finally:
            store.close()
        print(f"published update #{update.update_number} {update.id}")
        print(
            f"  file {update.update_file_name} ({update.size_bytes} bytes, sha256 {update.sha256})"
        )

    return _run(config, run)


# ------------------------------------------------------------------ list


def run_list(args: argparse.Namespace) -> int:
    config = _load(args, s3=False)

    async def run(db: Database) -> None:
        found = await updates.list_updates(db)
        if not found:
            print("no updates published")
        for u in found:
            state = "queued" if u.in_update_queue else "halted" if u.halted_reason else "idle"
            print(
                f"#{u.update_number} {u.id} {u.update_file_name} AE {u.target_ae_version} "
                f"{state} rolled out to {len(u.rolled_out_to_node_ids)} node(s) "
                f"{u.create_date:%Y-%m-%d %H:%M}Z {u.description}"
            )
            if u.halted_reason:
                print(f"    halted: {u.halted_reason}")

    return _run(config, run)


# ------------------------------------------------------------------ plumbing


def _load(args: argparse.Namespace, *, s3: bool) -> Config:
    config = Config.load(args.config)
    if not config.database.url:
        raise ConfigError("[database] url: must be set")
    if s3 and not config.s3.endpoint:
        raise ConfigError("[s3] endpoint: must be set")
    return config


def _run(config: Config, command: _Command) -> int:
    async def main() -> None:
        async with trio_asyncio.open_loop(), open_database(config.database.url, 1, 2) as db:
            await command(db)

    try:
        trio.run(main)
    except BaseException as raised:
        # trio_asyncio's nurseries wrap what the body raised in exception groups.
        error = _leaf(raised)
        if isinstance(error, PublishError):
            return _fail(str(error))
        if isinstance(error, DatabaseUnavailable):
            return _fail(f"database unavailable: {error}")
        if isinstance(error, StorageError):
            return _fail(f"object storage: {error}")
        raise
    return 0


def _leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def _fail(message: str) -> int:
    print(f"flatrender: {message}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flatrender.updates_cli updates publish ...``: the same commands on their own."""
    parser = argparse.ArgumentParser(prog="flatrender")
    add_parser(parser.add_subparsers(title="commands", metavar="COMMAND"))
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return int(args.run(args))
    except ConfigError as e:
        print(f"flatrender: configuration error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
