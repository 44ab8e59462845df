"""A snapshot's objects in storage, all under ``snapshots/{snapshot_id}/``: the image and the
thumbnail its row names once it is cached, and the output of any superseded attempt beside them.

Both functions let :class:`flatrender.storage.StorageUnavailable` propagate: nothing is recorded
as removed that was not, and the caller retries later.
"""

from __future__ import annotations

from collections.abc import Collection
from uuid import UUID

from flatrender.persistence import snapshots
from flatrender.persistence.snapshots import SnapshotRow
from flatrender.storage import ObjectStore


async def sweep_superseded(store: ObjectStore, snapshot_id: UUID, keep: Collection[str]) -> int:
    """Delete every object of the snapshot but ``keep``; returns how many were deleted."""
    removed = 0
    for info in await store.list_prefix(snapshots.prefix(snapshot_id)):
        if info.key not in keep:
            await store.delete(info.key)
            removed += 1
    return removed


async def remove_all(store: ObjectStore, row: SnapshotRow) -> None:
    """Every object of a snapshot whose row is about to go (DESIGN §7: objects before rows): the
    keys the row names, then whatever superseded attempt is left under its prefix."""
    for key in (row.image_key, row.thumbnail_key):
        if key:
            await store.delete(key)
    await sweep_superseded(store, row.id, keep=())
