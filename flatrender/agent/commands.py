"""The commands of node protocol v1 (DESIGN §4) as typed values, and the node's inbox (pure).

A command is delivered in every heartbeat answer until the node acknowledges its id, so the
:class:`Inbox` de-duplicates by id and remembers what to acknowledge in the next heartbeat. The
ids it has seen stand for the agent's on-disk journal: they survive a simulated reboot, or a
``Restart`` delivered again after the reboot would reboot the node forever.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping
from typing import Any, TypeAlias
from uuid import UUID

import attrs
import cattrs

from flatrender.domain.model import CommandType


@attrs.frozen
class PrepareReplica:
    id: UUID
    job_id: UUID
    saved_project_id: UUID
    template_md5: str
    template_url: str
    replica_upload_url: str
    replica_key: str


@attrs.frozen
class RenderFrames:
    id: UUID
    job_id: UUID
    frame_job_id: UUID
    start_frame: int
    end_frame: int
    upload_url: str
    frame_rate: float = 30.0
    output_format: str = "mp4"
    output_key: str = ""
    attempt: int = 1
    replica_url: str | None = None
    quality: str | None = None
    resolution: str | None = None

    @property
    def frame_count(self) -> int:
        return self.end_frame - self.start_frame + 1


@attrs.frozen
class TrimRange:
    id: UUID
    job_id: UUID
    frame_job_id: UUID
    end_frame: int


@attrs.frozen
class CancelRender:
    id: UUID
    job_id: UUID
    frame_job_id: UUID


@attrs.frozen
class CloseAE:
    id: UUID


@attrs.frozen
class Restart:
    id: UUID


@attrs.frozen
class Release:
    id: UUID


@attrs.frozen
class UpdateSoftware:
    id: UUID
    update_id: UUID
    update_file_name: str
    download_url: str

    @property
    def agent_version(self) -> str:
        """The version the node reports once installed: the file name without its extension
        (``agent-2.0.0.zip`` -> ``agent-2.0.0``); a numeric suffix is part of the version."""
        name = self.update_file_name.rsplit("/", 1)[-1]
        for suffix in (".tar.gz", ".tar.xz", ".tar.bz2"):
            if name.endswith(suffix):
                return name[: -len(suffix)]
        stem, dot, ext = name.rpartition(".")
        return stem if dot and stem and any(c.isalpha() for c in ext) else name


Command: TypeAlias = (
    PrepareReplica
    | RenderFrames
    | TrimRange
    | CancelRender
    | CloseAE
    | Restart
    | Release
    | UpdateSoftware
)
Work: TypeAlias = PrepareReplica | RenderFrames
"""Commands that occupy the node (run one at a time, in order of arrival)."""

_TYPES: dict[CommandType, type[Command]] = {
    CommandType.PREPARE_REPLICA: PrepareReplica,
    CommandType.RENDER_FRAMES: RenderFrames,
    CommandType.TRIM_RANGE: TrimRange,
    CommandType.CANCEL_RENDER: CancelRender,
    CommandType.CLOSE_AE: CloseAE,
    CommandType.RESTART: Restart,
    CommandType.RELEASE: Release,
    CommandType.UPDATE_SOFTWARE: UpdateSoftware,
}

_converter = cattrs.Converter(forbid_extra_keys=False)
_converter.register_structure_hook(UUID, lambda value, _: UUID(str(value)))


class BadCommand(ValueError):
    """A command the agent cannot understand (unknown type, missing or malformed field)."""


def parse_command(raw: Mapping[str, Any]) -> Command:
    """The typed command for one element of ``pending_commands``; :class:`BadCommand` if bad."""
    try:
        kind = CommandType(raw.get("type"))
    except ValueError:
        raise BadCommand(f"unknown command type {raw.get('type')!r}") from None
    try:
        return _converter.structure(dict(raw), _TYPES[kind])
    except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as e:
        details = (
            "; ".join(cattrs.transform_error(e)) if isinstance(e, cattrs.BaseValidationError) else e
        )
        raise BadCommand(f"malformed {kind.value} command: {details}") from None


def describe(command: Command) -> str:
    """The command for a log line: its type and the ids that matter."""
    match command:
        case RenderFrames():
            return (
                f"RenderFrames job={command.job_id} range={command.frame_job_id} "
                f"frames={command.start_frame}..{command.end_frame} attempt={command.attempt}"
            )
        case PrepareReplica():
            return f"PrepareReplica job={command.job_id} project={command.saved_project_id}"
        case TrimRange() | CancelRender():
            return f"{type(command).__name__} job={command.job_id} range={command.frame_job_id}"
        case UpdateSoftware():
            return f"UpdateSoftware update={command.update_id} file={command.update_file_name}"
        case _:
            return type(command).__name__


@attrs.frozen
class Received:
    """What one heartbeat answer brought: new commands in delivery order, and the bad ones."""

    commands: list[Command]
    rejected: list[tuple[str, str]]  # (id or "?", reason)


class Inbox:
    """De-duplicates delivered commands by id and tracks the ids to acknowledge.

    Every delivered id (new, repeated or malformed) is acknowledged in the next heartbeat: a
    repeat means our acknowledgement was lost, and a malformed command would otherwise come back
    forever. Only the first delivery of an id is returned for execution. The last ``memory`` ids
    are remembered, far more than a heartbeat answer can hold.
    """

    def __init__(self, memory: int = 4096) -> None:
        self._seen: set[str] = set()
        self._order: collections.deque[str] = collections.deque()
        self._memory = memory
        self._to_ack: dict[str, None] = {}  # insertion-ordered set

    def receive(self, raw_commands: Iterable[object]) -> Received:
        commands: list[Command] = []
        rejected: list[tuple[str, str]] = []
        for raw in raw_commands:
            if not isinstance(raw, Mapping) or not raw.get("id"):
                rejected.append(("?", f"command without an id: {raw!r}"))
                continue
            command_id = str(raw["id"])
            self._to_ack[command_id] = None
            if command_id in self._seen:
                continue
            self._remember(command_id)
            try:
                commands.append(parse_command(raw))
            except BadCommand as e:
                rejected.append((command_id, str(e)))
        return Received(commands, rejected)

    def pending_acks(self) -> list[str]:
        """Ids to send as ``acked_command_ids`` in the next heartbeat."""
        return list(self._to_ack)

    def acknowledged(self, ids: Iterable[str]) -> None:
        """A heartbeat carrying ``ids`` was answered: the server has them."""
        for command_id in ids:
            self._to_ack.pop(command_id, None)

    def _remember(self, command_id: str) -> None:
        self._seen.add(command_id)
        self._order.append(command_id)
        while len(self._order) > self._memory:
            self._seen.discard(self._order.popleft())
