"""Queue order, node eligibility, node preference and matching (DESIGN §6)."""

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import attrs
import pytest

from flatrender.domain.scheduling import (
    NodeCandidate,
    WorkItem,
    by_job,
    eligible,
    match,
    node_score,
    passed_over,
    queue_key,
)

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
ALICE = UUID(int=1)
BOB = UUID(int=2)


def item(n: int = 1, **kw: Any) -> WorkItem:
    base = WorkItem(
        job_id=UUID(int=100 + n),
        frame_job_id=UUID(int=200 + n),
        owner_user_id=ALICE,
        preferred_region=None,
        ae_version="2024",
        template_md5="md5-a",
        priority_queue="Cash",
        queued_at=T0,
        order_value=0,
    )
    return attrs.evolve(base, **kw)


def node(n: int = 1, **kw: Any) -> NodeCandidate:
    base = NodeCandidate(
        node_id=UUID(int=300 + n),
        owner_user_id=None,
        region="eu",
        ae_versions=frozenset({"2024"}),
        cached_md5s=frozenset(),
        priority=0,
        recent_failures=0,
    )
    return attrs.evolve(base, **kw)


def best(it: WorkItem, *nodes: NodeCandidate) -> NodeCandidate:
    return min(nodes, key=lambda n: node_score(n, it))


# ------------------------------------------------------------------ queue order


def test_queue_order_follows_priority_queue_rank() -> None:
    queues = ["Free", "Preview", "Reseller", "Cash", "Plan", "Snapshot"]
    items = [item(i, priority_queue=q) for i, q in enumerate(queues)]
    ordered = [i.priority_queue for i in sorted(items, key=queue_key)]
    assert ordered[0] == "Snapshot"
    assert set(ordered[1:3]) == {"Plan", "Cash"}
    assert ordered[3:] == ["Reseller", "Preview", "Free"]


def test_queue_order_plan_and_cash_share_a_rank_so_queued_at_decides() -> None:
    cash = item(1, priority_queue="Cash", queued_at=T0)
    plan = item(2, priority_queue="Plan", queued_at=T0 + timedelta(seconds=1))
    assert sorted([plan, cash], key=queue_key) == [cash, plan]


def test_queue_order_rank_beats_queued_at() -> None:
    old_free = item(1, priority_queue="Free", queued_at=T0 - timedelta(hours=1))
    new_cash = item(2, priority_queue="Cash", queued_at=T0)
    assert sorted([old_free, new_cash], key=queue_key) == [new_cash, old_free]


def test_queue_order_within_a_job_follows_order_value() -> None:
    late = item(1, order_value=500, frame_job_id=UUID(int=9))
    early = item(1, order_value=0, frame_job_id=UUID(int=8))
    assert sorted([late, early], key=queue_key) == [early, late]


def test_queue_key_rejects_unknown_queue() -> None:
    with pytest.raises(ValueError):
        queue_key(item(priority_queue="VIP"))


# ------------------------------------------------------------------ eligibility


def test_node_without_the_ae_version_is_not_eligible() -> None:
    assert not eligible(node(ae_versions=frozenset({"2023"})), item())


def test_shared_node_serves_everyone() -> None:
    assert eligible(node(owner_user_id=None), item(owner_user_id=BOB))


def test_dedicated_node_serves_its_owner() -> None:
    assert eligible(node(owner_user_id=ALICE), item(owner_user_id=ALICE))


def test_dedicated_node_refuses_other_users_jobs() -> None:
    assert not eligible(node(owner_user_id=ALICE), item(owner_user_id=BOB))


# ------------------------------------------------------------------ preference


def test_owners_own_node_beats_preferred_region() -> None:
    it = item(preferred_region="us")
    own = node(1, owner_user_id=ALICE, region="eu")
    in_region = node(2, region="us")
    assert best(it, in_region, own) == own


def test_preferred_region_beats_cached_template() -> None:
    it = item(preferred_region="us")
    cached = node(1, region="eu", cached_md5s=frozenset({"md5-a"}))
    in_region = node(2, region="us")
    assert best(it, cached, in_region) == in_region


