"""``[auth] jwt_audience`` / ``jwt_issuer``: checked when set, and ``mint_token`` carries them."""

from __future__ import annotations

import os
from pathlib import Path
from uuid import uuid4

import attrs
import pytest

from flatrender.cli import main
from flatrender.config import AuthConfig
from flatrender.http.auth import Role, authenticate_token, mint_token
from flatrender.http.errors import ApiError

SECRET = "s" * 32


def refusal(token: str, auth: AuthConfig) -> str:
    with pytest.raises(ApiError) as refused:
        authenticate_token(token, auth)
    assert refused.value.status == 401
    return refused.value.message


def test_without_audience_or_issuer_configured_a_plain_token_passes() -> None:
    user = uuid4()
    principal = authenticate_token(mint_token(SECRET, user), AuthConfig(jwt_secret=SECRET))
    assert (principal.role, principal.user_id) == (Role.USER, user)


def test_a_configured_audience_and_issuer_must_both_match() -> None:
    auth = AuthConfig(jwt_secret=SECRET, jwt_audience="flatrender", jwt_issuer="main-app")
    user = uuid4()
    good = mint_token(SECRET, user, audience="flatrender", issuer="main-app")
    assert authenticate_token(good, auth).user_id == user

    assert "not valid" in refusal(mint_token(SECRET, user), auth)  # neither claim
    assert "audience" in refusal(mint_token(SECRET, user, audience="x", issuer="main-app"), auth)
    assert "issuer" in refusal(mint_token(SECRET, user, audience="flatrender", issuer="x"), auth)
    only_audience = attrs.evolve(auth, jwt_issuer="")
    assert authenticate_token(mint_token(SECRET, user, audience="flatrender"), only_audience)
    assert "not valid" in refusal(mint_token(SECRET, user, issuer="main-app"), only_audience)


def test_flatrender_token_mints_the_configured_audience_and_issuer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("FLATRENDER_"):
            monkeypatch.delenv(name)
    path = tmp_path / "flatrender.toml"
    path.write_text(
        f'[auth]\njwt_secret = "{SECRET}"\njwt_audience = "flatrender"\njwt_issuer = "ops"\n'
    )
    user = uuid4()
    assert main(["token", "--config", str(path), "--user", str(user)]) == 0
    token = capsys.readouterr().out.strip()
    auth = AuthConfig(jwt_secret=SECRET, jwt_audience="flatrender", jwt_issuer="ops")
    assert authenticate_token(token, auth).user_id == user
