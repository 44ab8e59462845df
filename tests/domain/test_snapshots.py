"""Pure snapshot rules: the frame within its scene, expiry, url lifetime, price from config."""

from datetime import UTC, datetime, timedelta

import attrs

from flatrender.config import PricingConfig
from flatrender.domain import snapshots as snap

NOW = datetime(2030, 1, 1, 12, tzinfo=UTC)


def test_frame_within_scene_is_valid_at_both_ends() -> None:
    assert snap.frame_errors((10, 20), "intro", 10) == []
    assert snap.frame_errors((10, 20), "intro", 20) == []


def test_frame_outside_scene_names_frame_number() -> None:
    for frame in (9, 21):
        [error] = snap.frame_errors((10, 20), "intro", frame)
        assert error["field"] == "$.frame_number" and "10-20" in error["message"]


def test_unknown_scene_names_scene_key() -> None:
    [error] = snap.frame_errors(None, "outro", 0)
    assert error["field"] == "$.scene_key" and "outro" in error["message"]


def test_only_an_unexpired_cached_snapshot_is_fresh() -> None:
    later = NOW + timedelta(seconds=1)
    assert snap.is_fresh(snap.SnapshotStatus.CACHED, later, NOW)
    assert not snap.is_fresh(snap.SnapshotStatus.CACHED, NOW, NOW)
    assert not snap.is_fresh(snap.SnapshotStatus.PENDING, later, NOW)


def test_expiry_is_hours_after_now() -> None:
    assert snap.expires_at(NOW, 24) == NOW + timedelta(hours=24)
    assert snap.expires_at(NOW, -1) == NOW


def test_url_lifetime_never_outlives_the_snapshot() -> None:
    assert snap.url_ttl_sec(900, NOW + timedelta(hours=1), NOW) == 900
    assert snap.url_ttl_sec(900, NOW + timedelta(seconds=60), NOW) == 60
    assert snap.url_ttl_sec(900, NOW - timedelta(seconds=60), NOW) == 1


def test_snapshot_is_free_by_default_and_priced_when_configured() -> None:
    cfg = PricingConfig()
    assert snap.quote_frame(30, cfg).total_minor == 0
    priced = attrs.evolve(cfg, price_type_factor={**cfg.price_type_factor, "Snapshot": 300.0})
    # 10 per second x 1/30 s x High 1.5 x FullHD 1.0 x 300 = 150
    assert snap.quote_frame(30, priced).total_minor == 150


def test_verdict_of_the_live_snapshot_of_a_key() -> None:
    later, earlier = NOW + timedelta(seconds=1), NOW - timedelta(seconds=1)
    S, V = snap.SnapshotStatus, snap.Verdict
    assert snap.verdict(None, None, NOW) is V.MISS
    assert snap.verdict(S.FAILED, later, NOW) is V.MISS
    assert snap.verdict(S.PENDING, earlier, NOW) is V.SHARE  # its job ends it, not the clock
    assert snap.verdict(S.RENDERING, later, NOW) is V.SHARE
    assert snap.verdict(S.CACHED, later, NOW) is V.HIT
    assert snap.verdict(S.CACHED, NOW, NOW) is V.EXPIRED


def test_is_expired_only_for_a_finished_snapshot_past_its_expiry() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    past, future = now - timedelta(seconds=1), now + timedelta(seconds=1)
    S = snap.SnapshotStatus
    assert snap.is_expired(S.CACHED, past, now) and snap.is_expired(S.FAILED, now, now)
    assert not snap.is_expired(S.CACHED, future, now)
    assert not snap.is_expired(S.RENDERING, past, now)  # its job ends it first
    assert not snap.is_expired(S.PENDING, past, now)
