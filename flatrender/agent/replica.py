"""``PrepareReplica`` on a simulated node: fetch the template into the cache, "run the JSX" (build
a small fake .aep describing the project), upload it with the presigned url, report it ready."""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx
import trio

from flatrender.agent.client import (
    SignedClient,
    TransferFailed,
    accepted,
    get_bytes,
    put_bytes,
)
from flatrender.agent.commands import PrepareReplica

log = logging.getLogger("flatrender.agent")

_GIB = 1024**3


class TemplateCache:
    """The templates on the node's disk (md5 -> size); like the disk, it survives reboots."""

    def __init__(self) -> None:
        self._sizes: dict[str, int] = {}

    def __contains__(self, md5: object) -> bool:
        return md5 in self._sizes

    def add(self, md5: str, size: int) -> None:
        self._sizes[md5] = size

    @property
    def md5s(self) -> list[str]:
        return sorted(self._sizes)

    @property
    def used_gb(self) -> int:
        return sum(self._sizes.values()) // _GIB


def simulated_template_size(md5: str) -> int:
    """A plausible, stable size (50..550 MB) for a template that is not really downloaded."""
    return 50_000_000 + int(hashlib.sha256(md5.encode()).hexdigest()[:8], 16) % 500_000_000


def fake_aep(command: PrepareReplica, node_name: str) -> bytes:
    """The replica: any bytes do for the orchestrator; these say what they stand for."""
    return json.dumps(
        {
            "format": "flatrender-simulated-aep/1",
            "job_id": str(command.job_id),
            "saved_project_id": str(command.saved_project_id),
            "template_md5": command.template_md5,
            "built_by": node_name,
            "built_at": datetime.now(UTC).isoformat(),
        },
        indent=2,
    ).encode()


async def prepare_replica(
    client: SignedClient,
    http: httpx.AsyncClient,
    cache: TemplateCache,
    command: PrepareReplica,
    *,
    download_time: float,
) -> bool:
    """Do the whole command; False (logged) when it was given up. Cancellable anywhere."""
    name = client.name
    if command.template_md5 not in cache and not await _fetch_template(
        client, http, cache, command, download_time
    ):
        return False
    data = fake_aep(command, name)
    try:
        await put_bytes(http, command.replica_upload_url, data, "application/octet-stream")
    except TransferFailed as e:
        log.error("node=%s job=%s replica upload failed: %s", name, command.job_id, e)
        return False
    md5 = hashlib.md5(data).hexdigest()
    reply = await client.call(
        f"/v1/internal/render/jobs/{command.job_id}/replica-ready",
        {"node_id": str(client.node_id), "replica_path": command.replica_key, "replica_md5": md5},
    )
    if not accepted(reply, name, f"job={command.job_id} replica-ready"):
        return False
    log.info(
        "node=%s job=%s replica ready key=%s md5=%s", name, command.job_id, command.replica_key, md5
    )
    return True


async def _fetch_template(
    client: SignedClient,
    http: httpx.AsyncClient,
    cache: TemplateCache,
    command: PrepareReplica,
    download_time: float,
) -> bool:
    url = command.template_url
    try:
        if urlsplit(url).scheme in ("http", "https"):
            size = len(await get_bytes(http, url))
        else:  # demo://... and the like: nothing to fetch, only the time it takes
            await trio.sleep(download_time)
            size = simulated_template_size(command.template_md5)
    except TransferFailed as e:
        log.error("node=%s job=%s template download failed: %s", client.name, command.job_id, e)
        await _cache_update(client, cache, command, "Failed", 0, str(e))
        return False
    cache.add(command.template_md5, size)
    log.info(
        "node=%s job=%s template %s cached (%d bytes)",
        client.name,
        command.job_id,
        command.template_md5,
        size,
    )
    await _cache_update(client, cache, command, "Downloaded", size, "")
    return True


async def _cache_update(
    client: SignedClient,
    cache: TemplateCache,
    command: PrepareReplica,
    action: str,
    size: int,
    error: str,
) -> None:
    reply = await client.call(
        f"/v1/internal/nodes/{client.node_id}/cache-update",
        {
            "action": action,
            "project_id": str(command.saved_project_id),
            "aep_file_md5": command.template_md5,
            "file_size_bytes": size,
            "cache_used_gb": cache.used_gb,
            "error_message": error,
        },
    )
    accepted(reply, client.name, f"cache-update {action}")
