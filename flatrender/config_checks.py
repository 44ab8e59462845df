"""The rules a configuration must satisfy, apart from its shape (which ``config`` parses).

Start-up and every reload run :func:`validate` alike. A refused value is named by its key and the
rule it breaks; a message never repeats the value of a key that may hold a credential
(:data:`SECRET_KEYS`, ``[s3] endpoint``), since it is logged on start and on reload.
"""

from __future__ import annotations

import urllib.parse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flatrender.config import Config, S3Config

# Secrets below these lengths are refused at start and on reload: a short HMAC key (JWTs, node
# secrets) can be searched, a short bearer token guessed (RFC 7518 §3.2 asks 32 bytes of HS256).
MIN_SECRET_BYTES = 32
MIN_SERVICE_TOKEN_CHARS = 24
# The S3 signature v4 limit on a presigned url's lifetime.
MAX_PRESIGN_TTL_SEC = 7 * 24 * 3600

# Keys masked in logs (Config.redacted) and never repeated in an error message.
SECRET_KEYS = (
    ("auth", "jwt_secret"),
    ("auth", "service_tokens"),
    ("auth", "node_master_key"),
    ("s3", "secret_key"),
    ("database", "url"),
    ("notify", "secret"),
    ("notify", "webhook_url"),  # a webhook url often carries its own token
)
# Not masked in logs once accepted (an accepted endpoint holds no credentials, an access key is
# the name of one), but a refused value may be a pasted secret: not repeated in errors either.
UNECHOED_KEYS = (*SECRET_KEYS, ("s3", "endpoint"), ("s3", "access_key"))


class ConfigError(Exception):
    """A configuration file or value that cannot be used; the message names the key."""


_DAY = 24 * 3600
# (section, key, lowest, highest) of every number, both ends allowed. A value outside makes no
# sense (a zero timeout, a negative price) or would overflow what it feeds (a column, a timer).
# Floats that must be positive start at a millisecond's worth. tests/test_config.py checks that
# every numeric key is listed here.
RANGES: tuple[tuple[str, str, float, float], ...] = (
    ("http", "port", 0, 65535),  # 0: any free port (tests)
    ("http", "grace_sec", 0, 3600),
    ("database", "pool_min", 0, 1000),
    ("database", "pool_max", 1, 1000),
    ("s3", "presign_ttl_sec", 1, MAX_PRESIGN_TTL_SEC),
    ("s3", "max_threads", 1, 256),
    ("auth", "signature_max_skew_sec", 1, 3600),
    ("nodes", "heartbeat_interval_sec", 1, 3600),
    ("nodes", "heartbeat_timeout_sec", 2, _DAY),
    ("nodes", "busy_heartbeat_interval_sec", 1, 3600),
    ("nodes", "max_consecutive_failures", 1, 1000),
    ("nodes", "crash_window_sec", 1, 30 * _DAY),
    ("nodes", "max_heartbeats_per_sec", 0, 1_000_000),  # 0: no load shedding
    ("nodes", "crash_restart_after", 1, 1000),
    ("nodes", "health_retention_days", 1, 3650),
    ("jobs", "min_chunk_frames", 1, 1_000_000),
    ("jobs", "max_attempts", 1, 100),
    ("jobs", "trim_min_tail_frames", 0, 1_000_000),
    ("jobs", "max_chunk_frames", 1, 1_000_000),
    ("jobs", "trim_margin_frames", 0, 1_000_000),
    ("jobs", "segment_grace_hours", 0, 24 * 3650),
    ("jobs", "replica_grace_days", 0, 3650),
    ("pricing", "base_per_second_minor", 0, 1_000_000_000),
    ("pricing", "fps60_factor", 0, 1000),
    ("pricing", "support_tip_minor", 0, 1_000_000_000),
    ("pricing", "export_extend_per_day_minor", 0, 1_000_000_000),
    ("exports", "default_retention_days", 1, 3650),
    ("exports", "download_url_ttl_sec", 1, MAX_PRESIGN_TTL_SEC),
    ("exports", "reap_batch_size", 1, 100_000),
    ("snapshots", "expiry_hours", 1, 24 * 3650),
    ("snapshots", "render_timeout_sec", 0.001, 30 * _DAY),
    ("snapshots", "max_live_per_user", 1, 1000),
    ("notify", "max_attempts", 1, 1000),
    ("notify", "timeout_sec", 0.001, 3600),
    ("notify", "poll_interval_sec", 0.001, 3600),
    ("notify", "retry_base_sec", 0.001, _DAY),
    ("notify", "retry_max_sec", 0.001, 30 * _DAY),
    ("updates", "stage1_fraction", 0.001, 1),
    ("updates", "observe_sec", 0, 30 * _DAY),
    ("updates", "crash_rate_factor", 0.001, 1000),
    ("updates", "min_crash_rate_per_hour", 0, 1_000_000),
    ("updates", "min_crashes", 0, 1_000_000),
    ("updates", "confirm_timeout_sec", 1, 30 * _DAY),
    ("updates", "tick_sec", 0.001, 3600),
)
# Tables of multipliers: none may be negative (a negative price, a refund on submit).
MAPPINGS_OF_FACTORS = (
    ("pricing", "quality_factor"),
    ("pricing", "resolution_factor"),
    ("pricing", "price_type_factor"),
)


