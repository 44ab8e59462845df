"""One frozen configuration object: defaults in code, a TOML file, environment overrides.

Every key ``[section] key`` may be overridden by ``FLATRENDER_<SECTION>_<KEY>`` (upper case).
List values are comma-separated text in the environment, mappings are ``name=value`` pairs
separated by commas. A bad file or value raises :class:`ConfigError` with one line naming the key.
"""

from __future__ import annotations

import math
import os
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from flatrender import config_checks

# The rules live in config_checks; these names stay importable from here, where callers look.
from flatrender.config_checks import MAX_PRESIGN_TTL_SEC as MAX_PRESIGN_TTL_SEC
from flatrender.config_checks import RANGES as RANGES
from flatrender.config_checks import SECRET_KEYS, UNECHOED_KEYS
from flatrender.config_checks import ConfigError as ConfigError
from flatrender.config_checks import s3_address as s3_address

ENV_PREFIX = "FLATRENDER_"


@attrs.frozen
class HttpConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    # Seconds SIGTERM waits for in-flight requests and messages before the process exits.
    grace_sec: float = 10.0
    # Public base URL of the API, used in links handed to people (empty: derived from host/port).
    public_url: str = ""


@attrs.frozen
class DatabaseConfig:
    url: str = ""
    pool_min: int = 2
    pool_max: int = 10


@attrs.frozen
class S3Config:
    endpoint: str = ""
    access_key: str = ""
    secret_key: str = ""
    bucket: str = "flatrender"
    region: str = "us-east-1"
    secure: bool = False
    # Lifetime of presigned upload and download urls.
    presign_ttl_sec: int = 900
    # Threads the minio client may use at once.
    max_threads: int = 8


@attrs.frozen
class AuthConfig:
    jwt_secret: str = ""
    service_tokens: tuple[str, ...] = ()
    node_master_key: str = ""
    # A node signature whose timestamp is further than this from now is refused.
    signature_max_skew_sec: int = 300
    # When set, a user JWT must carry this ``aud`` / ``iss`` (``flatrender token`` adds them).
    jwt_audience: str = ""
    jwt_issuer: str = ""


@attrs.frozen
class NodesConfig:
    heartbeat_interval_sec: int = 5
    heartbeat_timeout_sec: int = 15
    # Shorter heartbeat interval handed to a node while work waits for it.
    busy_heartbeat_interval_sec: int = 1
    max_consecutive_failures: int = 3
    crash_window_sec: int = 600
    # Heartbeats per second the daemon answers comfortably (bench/heartbeats measured ~1,500 on
    # one core); a larger fleet is asked to heartbeat less often. 0 disables shedding.
    max_heartbeats_per_sec: float = 1200.0
    # Crashes of one node within crash_window_sec (this one included) that make it RestartNode.
    crash_restart_after: int = 3
    health_retention_days: int = 7


@attrs.frozen
class JobsConfig:
    min_chunk_frames: int = 30
    max_attempts: int = 3
    # Fraction of a range left unstarted before a late idle node may take its tail.
    trim_min_tail_frames: int = 60
    # A range is longer only when min_chunk_frames forces it: a dead node loses little work.
    max_chunk_frames: int = 300
    # A trimmed range's holder keeps at least this many frames past the one it is rendering.
    trim_margin_frames: int = 5
    # The Reaper deletes a finished job's segments this long after it ended, and a replica once
    # no job of its project version ran for replica_grace_days.
    segment_grace_hours: int = 24
    replica_grace_days: int = 7


@attrs.frozen
class PricingConfig:
    currency: str = "USD"
    # Minor units per second of output at Medium quality and FullHD.
    base_per_second_minor: int = 10
    quality_factor: Mapping[str, float] = attrs.field(
        factory=lambda: {"Low": 0.5, "Medium": 1.0, "High": 1.5, "Full": 2.0, "Lossless": 3.0}
    )
    resolution_factor: Mapping[str, float] = attrs.field(
        factory=lambda: {"HD": 0.75, "FullHD": 1.0, "TwoK": 1.5, "FourK": 2.5}
    )
    fps60_factor: float = 1.5
    price_type_factor: Mapping[str, float] = attrs.field(
        factory=lambda: {
            "Cash": 1.0,
            "Plan": 1.0,
            "Reseller": 0.8,
            "Preview": 0.25,
            "Free": 0.0,
            "Snapshot": 0.0,
        }
    )
    support_tip_minor: int = 100
    # Discount code -> percentage off, applied once per user and code.
    discount_codes: Mapping[str, float] = attrs.field(factory=dict)
    export_extend_per_day_minor: int = 5


