"""Rows of end-user access: subject issuers and end-user tokens. The caller owns the transaction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from grantkeeper.store.tables import end_user_tokens, subject_issuers

__all__ = [
    "EndUserTokenRecord",
    "SubjectIssuerRecord",
    "delete_issuer",
    "get_issuer",
    "get_token",
    "insert_token",
    "issuers_by_issuer",
    "list_issuers",
    "origins",
    "purge_expired",
    "revoke_token",
    "upsert_issuer",
]


@dataclass(frozen=True, slots=True)
class SubjectIssuerRecord:
    environment_id: str
    id: str
    issuer: str
    jwks_uri: str
    audience: str
    user_id_claim: str
    allowed_origins: tuple[str, ...]
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class EndUserTokenRecord:
    id: str
    environment_id: str
    user_id: str
    integration_ids: tuple[str, ...] | None
    secret_hash: bytes
    created_by: str | None
    created_at: float
    expires_at: float
    revoked_at: float | None


def _issuer(row: Any) -> SubjectIssuerRecord:
    values = dict(row)
    values["allowed_origins"] = tuple(values["allowed_origins"] or ())
    return SubjectIssuerRecord(**values)


def _token(row: Any) -> EndUserTokenRecord:
    values = dict(row)
    ids = values["integration_ids"]
    values["integration_ids"] = tuple(ids) if ids is not None else None
    values["secret_hash"] = bytes(values["secret_hash"])
    return EndUserTokenRecord(**values)


_i = subject_issuers.c


async def get_issuer(
    conn: AsyncConnection, environment_id: str, issuer_id: str
) -> SubjectIssuerRecord | None:
    r = await conn.execute(
        select(subject_issuers).where(_i.environment_id == environment_id, _i.id == issuer_id)
    )
    row = r.mappings().first()
    return _issuer(row) if row is not None else None


async def list_issuers(conn: AsyncConnection, environment_id: str) -> list[SubjectIssuerRecord]:
    r = await conn.execute(
        select(subject_issuers).where(_i.environment_id == environment_id).order_by(_i.id)
    )
    return [_issuer(m) for m in r.mappings().all()]


async def issuers_by_issuer(
    conn: AsyncConnection, issuer: str, environment_id: str | None = None
) -> list[SubjectIssuerRecord]:
    """Every trusted issuer entry with this exact ``iss`` (in one environment, or in all)."""
    q = select(subject_issuers).where(_i.issuer == issuer)
    if environment_id is not None:
        q = q.where(_i.environment_id == environment_id)
    r = await conn.execute(q.order_by(_i.environment_id, _i.id))
    return [_issuer(m) for m in r.mappings().all()]


async def origins(conn: AsyncConnection, environment_id: str | None = None) -> set[str]:
    """The union of ``allowed_origins`` (of one environment, or of all)."""
    q = select(_i.allowed_origins)
    if environment_id is not None:
        q = q.where(_i.environment_id == environment_id)
    out: set[str] = set()
    for (value,) in (await conn.execute(q)).all():
        out.update(value or ())
    return out


async def upsert_issuer(
    conn: AsyncConnection,
    environment_id: str,
    issuer_id: str,
    values: dict[str, Any],
    now: float,
) -> bool:
    """Insert or replace; True when created."""
    r = await conn.execute(
        update(subject_issuers)
        .where(_i.environment_id == environment_id, _i.id == issuer_id)
        .values(**values, updated_at=now)
    )
    if r.rowcount:
        return False
    await conn.execute(
        insert(subject_issuers).values(
            environment_id=environment_id, id=issuer_id, created_at=now, updated_at=now, **values
        )
    )
    return True


async def delete_issuer(conn: AsyncConnection, environment_id: str, issuer_id: str) -> bool:
    r = await conn.execute(
        delete(subject_issuers).where(_i.environment_id == environment_id, _i.id == issuer_id)
    )
    return r.rowcount > 0


_t = end_user_tokens.c


async def insert_token(conn: AsyncConnection, values: dict[str, Any]) -> None:
    await conn.execute(insert(end_user_tokens).values(**values))


async def get_token(conn: AsyncConnection, token_id: str) -> EndUserTokenRecord | None:
    r = await conn.execute(select(end_user_tokens).where(_t.id == token_id))
    row = r.mappings().first()
    return _token(row) if row is not None else None


async def revoke_token(
    conn: AsyncConnection, environment_id: str, token_id: str, now: float
) -> bool:
    """Mark revoked (idempotent); False when there is no such token in the environment."""
    r = await conn.execute(
        update(end_user_tokens)
        .where(_t.environment_id == environment_id, _t.id == token_id, _t.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    if r.rowcount:
        return True
    existing = await get_token(conn, token_id)
    return existing is not None and existing.environment_id == environment_id


async def purge_expired(conn: AsyncConnection, before: float) -> int:
    """Drop tokens that expired before ``before`` (they can never be used again)."""
    r = await conn.execute(delete(end_user_tokens).where(_t.expires_at < before))
    return int(r.rowcount or 0)
