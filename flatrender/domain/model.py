"""Domain enums and value types shared across layers (wire names equal the contract's)."""

from __future__ import annotations

import enum
from datetime import datetime
from uuid import UUID

import attrs


class NodeStatus(enum.Enum):
    OFFLINE = "Offline"
    IDLE = "Idle"
    BUSY = "Busy"
    MAINTENANCE = "Maintenance"
    QUARANTINED = "Quarantined"
    UPDATING = "Updating"


class CommandType(enum.Enum):
    PREPARE_REPLICA = "PrepareReplica"
    RENDER_FRAMES = "RenderFrames"
    TRIM_RANGE = "TrimRange"
    CANCEL_RENDER = "CancelRender"
    CLOSE_AE = "CloseAE"
    RESTART = "Restart"
    RELEASE = "Release"
    UPDATE_SOFTWARE = "UpdateSoftware"


class CrashAction(enum.Enum):
    RESET_AND_RESTART = "ResetAndRestart"
    REASSIGN_WORK = "ReassignWork"
    RESTART_NODE = "RestartNode"


@attrs.frozen
class HealthSample:
    """One heartbeat's measurements, as stored in ``node_health_samples`` (column order)."""

    node_id: UUID
    recorded_at: datetime
    status: str
    cpu_pct: int
    ram_available_mb: int
    ae_running: bool
    current_job_id: UUID | None
    current_frame: int | None
    cache_used_gb: int


@attrs.frozen
class NodeCommand:
    """A command waiting for a node; delivered in every heartbeat answer until acknowledged."""

    id: UUID
    type: CommandType
    payload: dict[str, object] = attrs.field(factory=dict)

    def wire(self) -> dict[str, object]:
        return {"id": str(self.id), "type": self.type.value, **self.payload}
