from pathlib import Path

import pytest

from flatrender.config import Config, ConfigError

EXAMPLE = Path(__file__).parent.parent / "config" / "flatrender.example.toml"


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
        '[http]\nport = 9000\n[auth]\nservice_tokens = ["a", "b"]\n[jobs]\nmin_chunk_frames = 12\n',
    )
    config = Config.load(path, {})
    assert config.http.port == 9000
    assert config.auth.service_tokens == ("a", "b")
    assert config.jobs.min_chunk_frames == 12


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[http]\nport = 9000\n")
    env = {
        "FLATRENDER_HTTP_PORT": "9100",
        "FLATRENDER_AUTH_SERVICE_TOKENS": "one, two,three",
        "FLATRENDER_S3_SECURE": "true",
        "FLATRENDER_PRICING_DISCOUNT_CODES": "WELCOME=10,VIP=25",
        "FLATRENDER_NODES_HEARTBEAT_TIMEOUT_SEC": "6",
    }
    config = Config.load(path, env)
    assert config.http.port == 9100
    assert config.auth.service_tokens == ("one", "two", "three")
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
        ("[notify]\nretry_base_sec = 0\n", {}, "[notify] timeout_sec, poll_interval_sec"),
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


def test_redacted_hides_every_secret() -> None:
    config = Config.load(
        None,
        {
            "FLATRENDER_AUTH_JWT_SECRET": "jwt-secret-value",
            "FLATRENDER_AUTH_SERVICE_TOKENS": "svc-token-value",
            "FLATRENDER_AUTH_NODE_MASTER_KEY": "master-key-value",
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
