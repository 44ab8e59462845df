"""Commands from the wire, and the inbox's de-duplication and acknowledgements."""

from __future__ import annotations

from uuid import UUID, uuid4

import pytest

from flatrender.agent.commands import (
    BadCommand,
    CancelRender,
    CloseAE,
    Inbox,
    PrepareReplica,
    RenderFrames,
    Restart,
    UpdateSoftware,
    parse_command,
)


def render_frames(**overrides: object) -> dict[str, object]:
    return {
        "id": str(uuid4()),
        "type": "RenderFrames",
        "job_id": str(uuid4()),
        "frame_job_id": str(uuid4()),
        "start_frame": 0,
        "end_frame": 29,
        "attempt": 2,
        "replica_url": "http://s3/replica.aep",
        "quality": "High",
        "resolution": 1080,
        "frame_rate": 30,
        "output_format": "mp4",
        "upload_url": "http://s3/put?sig=1",
        "output_key": "renders/a/b.mp4",
        **overrides,
    }


def test_render_frames_is_parsed_with_typed_fields() -> None:
    raw = render_frames()
    command = parse_command(raw)
    assert isinstance(command, RenderFrames)
    assert command.job_id == UUID(str(raw["job_id"]))
    assert (command.start_frame, command.end_frame, command.frame_count) == (0, 29, 30)
    assert command.resolution == "1080" and command.attempt == 2


def test_every_command_type_parses() -> None:
    ids = {"job_id": str(uuid4()), "frame_job_id": str(uuid4())}
    assert isinstance(parse_command({"id": str(uuid4()), "type": "CloseAE"}), CloseAE)
    assert isinstance(parse_command({"id": str(uuid4()), "type": "Restart"}), Restart)
    assert isinstance(
        parse_command({"id": str(uuid4()), "type": "CancelRender", **ids}), CancelRender
    )
    prepare = {
        "id": str(uuid4()),
        "type": "PrepareReplica",
        "job_id": str(uuid4()),
        "saved_project_id": str(uuid4()),
        "template_md5": "abc",
        "template_url": "demo://t",
        "replica_upload_url": "http://s3/put",
        "replica_key": "replicas/p/1.aep",
        "unknown_extra_field": True,
    }
    assert isinstance(parse_command(prepare), PrepareReplica)


@pytest.mark.parametrize(
    "raw",
    [
        {"id": "x", "type": "Explode"},
        {"id": "x"},
        {"id": "x", "type": "CancelRender", "job_id": "not-a-uuid", "frame_job_id": "x"},
        {"id": str(uuid4()), "type": "TrimRange", "job_id": str(uuid4())},
    ],
)
def test_bad_commands_are_refused(raw: dict[str, object]) -> None:
    with pytest.raises(BadCommand):
        parse_command(raw)


@pytest.mark.parametrize(
    ("file_name", "version"),
    [
        ("agent-2.0.0.zip", "agent-2.0.0"),
        ("agent-2.0.0.tar.gz", "agent-2.0.0"),
        ("agent-2.0.0", "agent-2.0.0"),
        ("updates/agent-3.1.exe", "agent-3.1"),
    ],
)
def test_update_version_is_the_file_name_without_extension(file_name: str, version: str) -> None:
    command = UpdateSoftware(uuid4(), uuid4(), file_name, "http://x")
    assert command.agent_version == version


def test_inbox_returns_new_commands_in_delivery_order_once() -> None:
    inbox = Inbox()
    first, second = render_frames(), {"id": str(uuid4()), "type": "CloseAE"}
    received = inbox.receive([first, second])
    assert [c.id for c in received.commands] == [UUID(first["id"]), UUID(second["id"])]
    # Delivered again (our ack was not processed yet): not executed again, acked again.
    assert inbox.receive([first, second]).commands == []
    assert inbox.pending_acks() == [first["id"], second["id"]]


def test_acks_are_dropped_once_a_heartbeat_carrying_them_is_answered() -> None:
    inbox = Inbox()
    command = render_frames()
    inbox.receive([command])
    acks = inbox.pending_acks()
    inbox.receive([{"id": str(uuid4()), "type": "Release"}])  # arrives meanwhile
    inbox.acknowledged(acks)
    assert len(inbox.pending_acks()) == 1
    # A late redelivery of an acknowledged command is acknowledged again, not executed.
    assert inbox.receive([command]).commands == []
    assert command["id"] in inbox.pending_acks()


def test_malformed_commands_are_rejected_but_acknowledged() -> None:
    inbox = Inbox()
    received = inbox.receive([{"id": "c1", "type": "Explode"}, "garbage", {"type": "CloseAE"}])
    assert received.commands == []
    assert [r[0] for r in received.rejected] == ["c1", "?", "?"]
    assert inbox.pending_acks() == ["c1"]


def test_inbox_memory_is_bounded() -> None:
    inbox = Inbox(memory=2)
    commands = [{"id": str(uuid4()), "type": "CloseAE"} for _ in range(3)]
    inbox.receive(commands)
    assert len(inbox.receive(commands[:1]).commands) == 1  # forgotten, so new again
