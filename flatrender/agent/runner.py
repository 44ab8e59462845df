"""Run the simulated nodes: who they are (state file, registration), then all of them at once.

:func:`run_agent` is the whole ``flatrender agent`` command; ``flatrender dev`` starts it as one
task of its nursery. Each node is its own task; one node's trouble never stops another.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import trio

from flatrender.agent.client import Backoff, normalize_api
from flatrender.agent.node import NodeIdentity, SimNode
from flatrender.agent.options import AgentOptions

log = logging.getLogger("flatrender.agent")


class AgentError(Exception):
    """The nodes cannot start (registration refused, unreadable state file): for a person."""


async def run_agent(
    options: AgentOptions, *, task_status: trio.TaskStatus[list[SimNode]] = trio.TASK_STATUS_IGNORED
) -> None:
    """Resolve the nodes' identities, then run every node until cancelled or ``die_after``.

    Raises :class:`AgentError` before any node starts when an identity cannot be had. Publishes
    the running nodes through ``task_status``.
    """
    # httpx logs every request at INFO, presigned urls (with their signatures) included.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    limits = httpx.Limits(
        max_connections=max(10, 2 * options.nodes), max_keepalive_connections=options.nodes + 4
    )
    timeout = httpx.Timeout(15.0, connect=5.0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as http:
        identities = await resolve_identities(http, options)
        nodes = [SimNode(identity, http, options) for identity in identities]
        log.info(
            "agent: %d node(s) against %s: %s",
            len(nodes),
            normalize_api(options.api),
            ", ".join(n.name for n in nodes),
        )
        async with trio.open_nursery() as nursery:
            for node in nodes:
                nursery.start_soon(node.run)
            task_status.started(nodes)
    log.info("agent: every node stopped")


async def resolve_identities(http: httpx.AsyncClient, options: AgentOptions) -> list[NodeIdentity]:
    """``--node-id/--secret``, or ``--nodes N`` from the state file, registering what is missing."""
    if options.node_id is not None and options.secret:
        name = f"{options.name_prefix}-{str(options.node_id)[:8]}"
        return [NodeIdentity(name, options.node_id, options.secret)]
    known = load_state(options.state_file)
    identities: list[NodeIdentity] = []
    for index in range(options.nodes):
        name = options.node_name(index)
        identity = known.get(name)
        if identity is None:
            if not options.admin_token:
                raise AgentError(
                    f"node {name!r} is not in {options.state_file}: pass --admin-token to "
                    "register it, or --node-id/--secret for a node registered elsewhere"
                )
            identity = await register_node(http, options, name, index)
            known[name] = identity
            save_state(options.state_file, known)
        identities.append(identity)
    return identities


async def register_node(
    http: httpx.AsyncClient, options: AgentOptions, name: str, index: int
) -> NodeIdentity:
    """``POST /v1/nodes`` as admin; retried while the server is unreachable or failing."""
    assert options.admin_token
    url = normalize_api(options.api) + "/v1/nodes"
    body = {
        "name": name,
        "region": options.region,
        "node_ip": "127.0.0.1",
        "worker_port": 9100 + index,
        "current_ae_version": options.ae_version,
        "ram_gb": options.ram_gb,
        "cpu_cores": options.cpu_cores,
        "node_kind": "Shared",
    }
    headers = {"Authorization": f"Bearer {options.admin_token}"}
    backoff = Backoff(initial=0.5, cap=options.max_backoff)
    while True:
        try:
            response = await http.post(url, json=body, headers=headers)
        except httpx.TransportError as e:
            problem = f"{type(e).__name__}: {e}"
        else:
            if response.status_code < 500 and response.status_code != 429:
                return _registered(response, name, options.state_file)
            problem = f"HTTP {response.status_code}"
        delay = backoff.next()
        log.warning(
            "agent: registering %s at %s failed (%s); retrying in %.1fs", name, url, problem, delay
        )
        await trio.sleep(delay)


def _registered(response: httpx.Response, name: str, state_file: Path) -> NodeIdentity:
    body = _json(response)
    status = response.status_code
    if status == 409:
        raise AgentError(
            f"a node named {name!r} is already registered, but {state_file} does not hold its "
            "secret: use another --name-prefix or --state-file, or run it with "
            "--node-id/--secret (`flatrender node-secret NODE_ID` prints the secret)"
        )
    if status in (401, 403):
        raise AgentError(f"registering {name!r}: the admin token was refused (HTTP {status})")
    if status not in (200, 201):
        raise AgentError(f"registering {name!r} failed: HTTP {status} {body}")
    try:
        identity = NodeIdentity(name, UUID(str(body["id"])), str(body["node_secret"]))
    except (KeyError, TypeError, ValueError):
        raise AgentError(
            f"registering {name!r}: the answer lacks id/node_secret (an old server?)"
        ) from None
    log.info("agent: registered %s id=%s", name, identity.node_id)
    return identity


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


# -- state file: {"nodes": {name: {"id": uuid, "secret": str}}} ----------------------------------


def load_state(path: Path) -> dict[str, NodeIdentity]:
    if not path.exists():
        return {}
    try:
        nodes = json.loads(path.read_text())["nodes"]
        return {
            name: NodeIdentity(name, UUID(entry["id"]), str(entry["secret"]))
            for name, entry in nodes.items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise AgentError(f"{path}: not a readable agent state file ({e})") from None


def save_state(path: Path, identities: dict[str, NodeIdentity]) -> None:
    """Write atomically, readable by the owner only: it holds the node secrets."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "nodes": {
            name: {"id": str(i.node_id), "secret": i.secret} for name, i in identities.items()
        }
    }
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)
