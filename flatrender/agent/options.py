"""Everything the simulated agent can be told (``flatrender agent`` options, or by ``dev``)."""

from __future__ import annotations

from pathlib import Path
from uuid import UUID

import attrs

from flatrender.agent.faults import FaultSettings

DEFAULT_API = "http://127.0.0.1:8080"
DEFAULT_STATE_FILE = Path(".state/agent-nodes.json")


class OptionsError(ValueError):
    """The options contradict each other."""


@attrs.frozen(kw_only=True)
class AgentOptions:
    """How many nodes, who they are, how they behave, and what goes wrong with them.

    Identity: ``nodes`` nodes named ``<name_prefix>-<i>`` (i from 1) taken from ``state_file``
    or registered with ``admin_token``; or exactly one pre-registered ``node_id``/``secret``.
    Times are in seconds.
    """

    api: str = DEFAULT_API
    nodes: int = 1
    admin_token: str | None = attrs.field(default=None, repr=False)
    node_id: UUID | None = None
    secret: str | None = attrs.field(default=None, repr=False)
    name_prefix: str = "sim"
    state_file: Path = DEFAULT_STATE_FILE
    # What the nodes say about themselves.
    region: str = "local"
    ae_version: str = "2024"
    agent_version: str = "agent-1.0.0"
    ram_gb: int = 32
    cpu_cores: int = 16
    # How long things take.
    frame_time: float = 0.05
    restart_delay: float = 2.0
    ae_restart_delay: float = 0.5
    install_time: float = 0.5
    download_time: float = 0.2  # a demo:// template "download"
    min_heartbeat_sec: float = 0.5  # floor for the interval the orchestrator asks for
    default_heartbeat_sec: float = 5.0  # when its answer names none
    max_backoff: float = 10.0
    # Faults.
    faults: FaultSettings = FaultSettings()
    die_after: float | None = None
    seed: int | None = None
    # Where segments are written before upload; None: a temporary folder.
    work_dir: Path | None = None

    def __attrs_post_init__(self) -> None:
        if self.node_id is not None or self.secret is not None:
            if self.node_id is None or not self.secret:
                raise OptionsError("--node-id and --secret go together")
            if self.nodes != 1:
                raise OptionsError("--node-id/--secret run exactly one node: drop --nodes")
        if self.nodes < 1:
            raise OptionsError("--nodes must be at least 1")
        for name in ("frame_time", "restart_delay", "ae_restart_delay", "install_time"):
            if getattr(self, name) < 0:
                raise OptionsError(f"{name} must not be negative")
        if self.die_after is not None and self.die_after <= 0:
            raise OptionsError("--die-after must be positive")
        if self.min_heartbeat_sec <= 0 or self.default_heartbeat_sec <= 0:
            raise OptionsError("heartbeat intervals must be positive")

    def node_name(self, index: int) -> str:
        """The registered name of node ``index`` (0-based): ``sim-1``, ``sim-2``, ..."""
        return f"{self.name_prefix}-{index + 1}"