@attrs.frozen
class ExportsConfig:
    # Days an export is kept, by price type; others use default_retention_days.
    default_retention_days: int = 30
    retention_days: Mapping[str, float] = attrs.field(
        factory=lambda: {"Free": 3, "Preview": 3, "Cash": 30, "Plan": 30, "Reseller": 90}
    )
    download_url_ttl_sec: int = 900
    # Exports the Reaper deletes per transaction (it runs batches until none is due).
    reap_batch_size: int = 100


@attrs.frozen
class SnapshotsConfig:
    expiry_hours: int = 24
    # A snapshot not cached this long after its request (no compatible node, every node in
    # maintenance, ...) fails through its job's actor: refunded, and the key free to render again.
    render_timeout_sec: float = 600.0
    # Snapshot jobs one user may have live (not yet ended) at once; a request beyond it is 429.
    max_live_per_user: int = 5


@attrs.frozen
class NotifyConfig:
    webhook_url: str = ""
    max_attempts: int = 8
    secret: str = ""
    timeout_sec: float = 10.0
    poll_interval_sec: float = 5.0
    retry_base_sec: float = 10.0
    retry_max_sec: float = 3600.0


@attrs.frozen
class UpdatesConfig:
    """Staged rollout of node software updates (see ``flatrender.domain.rollout``)."""

    # The first stage updates this share of the chosen nodes (at least one); each next doubles.
    stage1_fraction: float = 0.1
    # A stage advances this long after its last confirmation, if nothing halted it.
    observe_sec: int = 300
    # Halt when updated nodes crash more than this many times as often as the rest ...
    crash_rate_factor: float = 2.0
    # ... and at least this often (crashes per node-hour), with at least min_crashes crashes.
    min_crash_rate_per_hour: float = 1.0
    min_crashes: int = 2
    # A node that has not confirmed the new version this long after the command halts the rollout.
    confirm_timeout_sec: int = 1800
    # Seconds between two rounds of the rollout actor.
    tick_sec: float = 2.0


@attrs.frozen
class LogConfig:
    level: str = "INFO"
    # "text": one readable line per event; "json": one JSON object per line (journald, Loki).
    format: str = "text"


