import typing
from pathlib import Path
from typing import Any

import attrs
import pytest

from flatrender.config import RANGES, Config, ConfigError, S3Config, s3_address

EXAMPLE = Path(__file__).parent.parent / "config" / "flatrender.example.toml"
# Service tokens long enough to be accepted (24 characters and more).
A, B, C = ("svc-" + c * 24 for c in "abc")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "f.toml"
    path.write_text(text)
    return path


def test_defaults_match_design() -> None:
    config = Config.load(None, {})
    assert config.nodes.heartbeat_interval_sec == 5
    assert config.nodes.heartbeat_timeout_sec == 15
    assert config.http.port == 8080


def test_file_values_are_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f'[http]\nport = 9000\n[auth]\nservice_tokens = ["{A}", "{B}"]\n'
        "[jobs]\nmin_chunk_frames = 12\n",
    )
    config = Config.load(path, {})
    assert config.http.port == 9000
    assert config.auth.service_tokens == (A, B)
    assert config.jobs.min_chunk_frames == 12


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[http]\nport = 9000\n")
    env = {
        "FLATRENDER_HTTP_PORT": "9100",
        "FLATRENDER_AUTH_SERVICE_TOKENS": f"{A}, {B},{C}",
        "FLATRENDER_S3_SECURE": "true",
        "FLATRENDER_PRICING_DISCOUNT_CODES": "WELCOME=10,VIP=25",
        "FLATRENDER_NODES_HEARTBEAT_TIMEOUT_SEC": "6",
    }
    config = Config.load(path, env)
    assert config.http.port == 9100
    assert config.auth.service_tokens == (A, B, C)
    assert config.s3.secure is True
    assert config.pricing.discount_codes == {"WELCOME": 10.0, "VIP": 25.0}
    assert config.nodes.heartbeat_timeout_sec == 6


@pytest.mark.parametrize(
    ("text", "env", "names"),
    [
        ("[http]\nport = 'x'\n", {}, "[http] port"),
        ("[http]\nprot = 1\n", {}, "[http] prot"),
        ("[htp]\nport = 1\n", {}, "[htp]"),
        ("", {"FLATRENDER_HTTP_PORT": "eighty"}, "[http] port"),
        ("", {"FLATRENDER_S3_SECURE": "maybe"}, "[s3] secure"),
        ("[nodes]\nheartbeat_timeout_sec = 3\n", {}, "heartbeat_timeout_sec"),
        ("[log]\nlevel = 'LOUD'\n", {}, "[log] level"),
        ("[http]\nport = 70000\n", {}, "[http] port"),
        ("[auth]\nservice_tokens = [1]\n", {}, "[auth] service_tokens"),
        ("[http\n", {}, "not valid TOML"),
        ("[notify]\nwebhook_url = 'ftp://x/y'\n", {}, "[notify] webhook_url"),
        ("[notify]\nretry_base_sec = 0\n", {}, "[notify] retry_base_sec"),
        ("[exports]\ndownload_url_ttl_sec = 604801\n", {}, "[exports] download_url_ttl_sec"),
        ("[exports]\ndownload_url_ttl_sec = 0\n", {}, "[exports] download_url_ttl_sec"),
        ("[s3]\npresign_ttl_sec = 604801\n", {}, "[s3] presign_ttl_sec"),
        ("[s3]\nmax_threads = 0\n", {}, "[s3] max_threads"),
        ("[auth]\nsignature_max_skew_sec = -1\n", {}, "[auth] signature_max_skew_sec"),
        ("[auth]\nsignature_max_skew_sec = 0\n", {}, "[auth] signature_max_skew_sec"),
        ("[auth]\nsignature_max_skew_sec = 86400\n", {}, "[auth] signature_max_skew_sec"),
        ("[nodes]\nheartbeat_interval_sec = 0\n", {}, "[nodes] heartbeat_interval_sec"),
        ("[nodes]\nbusy_heartbeat_interval_sec = 9\n", {}, "busy_heartbeat_interval_sec"),
        ("[jobs]\nmax_chunk_frames = 10\n", {}, "[jobs] max_chunk_frames"),
        ("[jobs]\nsegment_grace_hours = -1\n", {}, "[jobs] segment_grace_hours"),
        ("[database]\npool_min = 5\npool_max = 2\n", {}, "[database] pool_max"),
        ("[snapshots]\nrender_timeout_sec = nan\n", {}, "[snapshots] render_timeout_sec"),
        ("", {"FLATRENDER_HTTP_GRACE_SEC": "inf"}, "[http] grace_sec"),
        ("[snapshots]\nexpiry_hours = 0\n", {}, "[snapshots] expiry_hours"),
        ("[pricing]\nquality_factor = { Low = -1 }\n", {}, "[pricing] quality_factor.Low"),
        ("[pricing]\ndiscount_codes = { BIG = 150 }\n", {}, "[pricing] discount_codes.BIG"),
        ("[exports]\nretention_days = { Free = 0 }\n", {}, "[exports] retention_days.Free"),
        ("[http]\npublic_url = 'example.com'\n", {}, "[http] public_url"),
        ("[auth]\njwt_secret = 'short'\n", {}, "[auth] jwt_secret"),
        ("[auth]\nnode_master_key = '31-bytes-31-bytes-31-bytes-31-b'\n", {}, "node_master_key"),
        ("[auth]\nservice_tokens = ['svc-23-characters-long-']\n", {}, "service_tokens[0]"),
        ("", {"FLATRENDER_AUTH_SERVICE_TOKENS": f"{A},short"}, "[auth] service_tokens[1]"),
        ("[auth]\nservice_tokens = ['svc-with a space-0123456789']\n", {}, "service_tokens[0]"),
        ('[auth]\nservice_tokens = ["svc-with-a-nul-\\u0000-0123456789"]\n', {}, "tokens[0]"),
        ("[s3]\nendpoint = 'http://minio:9000/flatrender'\n", {}, "[s3] endpoint"),
        ("[s3]\nendpoint = 'ftp://minio:9000'\n", {}, "[s3] endpoint"),
        ("[s3]\nendpoint = 'minio:port'\n", {}, "[s3] endpoint"),
    ],
)
def test_bad_value_names_the_key(
    tmp_path: Path, text: str, env: dict[str, str], names: str
) -> None:
    with pytest.raises(ConfigError) as info:
        Config.load(write(tmp_path, text), env)
    assert names in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        Config.load(tmp_path / "absent.toml", {})


