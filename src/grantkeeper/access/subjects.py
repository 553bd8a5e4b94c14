"""Turn an end user's bearer into a verified ``Subject``: a trusted issuer's JWT or an end-user token.

JWT checks (RFC 7519, RFC 8725): the header's ``alg`` must be RS256, ES256 or EdDSA
(never ``none``, never HMAC: an HMAC "signed" with a public key proves nothing), the
signature must verify with a key of the issuer's JWKS (matching ``kid``; a key that
names another ``alg`` is refused), ``iss`` must equal the trusted issuer exactly, ``aud``
must hold its audience, ``exp`` and ``iat`` are required, ``nbf`` is honoured, all with
``GRANTKEEPER_SUBJECT_TOKEN_LEEWAY``, and ``iat`` may be at most
``GRANTKEEPER_SUBJECT_TOKEN_MAX_AGE`` old. Every failure is the same ``InvalidSubjectToken``.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import orjson
from joserfc import jws
from joserfc.errors import JoseError

from grantkeeper.access import endusertokens
from grantkeeper.access.jwks import JwksCache
from grantkeeper.apikeys import Principal
from grantkeeper.errors import InvalidSubjectToken
from grantkeeper.oauth.jwsverify import JwsFailure, verify_jwt
from grantkeeper.runtime import Runtime, new_jwks_cache
from grantkeeper.store import access as store
from grantkeeper.store.access import SubjectIssuerRecord
from grantkeeper.store.db import reading

__all__ = ["ALLOWED_ALGS", "JWT_TYPE", "ACCESS_TOKEN_TYPE", "Subject", "verify_subject_token"]

log = logging.getLogger(__name__)

ALLOWED_ALGS = ("RS256", "ES256", "EdDSA")
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
_MAX_LEN = 16_384


@dataclass(frozen=True, slots=True)
class Subject:
    """A verified end user within exactly one environment."""

    environment_id: str
    user_id: str
    #: ``issuer:<subject issuer id>`` or ``token:<end-user token id>``
    via: str
    #: integrations an end-user token is bound to (None: any)
    integration_ids: frozenset[str] | None
    #: the issuer entry a JWT came from (None for end-user tokens)
    issuer: SubjectIssuerRecord | None = None

    @property
    def actor(self) -> str:
        return f"user:{self.user_id}"

    @property
    def bucket(self) -> str:
        """A short, stable name for this user's rate-limit buckets (user ids may be long)."""
        digest = hashlib.sha256(f"{self.environment_id}\0{self.user_id}".encode()).hexdigest()
        return f"user-{digest[:40]}"

    def may_use_integration(self, integration_id: str) -> bool:
        return self.integration_ids is None or integration_id in self.integration_ids

    def principal(self) -> Principal:
        """This end user as a caller of the shared domain functions (connect, revocation)."""
        return Principal(
            key_id=self.via[:64],
            environment_id=self.environment_id,
            scopes=frozenset({"connect"}),
            integration_ids=self.integration_ids,
            user_id=self.user_id,
        )


def _jwks(rt: Runtime) -> JwksCache:
    if rt.subject_jwks is None:
        rt.subject_jwks = new_jwks_cache(rt.settings, rt.http)
    return rt.subject_jwks


def _fail(why: str) -> InvalidSubjectToken:
    log.debug("subject token refused: %s", why)
    return InvalidSubjectToken("the subject token is invalid, expired or not trusted")


async def verify_subject_token(
    rt: Runtime, raw: str, token_type: str, *, environment_id: str | None = None
) -> Subject:
    """Verify ``raw`` (of RFC 8693 ``token_type``); ``environment_id`` pins the environment."""
    if not raw or len(raw) > _MAX_LEN:
        raise _fail("empty or oversized")
    if token_type == ACCESS_TOKEN_TYPE:
        return await _end_user_token(rt, raw, environment_id)
    if token_type == JWT_TYPE:
        return await _jwt(rt, raw, environment_id)
    raise _fail("unsupported token type")


