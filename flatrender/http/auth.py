"""Who is calling: users by JWT (HS256), services by opaque tokens from configuration.

Users see only what they own; admins and services see everything; node pool administration is
for admins and services; catalog and billing extensions are for services alone (DESIGN §5).
Tokens and secrets are never logged.
"""

from __future__ import annotations

import enum
import hmac
import time
from uuid import UUID

import attrs
import jwt

from flatrender.config import AuthConfig
from flatrender.http.errors import ApiError, forbidden, not_found, unauthorized


class Role(enum.Enum):
    USER = "user"
    ADMIN = "admin"
    SERVICE = "service"


@attrs.frozen
class Principal:
    role: Role
    user_id: UUID | None  # None for a service
    exp: float | None = None  # a user token's expiry (Unix time); None for a service token

    @property
    def is_admin(self) -> bool:
        return self.role in (Role.ADMIN, Role.SERVICE)

    def can_see(self, owner_user_id: UUID) -> bool:
        return self.is_admin or self.user_id == owner_user_id


def authenticate(authorization: str | None, auth: AuthConfig) -> Principal:
    """Resolve an ``Authorization`` header value; every failure is a 401."""
    return authenticate_token(bearer_token(authorization), auth)


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer`` header value; 401 when there is none."""
    if not authorization:
        raise unauthorized("missing Authorization header (Bearer token)")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise unauthorized("the Authorization header must be 'Bearer <token>'")
    return token


def authenticate_token(token: str, auth: AuthConfig) -> Principal:
    try:
        token.encode()
    except UnicodeEncodeError:  # a lone surrogate smuggled into a header or query value
        raise unauthorized("the token is not valid") from None
    if _is_service_token(token, auth.service_tokens):
        return Principal(Role.SERVICE, None)
    return _decode_user(token, auth)


def _is_service_token(token: str, service_tokens: tuple[str, ...]) -> bool:
    supplied = token.encode()
    # Compare against every configured token so timing does not reveal which one nearly matched.
    matched = False
    for candidate in service_tokens:
        matched |= hmac.compare_digest(supplied, candidate.encode())
    return matched


def _decode_user(token: str, auth: AuthConfig) -> Principal:
    """HS256 with ``exp`` and ``sub``; ``aud`` and ``iss`` too when configured (a token minted
    for another service sharing the secret is then refused)."""
    if not auth.jwt_secret:
        raise unauthorized("user tokens are not accepted: no JWT secret is configured")
    required = ["exp", "sub"]
    required += ["aud"] if auth.jwt_audience else []
    required += ["iss"] if auth.jwt_issuer else []
    try:
        claims = jwt.decode(
            token,
            auth.jwt_secret,
            algorithms=["HS256"],
            audience=auth.jwt_audience or None,
            issuer=auth.jwt_issuer or None,
            options={"require": required},
        )
    except jwt.ExpiredSignatureError:
        raise unauthorized("the token has expired") from None
    except jwt.InvalidAudienceError:
        raise unauthorized("the token is not meant for this service (audience)") from None
    except jwt.InvalidIssuerError:
        raise unauthorized("the token's issuer is not trusted") from None
    except jwt.InvalidTokenError:
        raise unauthorized("the token is not valid") from None
    try:
        user_id = UUID(str(claims["sub"]))
    except ValueError:
        raise unauthorized("the token's subject is not a user id") from None
    role_name = claims.get("role", "user")
    if role_name not in ("user", "admin"):
        raise unauthorized("the token's role is unknown")
    return Principal(Role(role_name), user_id, float(claims["exp"]))


def mint_token(
    secret: str,
    user_id: UUID,
    role: str = "user",
    ttl_sec: int = 3600,
    *,
    audience: str = "",
    issuer: str = "",
) -> str:
    """A user JWT, for ``flatrender token`` and for tests; ``aud``/``iss`` only when given."""
    if role not in ("user", "admin"):
        raise ValueError(f"role must be user or admin, not {role!r}")
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": str(user_id),
        "role": role,
        "iat": now,
        "exp": now + ttl_sec,
    }
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm="HS256")


def require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise forbidden("this operation is for administrators")


def require_service(principal: Principal) -> None:
    if principal.role is not Role.SERVICE:
        raise forbidden("this operation needs a service token")


def require_owner(principal: Principal, owner_user_id: UUID, what: str, ident: object) -> None:
    """Someone else's resource is reported as absent, not forbidden: ids do not leak."""
    if not principal.can_see(owner_user_id):
        raise not_found(what, ident)


def acting_user(principal: Principal) -> UUID:
    """The user a request acts for; services and admins without a subject cannot submit."""
    if principal.user_id is None:
        raise ApiError(403, "forbidden", "this operation needs a user token")
    return principal.user_id
