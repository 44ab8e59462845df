"""The current RenderProgress of a job, the same for the poll and the WebSocket (DESIGN §5).

A live job's progress is the ProgressHub's (what a subscriber is sent now, built from the job
actor's state); a job the hub does not know (finished long ago, or its actor not up yet) is
built from PostgreSQL by the same builder.
"""

from __future__ import annotations

from uuid import UUID

import trio

from flatrender.actors.hub import ProgressHub
from flatrender.domain.progress import RenderProgress
from flatrender.http.common import state
from flatrender.persistence import progress as stored


def hub() -> ProgressHub | None:
    actors = state().actors
    return None if actors is None else actors.hub


async def current_progress(job_id: UUID) -> RenderProgress | None:
    """None when the job does not exist."""
    live = hub()
    if live is not None:
        progress = live.current(job_id)
        if progress is not None:
            return progress
    loaded = await stored.load(state().db, job_id)
    return None if loaded is None else loaded.progress(trio.current_time())