@attrs.frozen
class Config:
    http: HttpConfig = attrs.field(factory=HttpConfig)
    database: DatabaseConfig = attrs.field(factory=DatabaseConfig)
    s3: S3Config = attrs.field(factory=S3Config)
    auth: AuthConfig = attrs.field(factory=AuthConfig)
    nodes: NodesConfig = attrs.field(factory=NodesConfig)
    jobs: JobsConfig = attrs.field(factory=JobsConfig)
    pricing: PricingConfig = attrs.field(factory=PricingConfig)
    exports: ExportsConfig = attrs.field(factory=ExportsConfig)
    snapshots: SnapshotsConfig = attrs.field(factory=SnapshotsConfig)
    notify: NotifyConfig = attrs.field(factory=NotifyConfig)
    updates: UpdatesConfig = attrs.field(factory=UpdatesConfig)
    log: LogConfig = attrs.field(factory=LogConfig)

    @classmethod
    def load(cls, path: Path | str | None, env: Mapping[str, str] | None = None) -> Config:
        """Defaults, then the TOML file (if given), then ``FLATRENDER_*`` variables."""
        raw: dict[str, Any] = {}
        if path is not None:
            try:
                with open(path, "rb") as f:
                    raw = tomllib.load(f)
            except OSError as e:
                raise ConfigError(f"cannot read configuration file {path}: {e.strerror}") from e
            except tomllib.TOMLDecodeError as e:
                raise ConfigError(f"configuration file {path} is not valid TOML: {e}") from e
        return cls.from_mapping(raw, os.environ if env is None else env)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
        env = env or {}
        sections: dict[str, Any] = {}
        hints = typing.get_type_hints(cls)
        for name in raw:
            if name not in hints:
                raise ConfigError(f"[{name}]: unknown section")
        for name, section_cls in hints.items():
            values = raw.get(name, {})
            if not isinstance(values, Mapping):
                raise ConfigError(f"[{name}]: must be a table")
            sections[name] = _load_section(name, section_cls, values, env)
        config = cls(**sections)
        config.validate()
        return config

    def validate(self) -> None:
        """Every check a value can fail, alone or with others: start-up and reload run the same."""
        config_checks.validate(self)

    def require_secrets(self) -> None:
        """``serve`` needs real secrets (checked at start and on every reload); ``dev``
        generates its own."""
        config_checks.require_secrets(self)

    @classmethod
    def load_for_serve(cls, path: Path | str | None) -> Config:
        """What ``serve`` runs with, at start and on SIGHUP alike: loaded, validated, complete."""
        config = cls.load(path)
        config.require_secrets()
        return config

    def redacted(self) -> dict[str, Any]:
        """The configuration as plain data with every secret masked, for logs."""
        data = attrs.asdict(self, recurse=True)
        for section, key in SECRET_KEYS:
            value = data[section][key]
            if value:
                data[section][key] = ["***"] * len(value) if isinstance(value, tuple) else "***"
        return data


def _load_section(
    section: str, section_cls: type, values: Mapping[str, Any], env: Mapping[str, str]
) -> Any:
    hints = typing.get_type_hints(section_cls)
    names = {f.name for f in attrs.fields(section_cls)}
    for key in values:
        if key not in names:
            raise ConfigError(f"[{section}] {key}: unknown key")
    kwargs: dict[str, Any] = {}
    for name in names:
        where = f"[{section}] {name}"
        secret = (section, name) in UNECHOED_KEYS
        env_name = f"{ENV_PREFIX}{section}_{name}".upper()
        if env_name in env:
            kwargs[name] = _from_env(where, env_name, hints[name], env[env_name], secret)
        elif name in values:
            kwargs[name] = _from_toml(where, hints[name], values[name], secret)
    return section_cls(**kwargs)


def _from_toml(where: str, hint: Any, value: Any, secret: bool) -> Any:
    origin = typing.get_origin(hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {_shown(value, secret)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {_shown(value, secret)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {_shown(value, secret)}")
        return _finite(where, float(value))
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {_shown(value, secret)}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            return _split_list(value)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings")
        return tuple(value)
    if origin is not None and issubclass(origin, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table")
        out: dict[str, float] = {}
        for k, v in value.items():
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ConfigError(f"{where}.{k}: expected a number, got {_shown(v, secret)}")
            out[str(k)] = _finite(f"{where}.{k}", float(v))
        return out
    raise ConfigError(f"{where}: unsupported type {hint!r}")  # pragma: no cover


def _from_env(where: str, env_name: str, hint: Any, text: str, secret: bool) -> Any:
    try:
        if hint is bool:
            lowered = text.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError(text)
        if hint is int:
            return int(text)
        if hint is float:
            return _finite(where, float(text))
        if hint is str:
            return text
        if typing.get_origin(hint) is tuple:
            return _split_list(text)
        return _parse_pairs(text)
    except ValueError:
        raise ConfigError(f"{where} (from {env_name}): cannot use {_shown(text, secret)}") from None


def _shown(value: Any, secret: bool) -> str:
    """A refused value as an error message may show it: a key that may hold a credential
    (config_checks.UNECHOED_KEYS) shows only the kind of value, the message being logged."""
    return f"a value of type {type(value).__name__}" if secret else repr(value)


def _split_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _parse_pairs(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in _split_list(text):
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(part)
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(part)
        out[key.strip()] = number
    return out


def _finite(where: str, value: float) -> float:
    if not math.isfinite(value):
        raise ConfigError(f"{where}: {value} is not a finite number")
    return value
