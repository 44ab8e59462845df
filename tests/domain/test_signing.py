import hashlib
import hmac
from uuid import UUID

import pytest

from flatrender.domain.signing import (
    Signed,
    Signer,
    node_secret,
    parse,
    sign,
    signature,
    verify,
)

NODE = UUID("00000000-0000-0000-0000-0000000000aa")
V1 = "ab" * 32


def test_node_secret_is_hex_hmac_of_node_id() -> None:
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


def test_a_well_formed_header_parses_to_its_time_and_mac() -> None:
    assert parse(f"t=1700000000,v1={V1}") == Signed(1700000000, V1)
    assert parse(f"v1={V1},t=1700000000") == Signed(1700000000, V1)
    assert parse(f"t=1700000000, v1={V1}") == Signed(1700000000, V1)
    assert parse(f"t=999999999999,v1={V1}") == Signed(999_999_999_999, V1)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        "t=1",
        f"v1={V1}",
        "t=abc,v1=00",
        f"t=1{'0' * 400},v1=x",  # issue 10: an OverflowError once
        f"t=1{'0' * 400},v1={V1}",
        f"t=1234567890123,v1={V1}",  # 13 digits
        f"t=-5,v1={V1}",
        f"t=+5,v1={V1}",
        f"t=1_000,v1={V1}",
        f"t= 5,v1={V1}",
        f"t=١٢٣,v1={V1}",  # digits, but not ASCII ones
        f"t=1.5,v1={V1}",
        f"t=,v1={V1}",
        "t=1,v1=",
        "t=1,v1=x",
        f"t=1,v1={V1[:-1]}",  # 63 hex digits
        f"t=1,v1={V1}0",  # 65
        f"t=1,v1={V1.upper()}",
        f"t=1,v1={'g' * 64}",
        f"t=1,v1={V1[:-1]}\x00",
        f"t=1\x00,v1={V1}",
        f"t=1,t=1,v1={V1}",
        f"t=1,v1={V1},v1={V1}",
        f"t=1,v1={V1},",
        f",t=1,v1={V1}",
        f"t=1,,v1={V1}",
        f"t=1,v1={V1},v0=ab",
        f"t=1,v1={V1},x",
        f"t=1;v1={V1}",
        f"t=1,v1={V1}" + " " * 200,
    ],
)
def test_a_malformed_header_parses_to_none(value: str) -> None:
    assert parse(value) is None
    assert not verify("s", value, "POST", "/v1/a", b"", 1, 300)


def test_a_huge_time_is_refused_without_arithmetic_errors() -> None:
    # The largest time the header admits is still far outside any skew, and plain arithmetic.
    secret = node_secret("master", NODE)
    header = f"t=999999999999,v1={signature(secret, 999_999_999_999, 'POST', '/v1/a', b'')}"
    assert not verify(secret, header, "POST", "/v1/a", b"", 1_700_000_000, 300)


def test_a_signer_never_signs_the_same_request_alike_twice() -> None:
    now = [1000.2]
    signer = Signer("secret", clock=lambda: now[0])
    first = signer.header("POST", "/v1/a", b"{}")
    assert first == sign("secret", 1000, "POST", "/v1/a", b"{}")
    # The same request again within the second: dated a second on, still verifiable.
    second = signer.header("POST", "/v1/a", b"{}")
    assert parse(second) == Signed(1001, signature("secret", 1001, "POST", "/v1/a", b"{}"))
    # Another request keeps the current second.
    assert parse(signer.header("POST", "/v1/a", b"[]")).t == 1000  # type: ignore[union-attr]
    now[0] = 1001.0
    assert parse(signer.header("POST", "/v1/a", b"{}")).t == 1002  # type: ignore[union-attr]
    now[0] = 1005.0
    assert signer.header("POST", "/v1/a", b"{}") == sign("secret", 1005, "POST", "/v1/a", b"{}")
    assert list(signer._sent) == [1005]  # only this second and later are remembered