def test_serve_requires_secrets() -> None:
    with pytest.raises(ConfigError, match=r"\[auth\] jwt_secret"):
        Config.load(None, {}).require_secrets()
    with pytest.raises(ConfigError, match=r"\[auth\] jwt_secret"):
        Config.load_for_serve(None)


def test_secrets_at_the_minimum_are_accepted() -> None:
    config = Config.from_mapping(
        {
            "auth": {
                "jwt_secret": "j" * 32,
                "node_master_key": "n" * 32,
                "service_tokens": ["s" * 24],
            }
        }
    )
    assert config.auth.service_tokens == ("s" * 24,)


def test_every_numeric_key_has_a_range() -> None:
    """A new number must say which values make sense (RANGES), or it is never checked."""
    ranged = {(section, key) for section, key, _, _ in RANGES}
    numeric = set()
    for section, section_cls in typing.get_type_hints(Config).items():
        for key, hint in typing.get_type_hints(section_cls).items():
            if hint in (int, float):
                numeric.add((section, key))
    assert numeric == ranged
    defaults = Config()
    defaults.validate()  # every default within its range


@pytest.mark.parametrize(
    ("endpoint", "secure", "address"),
    [
        ("minio:9000", False, ("minio:9000", False)),
        ("minio:9000", True, ("minio:9000", True)),
        ("http://minio:9000", True, ("minio:9000", False)),  # the scheme decides
        ("https://s3.example.com", False, ("s3.example.com", True)),
        ("https://s3.example.com/", False, ("s3.example.com", True)),
        ("http://[::1]:9000", False, ("[::1]:9000", False)),
    ],
)
def test_s3_endpoint_is_host_port_or_a_url_whose_scheme_sets_tls(
    endpoint: str, secure: bool, address: tuple[str, bool]
) -> None:
    assert s3_address(S3Config(endpoint=endpoint, secure=secure)) == address
    assert Config.from_mapping({"s3": {"endpoint": endpoint}}).s3.endpoint == endpoint


SECRET = "hunter2"
NUMBER_SECRET = 987654321  # a secret written without quotes is a TOML integer


