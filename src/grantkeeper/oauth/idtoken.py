"""ID token validation (OpenID Connect Core 3.1.3.7) with joserfc."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from grantkeeper.errors import InvalidIdToken
from grantkeeper.oauth.jwsverify import JwsFailure, verify_jwt

__all__ = ["ALLOWED_ALGS", "validate_id_token"]

# asymmetric algorithms only: never "none", never HMAC with a guessable key
ALLOWED_ALGS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)


async def validate_id_token(
    id_token: str,
    *,
    issuers: tuple[str, ...],
    client_id: str,
    nonce: str | None,
    now: float,
    jwks: Callable[[bool], Awaitable[dict[str, Any]]],
    leeway: int = 60,
) -> dict[str, Any]:
    """Return the verified claims or raise ``InvalidIdToken`` (the reason is kept vague on purpose)."""
    try:
        claims = await verify_jwt(id_token, jwks, algorithms=ALLOWED_ALGS)
    except JwsFailure as exc:
        if exc.malformed:
            raise InvalidIdToken("malformed ID token") from None
        if exc.algorithm:
            raise InvalidIdToken("ID token signed with a disallowed algorithm") from None
        raise InvalidIdToken("ID token signature does not verify") from None
    if claims.get("iss") not in issuers:
        raise InvalidIdToken("ID token issuer mismatch")
    aud = claims.get("aud")
    auds = aud if isinstance(aud, list) else [aud]
    if client_id not in auds:
        raise InvalidIdToken("ID token audience mismatch")
    azp = claims.get("azp")
    if (len(auds) > 1 and azp is None) or (azp is not None and azp != client_id):
        raise InvalidIdToken("ID token authorized party mismatch")
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, int | float) or exp + leeway < now:
        raise InvalidIdToken("ID token expired")
    if not isinstance(iat, int | float) or iat - leeway > now:
        raise InvalidIdToken("ID token issued in the future")
    if nonce is not None and claims.get("nonce") != nonce:
        raise InvalidIdToken("ID token nonce mismatch")
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise InvalidIdToken("ID token has no subject")
    return claims
