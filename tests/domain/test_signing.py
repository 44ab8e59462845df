from uuid import UUID

from flatrender.domain.signing import node_secret, parse_header, sign, verify

NODE = UUID("00000000-0000-0000-0000-0000000000aa")


def test_node_secret_is_hex_hmac_of_node_id() -> None:
    import hashlib
    import hmac

    expected = hmac.new(b"master", str(NODE).encode(), hashlib.sha256).hexdigest()
    assert node_secret("master", NODE) == expected


def test_signature_round_trip() -> None:
    secret = node_secret("master", NODE)
    header = sign(secret, 1000, "post", "/v1/internal/nodes/x/heartbeat", b"{}")
    assert verify(secret, header, "POST", "/v1/internal/nodes/x/heartbeat", b"{}", 1000, 300)


def test_tampered_body_path_method_or_secret_fail() -> None:
    secret = node_secret("master", NODE)
    header = sign(secret, 1000, "POST", "/v1/a", b"{}")
    assert not verify(secret, header, "POST", "/v1/a", b"{ }", 1000, 300)
    assert not verify(secret, header, "POST", "/v1/b", b"{}", 1000, 300)
    assert not verify(secret, header, "PUT", "/v1/a", b"{}", 1000, 300)
    assert not verify(node_secret("other", NODE), header, "POST", "/v1/a", b"{}", 1000, 300)


def test_stale_timestamp_fails_either_way() -> None:
    secret = node_secret("master", NODE)
    header = sign(secret, 1000, "POST", "/v1/a", b"")
    assert verify(secret, header, "POST", "/v1/a", b"", 1300, 300)
    assert not verify(secret, header, "POST", "/v1/a", b"", 1301, 300)
    assert not verify(secret, header, "POST", "/v1/a", b"", 699, 300)


def test_malformed_headers_are_rejected() -> None:
    for value in ("", "t=abc,v1=00", "v1=00", "t=1", "garbage"):
        assert parse_header(value) is None or not verify("s", value, "GET", "/v1/a", b"", 1, 300)