@pytest.mark.parametrize(
    ("raw", "env", "names"),
    [
        ({"s3": {"endpoint": f"https://key:{SECRET}@s3.example.com"}}, {}, "[s3] endpoint"),
        ({"s3": {"endpoint": f"http://AK:{SECRET}@minio:9000/x"}}, {}, "[s3] endpoint"),
        ({"s3": {"endpoint": f"AK:{SECRET}@minio:9000"}}, {}, "[s3] endpoint"),
        ({"s3": {"endpoint": f"ftp://AK:{SECRET}@minio"}}, {}, "[s3] endpoint"),
        ({"s3": {"endpoint": f"http://AK:{SECRET}/x@minio:9000"}}, {}, "[s3] endpoint"),
        ({"s3": {"endpoint": f"AK:{SECRET}"}}, {}, "[s3] endpoint"),
        ({"s3": {"endpoint": f"{SECRET}://minio"}}, {}, "[s3] endpoint"),
        ({"s3": {"endpoint": f"http://minio:9000/{SECRET}"}}, {}, "[s3] endpoint"),
        ({"s3": {"endpoint": NUMBER_SECRET}}, {}, "[s3] endpoint"),
        ({"s3": {"access_key": NUMBER_SECRET}}, {}, "[s3] access_key"),
        ({"s3": {"secret_key": NUMBER_SECRET}}, {}, "[s3] secret_key"),
        ({"auth": {"jwt_secret": SECRET}}, {}, "[auth] jwt_secret"),
        ({"auth": {"jwt_secret": NUMBER_SECRET}}, {}, "[auth] jwt_secret"),
        ({"auth": {"node_master_key": SECRET}}, {}, "[auth] node_master_key"),
        ({"auth": {"node_master_key": NUMBER_SECRET}}, {}, "[auth] node_master_key"),
        ({"auth": {"service_tokens": [SECRET]}}, {}, "[auth] service_tokens[0]"),
        ({"auth": {"service_tokens": [f"{SECRET} " * 4]}}, {}, "[auth] service_tokens[0]"),
        ({"auth": {"service_tokens": [NUMBER_SECRET]}}, {}, "[auth] service_tokens"),
        ({}, {"FLATRENDER_AUTH_SERVICE_TOKENS": f"{A},{SECRET}"}, "[auth] service_tokens[1]"),
        ({"database": {"url": NUMBER_SECRET}}, {}, "[database] url"),
        ({"notify": {"secret": NUMBER_SECRET}}, {}, "[notify] secret"),
        ({"notify": {"webhook_url": f"ftp://u:{SECRET}@hooks.example"}}, {}, "webhook_url"),
        ({"notify": {"webhook_url": NUMBER_SECRET}}, {}, "[notify] webhook_url"),
    ],
)
def test_a_refused_secret_is_named_never_repeated(
    raw: dict[str, Any], env: dict[str, str], names: str
) -> None:
    """The message is logged at start and on reload: it names the key and the rule only."""
    with pytest.raises(ConfigError) as info:
        Config.from_mapping(raw, env)
    assert names in str(info.value)
    assert SECRET not in str(info.value)
    assert str(NUMBER_SECRET) not in str(info.value)


def test_range_bounds_are_inclusive() -> None:
    week = Config.from_mapping({"exports": {"download_url_ttl_sec": 7 * 24 * 3600}})
    assert week.exports.download_url_ttl_sec == 604800
    assert attrs.evolve(week.auth, signature_max_skew_sec=1).signature_max_skew_sec == 1
    Config.from_mapping({"auth": {"signature_max_skew_sec": 3600}})


def test_redacted_hides_every_secret() -> None:
    config = Config.load(
        None,
        {
            "FLATRENDER_AUTH_JWT_SECRET": "jwt-secret-value-0123456789abcdef",
            "FLATRENDER_AUTH_SERVICE_TOKENS": "svc-token-value-0123456789",
            "FLATRENDER_AUTH_NODE_MASTER_KEY": "master-key-value-0123456789abcdef",
            "FLATRENDER_S3_SECRET_KEY": "s3-secret-value",
            "FLATRENDER_DATABASE_URL": "postgresql://u:pw-value@h/db",
            "FLATRENDER_NOTIFY_SECRET": "hook-secret-value",
            "FLATRENDER_NOTIFY_WEBHOOK_URL": "https://hooks.example/t/hook-token-value",
        },
    )
    text = repr(config.redacted())
    for secret in (
        "jwt-secret-value",
        "svc-token-value",
        "master-key-value",
        "s3-secret-value",
        "pw-value",
        "hook-secret-value",
        "hook-token-value",
    ):
        assert secret not in text


def test_example_file_loads_and_documents_every_key() -> None:
    config = Config.load(EXAMPLE, {})
    text = EXAMPLE.read_text()
    for section, values in config.redacted().items():
        assert f"[{section}]" in text
        for key in values:
            assert f"{key} =" in text or f"# {key} =" in text, f"[{section}] {key} undocumented"
