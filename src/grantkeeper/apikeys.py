"""API keys: ``gk_<id>_<secret>``; 256 random bits of secret, stored as SHA-256 only."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection

from grantkeeper.errors import Forbidden, InvalidInput, Unauthenticated
from grantkeeper.store import keys as key_store
from grantkeeper.store.records import ApiKeyRecord

__all__ = ["SCOPES", "Principal", "authenticate", "create_key", "parse_key", "verify"]

SCOPES = frozenset(
    {
        "admin",
        "integrations:read",
        "integrations:write",
        "connect",
        "grants:read",
        "grants:write",
        "credentials:read",
        "proxy",
        "webhooks:write",
        "audit:read",
    }
)
_PREFIX = "gk_"
# computed once so an unknown key id costs the same compare as a known one
_DUMMY_HASH = hashlib.sha256(b"grantkeeper-dummy").digest()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: an API key within exactly one environment.

    An end user acting for themselves (``access.subjects.Subject.principal``) is one too:
    then ``user_id`` is set, ``key_id`` names the credential they used, and the audit
    actor is ``user:<user_id>``.
    """

    key_id: str
    environment_id: str
    scopes: frozenset[str]
    integration_ids: frozenset[str] | None
    user_id: str | None = None

    @property
    def actor(self) -> str:
        return f"user:{self.user_id}" if self.user_id is not None else f"key:{self.key_id}"

    def require(self, scope: str) -> None:
        if "admin" not in self.scopes and scope not in self.scopes:
            raise Forbidden(f"this API key lacks the '{scope}' scope")

    def may_use_integration(self, integration_id: str) -> bool:
        return self.integration_ids is None or integration_id in self.integration_ids

    def require_integration(self, integration_id: str) -> None:
        if not self.may_use_integration(integration_id):
            raise Forbidden("this API key is not allowed to use this integration")


def parse_key(raw: str) -> tuple[str, str] | None:
    if not raw.startswith(_PREFIX) or len(raw) > 200:
        return None
    key_id, sep, secret = raw[len(_PREFIX) :].partition("_")
    if not sep or not key_id or not secret:
        return None
    return key_id, secret


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


async def create_key(
    conn: AsyncConnection,
    *,
    environment_id: str,
    name: str,
    scopes: Sequence[str],
    integration_ids: Sequence[str] | None,
    now: float,
) -> tuple[str, str]:
    """Returns (key id, the full key). The key is shown once and never stored."""
    bad = sorted(set(scopes) - SCOPES)
    if bad or not scopes:
        raise InvalidInput(
            f"unknown scope(s): {', '.join(bad)}" if bad else "at least one scope is required"
        )
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    await key_store.insert_key(
        conn,
        key_id=key_id,
        environment_id=environment_id,
        name=name,
        secret_hash=hash_secret(secret),
        scopes=sorted(set(scopes)),
        integration_ids=integration_ids,
        now=now,
    )
    return key_id, f"{_PREFIX}{key_id}_{secret}"


async def authenticate(conn: AsyncConnection, raw: str | None) -> Principal:
    """Unknown key, wrong secret and revoked key all raise the same ``Unauthenticated``."""
    parsed = parse_key(raw) if raw else None
    record = await key_store.get(conn, parsed[0]) if parsed else None
    return verify(parsed, record)


def verify(parsed: tuple[str, str] | None, record: ApiKeyRecord | None) -> Principal:
    """The check behind ``authenticate``, for callers that read the key row themselves."""
    presented = hash_secret(parsed[1]) if parsed else _DUMMY_HASH
    expected = record.secret_hash if record is not None else _DUMMY_HASH
    ok = hmac.compare_digest(presented, expected)
    if record is None or not ok or record.revoked_at is not None:
        raise Unauthenticated()
    return Principal(
        key_id=record.id,
        environment_id=record.environment_id,
        scopes=frozenset(record.scopes),
        integration_ids=frozenset(record.integration_ids)
        if record.integration_ids is not None
        else None,
    )
