"""``RenderFrames`` on a simulated node: frame by frame, with crashes, reports and fencing.

Every frame but the last is reported as it finishes. After the last frame the output (an mp4
holding exactly the range's frames, or a PNG of ``start_frame``) is rendered with PyAV in a worker
thread, uploaded with the presigned url, and only then is the last frame reported: that report
makes the orchestrator validate the range (DESIGN §4). A refused report (409
``stale_assignment``, 404) drops the range at once. ``CancelRender``, ``CloseAE``, ``Release`` and
reboots are the caller's: it cancels the task running :func:`render_range`.
"""

from __future__ import annotations

import enum
import functools
import logging
from pathlib import Path

import attrs
import httpx
import trio

from flatrender import media
from flatrender.agent.client import (
    SignedClient,
    TransferFailed,
    accepted,
    put_bytes,
    utc_now,
)
from flatrender.agent.commands import RenderFrames
from flatrender.agent.faults import RangePlan
from flatrender.agent.work import RangeProgress
from flatrender.domain.model import CrashAction

log = logging.getLogger("flatrender.agent")


class Outcome(enum.Enum):
    DONE = "done"  # output uploaded and last frame reported
    DROPPED = "dropped"  # refused, reassigned or failed: nothing more to do for this range
    REBOOT = "reboot"  # the crash answer asked for a node reboot


@attrs.define
class AeProcess:
    """The node's (simulated) AfterFX: which version, and whether it is running."""

    version: str
    running: bool = False


@attrs.frozen
class RenderSettings:
    frame_time: float
    ae_restart_delay: float
    work_dir: Path


async def render_range(
    client: SignedClient,
    http: httpx.AsyncClient,
    command: RenderFrames,
    progress: RangeProgress,
    plan: RangePlan,
    ae: AeProcess,
    settings: RenderSettings,
) -> Outcome:
    """Render ``progress`` (the caller keeps it to apply ``TrimRange``) following ``plan``."""
    what = f"job={command.job_id} range={command.frame_job_id}"
    log.info(
        "node=%s %s rendering frames %d..%d attempt=%d",
        client.name,
        what,
        progress.start,
        progress.end,
        command.attempt,
    )
    ae.running = True
    while not progress.done:
        frame = progress.next_frame
        if plan.crash_frame == frame:
            action = await _crash(client, command, frame - 1, ae, what)
            if action is CrashAction.RESET_AND_RESTART:
                await trio.sleep(settings.ae_restart_delay)
                ae.running = True
                plan = plan.without_crash()
                progress.resume_after(frame - 1)
                continue
            return Outcome.REBOOT if action is CrashAction.RESTART_NODE else Outcome.DROPPED
        await trio.sleep(plan.frame_time(frame, settings.frame_time))
        progress.frame_done()
        if progress.done:  # ``frame`` was the last one, perhaps since a TrimRange
            break
        if not await _report_frame(client, command, frame, _frame_size(command), what):
            return Outcome.DROPPED
    return await _finish(client, http, command, progress, settings, what)


async def _finish(
    client: SignedClient,
    http: httpx.AsyncClient,
    command: RenderFrames,
    progress: RangeProgress,
    settings: RenderSettings,
    what: str,
) -> Outcome:
    progress.finishing = True
    last = progress.end
    path = settings.work_dir / f"{command.frame_job_id}-{command.attempt}.{command.output_format}"
    try:
        data, content_type = await trio.to_thread.run_sync(
            functools.partial(_render_output, path, command, last)
        )
        size = len(data)
        try:
            await put_bytes(http, command.upload_url, data, content_type)
        except TransferFailed as e:
            # The orchestrator notices through the heartbeat (no current job) and reassigns.
            log.error("node=%s %s upload failed, dropping the range: %s", client.name, what, e)
            return Outcome.DROPPED
    finally:
        path.unlink(missing_ok=True)
    log.info(
        "node=%s %s uploaded %s (%d bytes, frames %d..%d)",
        client.name,
        what,
        command.output_key or "output",
        size,
        progress.start,
        last,
    )
    if not await _report_frame(client, command, last, size, what):
        return Outcome.DROPPED
    log.info("node=%s %s done", client.name, what)
    return Outcome.DONE


# The simulated AfterFX renders every project at this size: a snapshot (PNG) of frame n is the
# very picture of frame n in the export.
FRAME_WIDTH, FRAME_HEIGHT = 160, 90


def _render_output(path: Path, command: RenderFrames, last: int) -> tuple[bytes, str]:
    """Write the range's output to ``path``; its bytes and content type (a worker thread)."""
    label = f"{command.job_id}/{command.frame_job_id}"
    size = {"width": FRAME_WIDTH, "height": FRAME_HEIGHT}
    if command.output_format == "png":
        media.render_still(path, frame_number=command.start_frame, label=label, **size)
        return path.read_bytes(), "image/png"
    media.render_segment(
        path,
        start_frame=command.start_frame,
        end_frame=last,
        frame_rate=max(1, round(command.frame_rate)),
        label=label,
        **size,
    )
    return path.read_bytes(), "video/mp4"


def _frame_size(command: RenderFrames) -> int:
    """What an intermediate frame report says about the frame's size: a plausible constant."""
    return 8_192 if command.output_format == "png" else 2_048


async def _report_frame(
    client: SignedClient, command: RenderFrames, frame: int, size: int, what: str
) -> bool:
    reply = await client.call(
        f"/v1/internal/render/jobs/{command.job_id}/frames",
        {
            "node_id": str(client.node_id),
            "frame_job_id": str(command.frame_job_id),
            "frame_number": frame,
            "file_size_bytes": size,
            "completed_at": utc_now(),
        },
    )
    return accepted(reply, client.name, f"{what} frame={frame}")


async def _crash(
    client: SignedClient, command: RenderFrames, last_known: int, ae: AeProcess, what: str
) -> CrashAction | None:
    """AE dies: report it and return what the orchestrator recommends (None: drop the range)."""
    ae.running = False
    log.warning("node=%s %s AE crashed (SIGSEGV) after frame %d", client.name, what, last_known)
    reply = await client.call(
        f"/v1/internal/render/jobs/{command.job_id}/crash",
        {
            "node_id": str(client.node_id),
            "frame_job_id": str(command.frame_job_id),
            "last_known_frame": last_known,
            "crash_signal": "SIGSEGV",
            "ae_version": ae.version,
            "error_log_tail": (
                f"aerender: rendering frame {last_known + 1} of {command.frame_job_id}\n"
                "Segmentation fault (simulated by flatrender agent --crash-rate)"
            ),
            "log_file_url": "",
        },
    )
    if not accepted(reply, client.name, f"{what} crash report"):
        return None
    recommended = reply.body.get("action_recommended") if isinstance(reply.body, dict) else None
    try:
        action = CrashAction(recommended)
    except ValueError:
        log.error(
            "node=%s %s crash answer without a known action (%r): dropping the range",
            client.name,
            what,
            reply.body,
        )
        return None
    log.info(
        "node=%s %s crash answer: %s reassigned_to=%s",
        client.name,
        what,
        action.value,
        reply.body.get("reassigned_to_node_id"),
    )
    return action