def test_no_preferred_region_means_region_does_not_matter() -> None:
    it = item(preferred_region=None)
    assert best(it, node(1, region="us"), node(2, region="eu", priority=1)).node_id == UUID(int=302)


def test_cached_template_beats_priority() -> None:
    cached = node(1, cached_md5s=frozenset({"md5-a"}))
    high = node(2, priority=10)
    assert best(item(), high, cached) == cached


def test_higher_priority_beats_fewer_failures() -> None:
    high = node(1, priority=5, recent_failures=2)
    low = node(2, priority=1, recent_failures=0)
    assert best(item(), low, high) == high


def test_fewer_recent_failures_beats_node_id() -> None:
    flaky = node(1, recent_failures=3)
    steady = node(2, recent_failures=0)
    assert best(item(), flaky, steady) == steady


def test_node_id_breaks_remaining_ties() -> None:
    assert best(item(), node(2), node(1)) == node(1)


# ------------------------------------------------------------------ matching


def test_match_serves_items_in_queue_order_with_their_best_node() -> None:
    free = item(1, priority_queue="Free", template_md5="md5-a")
    snap = item(2, priority_queue="Snapshot", template_md5="md5-a")
    cached = node(1, cached_md5s=frozenset({"md5-a"}))
    plain = node(2)
    pairs = match([free, snap], [plain, cached])
    assert pairs == [(snap, cached), (free, plain)]


def test_match_uses_each_node_once_and_leaves_extra_items_waiting() -> None:
    pairs = match([item(1), item(2), item(3)], [node(1), node(2)])
    assert [i.frame_job_id for i, _ in pairs] == [UUID(int=201), UUID(int=202)]
    assert len({n.node_id for _, n in pairs}) == 2


def test_match_each_item_at_most_once() -> None:
    it = item(1)
    pairs = match([it, it], [node(1), node(2)])
    assert pairs == [(it, node(1))]


def test_match_node_listed_twice_is_used_once() -> None:
    pairs = match([item(1), item(2)], [node(1), node(1)])
    assert len(pairs) == 1


def test_match_skips_item_without_eligible_node_and_serves_the_next() -> None:
    old_ae = item(1, ae_version="2022", priority_queue="Snapshot")
    ok = item(2)
    pairs = match([old_ae, ok], [node(1)])
    assert pairs == [(ok, node(1))]


def test_match_dedicated_node_waits_for_its_owner_behind_other_users() -> None:
    bobs = item(1, owner_user_id=BOB, priority_queue="Snapshot")
    alices = item(2, owner_user_id=ALICE, priority_queue="Free")
    alices_node = node(1, owner_user_id=ALICE)
    assert match([bobs, alices], [alices_node]) == [(alices, alices_node)]


def test_match_nothing_without_nodes() -> None:
    assert match([item()], []) == []


# ------------------------------------------------------------------ a round's batches


def test_by_job_groups_a_rounds_pairs_per_job_in_queue_order() -> None:
    job_a, job_b = UUID(int=101), UUID(int=102)
    a0 = item(1, job_id=job_a, frame_job_id=UUID(int=201), order_value=0)
    a1 = item(2, job_id=job_a, frame_job_id=UUID(int=202), order_value=1)
    b0 = item(3, job_id=job_b, frame_job_id=UUID(int=203), order_value=0)
    pairs = match([b0, a1, a0], [node(1), node(2), node(3)])
    batches = by_job(pairs)
    assert list(batches) == [job_a, job_b]  # queue order: same queued_at, then job_id
    assert [r for r, _ in batches[job_a]] == [a0.frame_job_id, a1.frame_job_id]
    assert [r for r, _ in batches[job_b]] == [b0.frame_job_id]
    taken = [n for batch in batches.values() for _, n in batch]
    assert sorted(taken) == sorted(n.node_id for _, n in pairs)


def test_passed_over_is_the_idle_nodes_no_waiting_item_may_run_on() -> None:
    old_ae = node(2, ae_versions=frozenset({"2022"}))
    pairs = match([item(1), item(2)], [node(1), old_ae])
    assert passed_over([node(1), old_ae], pairs) == frozenset({old_ae.node_id})
    assert passed_over([node(1)], match([item(1)], [node(1)])) == frozenset()
