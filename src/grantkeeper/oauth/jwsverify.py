"""Verify a compact JWT against a JWKS: one place for the rules of RFC 8725.

ID tokens (OpenID Connect), Security Event Tokens (RISC / CAEP) and the subject tokens
of token exchange all come down to the same check: a listed asymmetric algorithm, no
critical header we do not understand, a key chosen by ``kid`` whose own ``alg`` and
``use`` (when it declares them) agree with the token, and one refetch of the key set
when nothing verifies (the issuer may have rotated its keys). The callers keep their
own claim rules and their own error types.
"""

from __future__ import annotations

import warnings
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import KeySet

__all__ = ["JwksSource", "JwsFailure", "verify_jwt"]

#: the key set of the issuer; ``True`` asks for a fresh copy (after a failed verification)
JwksSource = Callable[[bool], Awaitable[Mapping[str, Any]]]


class JwsFailure(Exception):
    """The token was not verified. ``malformed`` tells a token that is not a JWT at all
    apart from one that is well formed but not trusted; ``reason`` is safe to log."""

    def __init__(self, reason: str, *, malformed: bool = False, algorithm: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.malformed = malformed
        self.algorithm = algorithm


def _candidates(doc: Mapping[str, Any], kid: str | None, alg: str) -> list[dict[str, Any]]:
    keys = doc.get("keys")
    if not isinstance(keys, list):
        return []
    out = [k for k in keys if isinstance(k, dict)]
    if kid is not None:
        out = [k for k in out if k.get("kid") == kid]
    # a key that declares its algorithm is used with that algorithm only (RFC 8725 3.1)
    return [k for k in out if k.get("alg") in (None, alg) and k.get("use") in (None, "sig")]


def _decode(token: str, key: dict[str, Any], alg: str) -> dict[str, Any] | None:
    try:
        with warnings.catch_warnings():
            # joserfc flags "EdDSA" as superseded by RFC 9864's fully specified names; it
            # stays allowed where a caller lists it (Ed25519 keys only, via the JWK)
            warnings.simplefilter("ignore", SecurityWarning)
            decoded = jwt.decode(token, KeySet.import_key_set({"keys": [key]}), algorithms=[alg])
    except (JoseError, ValueError, TypeError):
        return None
    return dict(decoded.claims)


async def verify_jwt(
    token: str,
    jwks: JwksSource,
    *,
    algorithms: Collection[str],
    refetch: bool = True,
) -> dict[str, Any]:
    """Return the claims of ``token`` once its signature verifies, else raise ``JwsFailure``.

    Only the signature and the header are checked here; ``iss``, ``aud``, ``exp`` and the
    rest are the caller's. ``refetch=False`` for a source that refreshes on its own.
    """
    try:
        header = jws.extract_compact(token.encode("ascii")).headers()  # structure only
    except (JoseError, ValueError, UnicodeEncodeError):
        raise JwsFailure("not a compact JWS", malformed=True) from None
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in algorithms:
        raise JwsFailure(f"algorithm {str(alg)[:20]!r} not allowed", algorithm=True)
    if "crit" in header:
        raise JwsFailure("unsupported critical header")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise JwsFailure("kid is not a string", malformed=True)
    for force in (False, True) if refetch else (False,):
        for key in _candidates(await jwks(force), kid, alg):
            claims = _decode(token, key, alg)
            if claims is not None:
                return claims
    raise JwsFailure("signature does not verify")