async def _end_user_token(rt: Runtime, raw: str, environment_id: str | None) -> Subject:
    if not endusertokens.looks_like(raw):
        raise _fail("not an end-user token")
    async with reading(rt.engine) as conn:
        rec = await endusertokens.lookup(conn, raw, now=rt.clock.now())
    if rec is None or (environment_id is not None and rec.environment_id != environment_id):
        raise _fail("unknown, revoked or expired end-user token")
    return Subject(
        environment_id=rec.environment_id,
        user_id=rec.user_id,
        via=f"token:{rec.id}",
        integration_ids=frozenset(rec.integration_ids) if rec.integration_ids is not None else None,
    )


def _auds(claims: dict[str, Any]) -> list[str]:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        return aud
    return []


async def _jwt(rt: Runtime, raw: str, environment_id: str | None) -> Subject:
    try:
        compact = jws.extract_compact(raw.encode("ascii"))
        header = compact.headers()
        unverified = orjson.loads(compact.payload)
    except (JoseError, ValueError, UnicodeEncodeError, orjson.JSONDecodeError):
        raise _fail("malformed JWT") from None
    # refused before any database or JWKS work (verify_jwt checks the header again)
    alg = header.get("alg")
    if alg not in ALLOWED_ALGS:
        raise _fail(f"algorithm {str(alg)[:20]!r} not allowed")
    if "crit" in header or not isinstance(unverified, dict):
        raise _fail("unsupported critical header or non-object payload")
    iss = unverified.get("iss")
    if not isinstance(iss, str) or len(iss) > 1000:
        raise _fail("no iss")
    auds = _auds(unverified)
    async with reading(rt.engine) as conn:
        candidates = [
            i
            for i in await store.issuers_by_issuer(conn, iss, environment_id)
            if i.audience in auds
        ]
    if len(candidates) != 1:
        raise _fail("untrusted issuer or audience")
    issuer = candidates[0]
    kid = header.get("kid")
    cache = _jwks(rt)

    async def keys(_force: bool) -> dict[str, Any]:
        # the cache refetches once on its own when ``kid`` is unknown (rate-limited)
        return await cache.get(issuer.jwks_uri, kid=kid if isinstance(kid, str) else None)

    try:
        claims = await verify_jwt(raw, keys, algorithms=ALLOWED_ALGS, refetch=False)
    except JwsFailure as exc:
        raise _fail(exc.reason) from None
    return _checked_claims(rt, claims, issuer)


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _checked_claims(rt: Runtime, claims: dict[str, Any], issuer: SubjectIssuerRecord) -> Subject:
    now = rt.clock.now()
    leeway = rt.settings.subject_token_leeway
    if claims.get("iss") != issuer.issuer:
        raise _fail("iss mismatch")
    if issuer.audience not in _auds(claims):
        raise _fail("aud mismatch")
    exp, iat, nbf = _num(claims.get("exp")), _num(claims.get("iat")), _num(claims.get("nbf"))
    if exp is None or now > exp + leeway:
        raise _fail("expired or no exp")
    if "nbf" in claims and (nbf is None or nbf - leeway > now):
        raise _fail("not yet valid")
    if iat is None or iat - leeway > now:
        raise _fail("no iat or issued in the future")
    if now - iat > rt.settings.subject_token_max_age:
        raise _fail("too old")
    user = claims.get(issuer.user_id_claim)
    if isinstance(user, int) and not isinstance(user, bool):
        user = str(user)
    if (
        not isinstance(user, str)
        or not 1 <= len(user) <= 255
        or any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in user)
    ):
        raise _fail("no usable user id claim")
    return Subject(
        environment_id=issuer.environment_id,
        user_id=user,
        via=f"issuer:{issuer.id}",
        integration_ids=None,
        issuer=issuer,
    )
