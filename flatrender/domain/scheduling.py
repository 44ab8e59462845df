"""Which ready frame range goes to which idle node (DESIGN §6), as pure functions.

**Queue order**: by the rank of the item's ``priority_queue`` (Snapshot, then Plan and Cash,
then Reseller, Preview, Free; see :func:`flatrender.domain.pricing.queue_rank`), then
``queued_at`` (first come, first served), then ``job_id`` and ``order_value`` so that the order is
total and a job's ranges go out in frame order.

**Eligibility**: the node has the item's AfterFX version, and a *dedicated* node (one with an
``owner_user_id``) serves only its owner's jobs, while a *shared* node (no owner) serves everyone.
A user who pays for a node does not lend it to the queue; an owner's job may still run on shared
nodes. Liveness (``Idle``, active, accepting new jobs, not due for maintenance) is the caller's
filter: only such nodes are candidates.

**Node choice** among the eligible, best first: the job owner's own node, then a node in the
item's ``preferred_region``, then a node with the template already cached (same md5), then the
higher node ``priority``, then fewer recent failures, then ``node_id`` (determinism).

**Matching** is greedy in queue order: each item takes the best eligible node still free; an item
without one is skipped (it does not block the items behind it, which may fit other nodes).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from uuid import UUID

import attrs

from flatrender.domain.pricing import queue_rank


@attrs.frozen
class NodeCandidate:
    """An idle, schedulable node; ``ae_versions`` holds every AfterFX version it can run."""

    node_id: UUID
    owner_user_id: UUID | None
    region: str
    ae_versions: frozenset[str]
    cached_md5s: frozenset[str]
    priority: int
    recent_failures: int


@attrs.frozen
class WorkItem:
    """A ``Pending`` frame range of a ``Rendering`` job, waiting for a node."""

    job_id: UUID
    frame_job_id: UUID
    owner_user_id: UUID
    preferred_region: str | None
    ae_version: str
    template_md5: str
    priority_queue: str
    queued_at: datetime
    order_value: int


QueueKey = tuple[int, datetime, UUID, int]
NodeScore = tuple[bool, bool, bool, int, int, UUID]


def queue_key(item: WorkItem) -> QueueKey:
    """Sort key of the queue, first served first; :class:`ValueError` for an unknown queue."""
    return (queue_rank(item.priority_queue), item.queued_at, item.job_id, item.order_value)


def is_own_node(node: NodeCandidate, item: WorkItem) -> bool:
    return node.owner_user_id is not None and node.owner_user_id == item.owner_user_id


def eligible(node: NodeCandidate, item: WorkItem) -> bool:
    """The node can run the item: right AfterFX version, and shared or owned by the job's user."""
    if item.ae_version not in node.ae_versions:
        return False
    return node.owner_user_id is None or node.owner_user_id == item.owner_user_id


def node_score(node: NodeCandidate, item: WorkItem) -> NodeScore:
    """Sort key of the nodes for ``item``, best first (each criterion beats all after it)."""
    in_region = item.preferred_region is not None and node.region == item.preferred_region
    return (
        not is_own_node(node, item),
        not in_region,
        item.template_md5 not in node.cached_md5s,
        -node.priority,
        node.recent_failures,
        node.node_id,
    )


def match(
    items: Iterable[WorkItem], nodes: Iterable[NodeCandidate]
) -> list[tuple[WorkItem, NodeCandidate]]:
    """Pairs of (item, node) to assign now, in queue order; each node and item at most once.

    An item listed twice (same ``frame_job_id``) is matched once; so is a node listed twice.
    """
    free: dict[UUID, NodeCandidate] = {}
    for node in nodes:
        free.setdefault(node.node_id, node)
    pairs: list[tuple[WorkItem, NodeCandidate]] = []
    seen: set[UUID] = set()
    for item in sorted(items, key=queue_key):
        if not free:
            break
        if item.frame_job_id in seen:
            continue
        seen.add(item.frame_job_id)
        options = [n for n in free.values() if eligible(n, item)]
        if not options:
            continue
        best = min(options, key=lambda n: node_score(n, item))
        del free[best.node_id]
        pairs.append((item, best))
    return pairs


def passed_over(
    nodes: Iterable[NodeCandidate], pairs: Iterable[tuple[WorkItem, NodeCandidate]]
) -> frozenset[UUID]:
    """The idle nodes a matching left without work: no waiting item may run on them (greedy
    matching skips an item only when no free node is eligible for it)."""
    taken = {node.node_id for _, node in pairs}
    return frozenset(n.node_id for n in nodes if n.node_id not in taken)


def by_job(
    pairs: Iterable[tuple[WorkItem, NodeCandidate]],
) -> dict[UUID, tuple[tuple[UUID, UUID], ...]]:
    """A round's pairs grouped per job as ``(frame_job_id, node_id)``, each job's in the order
    given (queue order), the jobs in the order of their first pair."""
    grouped: dict[UUID, list[tuple[UUID, UUID]]] = {}
    for item, node in pairs:
        grouped.setdefault(item.job_id, []).append((item.frame_job_id, node.node_id))
    return {job_id: tuple(batch) for job_id, batch in grouped.items()}