def validate(config: Config) -> None:
    """Every check a value can fail, alone or with others."""
    for section, key, low, high in RANGES:
        value = getattr(getattr(config, section), key)
        if not low <= value <= high:
            raise ConfigError(f"[{section}] {key}: {value} is outside {low}..{high}")
    for section, key in MAPPINGS_OF_FACTORS:
        for name, value in getattr(getattr(config, section), key).items():
            if value < 0:
                raise ConfigError(f"[{section}] {key}.{name}: {value} is negative")
    for code, percent in config.pricing.discount_codes.items():
        if not 0 < percent <= 100:
            raise ConfigError(f"[pricing] discount_codes.{code}: {percent} is outside (0, 100]")
    for name, days in config.exports.retention_days.items():
        if days < 1:
            raise ConfigError(f"[exports] retention_days.{name}: {days} is less than a day")
    if config.nodes.heartbeat_timeout_sec <= config.nodes.heartbeat_interval_sec:
        raise ConfigError(
            "[nodes] heartbeat_timeout_sec: must be longer than heartbeat_interval_sec"
        )
    if config.nodes.busy_heartbeat_interval_sec > config.nodes.heartbeat_interval_sec:
        raise ConfigError(
            "[nodes] busy_heartbeat_interval_sec: must not exceed heartbeat_interval_sec"
        )
    if config.jobs.max_chunk_frames < config.jobs.min_chunk_frames:
        raise ConfigError("[jobs] max_chunk_frames: must be at least min_chunk_frames")
    if config.database.pool_max < config.database.pool_min:
        raise ConfigError("[database] pool_max: must be at least pool_min")
    if config.notify.retry_max_sec < config.notify.retry_base_sec:
        raise ConfigError("[notify] retry_max_sec: must be at least retry_base_sec")
    if config.log.level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ConfigError(f"[log] level: unknown level {config.log.level!r}")
    if config.log.format not in {"text", "json"}:
        raise ConfigError(f'[log] format: must be "text" or "json", not {config.log.format!r}')
    for section, key, url in (
        ("notify", "webhook_url", config.notify.webhook_url),
        ("http", "public_url", config.http.public_url),
    ):
        if url and not url.startswith(("http://", "https://")):
            raise ConfigError(f"[{section}] {key}: must be an http:// or https:// url")
    if len(config.s3.bucket) < 3:
        raise ConfigError("[s3] bucket: needs at least 3 characters")
    s3_address(config.s3)
    _validate_secrets(config)


def _validate_secrets(config: Config) -> None:
    """Secrets that are set must be strong enough; whether they must be set is
    :func:`require_secrets`'s business (``dev`` generates its own)."""
    for key, value in (
        ("jwt_secret", config.auth.jwt_secret),
        ("node_master_key", config.auth.node_master_key),
    ):
        if value and len(value.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(f"[auth] {key}: must be at least {MIN_SECRET_BYTES} bytes")
    for index, token in enumerate(config.auth.service_tokens):
        where = f"[auth] service_tokens[{index}]"
        if len(token) < MIN_SERVICE_TOKEN_CHARS:
            raise ConfigError(f"{where}: must be at least {MIN_SERVICE_TOKEN_CHARS} characters")
        if any(c.isspace() or c == "\0" for c in token):
            raise ConfigError(f"{where}: must not hold whitespace or NUL")


def require_secrets(config: Config) -> None:
    """What ``serve`` cannot run without; ``dev`` generates its own."""
    for key, value in (
        ("[auth] jwt_secret", config.auth.jwt_secret),
        ("[auth] node_master_key", config.auth.node_master_key),
        ("[database] url", config.database.url),
        ("[s3] endpoint", config.s3.endpoint),
    ):
        if not value:
            raise ConfigError(f"{key}: must be set")


def s3_address(s3: S3Config) -> tuple[str, bool]:
    """``[s3] endpoint`` as the minio client takes it, ``host[:port]``, and whether to use TLS.

    Accepts ``host:port`` (TLS from ``[s3] secure``) or an ``http://`` / ``https://`` url, whose
    scheme decides; a url's path, query or credentials are refused (the bucket is its own key).
    Credentials are looked for first, and no message repeats the endpoint: it may hold them.
    """
    endpoint = s3.endpoint.strip()
    if "@" in endpoint:
        raise ConfigError(
            "[s3] endpoint: must not hold credentials (they go in access_key, secret_key)"
        )
    scheme, has_scheme, _ = endpoint.partition("://")
    try:
        url = urllib.parse.urlsplit(endpoint if has_scheme else "//" + endpoint)
        _ = url.port  # a port that is not a number raises
    except ValueError:
        raise ConfigError(
            "[s3] endpoint: must be host:port or an http(s) url, with a numeric port"
        ) from None
    if has_scheme and scheme not in ("http", "https"):
        raise ConfigError("[s3] endpoint: the scheme must be http or https")
    if url.path not in ("", "/") or url.query or url.fragment:
        raise ConfigError("[s3] endpoint: must name only the server, no path or query (see bucket)")
    if endpoint and not url.hostname:
        raise ConfigError("[s3] endpoint: must name a host")
    return url.netloc, scheme == "https" if has_scheme else s3.secure
