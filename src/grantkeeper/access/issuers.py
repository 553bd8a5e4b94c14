"""Subject issuers: the app's own login systems, trusted per environment.

An entry says: JWTs whose ``iss`` is ``issuer`` and whose ``aud`` holds ``audience``,
signed by a key of ``jwks_uri``, identify the end user named by ``user_id_claim``;
browsers on ``allowed_origins`` may use them. In the whole vault one ``(issuer,
audience)`` pair names one entry, so a browser's JWT finds its environment by itself.
"""

from __future__ import annotations

import re
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncConnection

from grantkeeper.clock import iso
from grantkeeper.errors import AlreadyExists, InvalidInput, NotFound
from grantkeeper.inputs import Url
from grantkeeper.netguard import check_url
from grantkeeper.store import access as store
from grantkeeper.store.access import SubjectIssuerRecord

__all__ = [
    "SubjectIssuerInput",
    "delete_issuer",
    "get_issuer",
    "issuer_view",
    "normalise_origin",
    "put_issuer",
]

ISSUER_ID = r"[a-z0-9][a-z0-9_-]{0,62}"
_CLAIM = re.compile(r"[A-Za-z0-9_.:/-]{1,100}")


def normalise_origin(value: str) -> str:
    """``scheme://host[:port]`` exactly as a browser sends it in ``Origin``; else ValueError."""
    if value in ("*", "null") or len(value) > 300:
        raise ValueError("an origin must be scheme://host[:port] (no wildcard, no 'null')")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ValueError("not a valid origin") from None
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or "@" in parts.netloc
        or any(c in value for c in "*\\ \t\r\n")
    ):
        raise ValueError(f"{value[:60]!r} is not an origin (scheme://host[:port], no path)")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}[parts.scheme]
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


def _origins(values: list[str]) -> list[str]:
    return list(dict.fromkeys(normalise_origin(v) for v in values))


def _claim(value: str) -> str:
    if not _CLAIM.fullmatch(value):
        raise ValueError("a claim name of letters, digits and _ . : / -")
    return value


class SubjectIssuerInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    issuer: Url
    jwks_uri: Url
    audience: Annotated[str, Field(min_length=1, max_length=1000)]
    user_id_claim: Annotated[str, AfterValidator(_claim)] = "sub"
    allowed_origins: Annotated[
        list[Annotated[str, Field(max_length=300)]],
        Field(max_length=50),
        AfterValidator(_origins),
    ] = Field(default_factory=list)


def issuer_view(rec: SubjectIssuerRecord) -> dict[str, Any]:
    return {
        "id": rec.id,
        "issuer": rec.issuer,
        "jwks_uri": rec.jwks_uri,
        "audience": rec.audience,
        "user_id_claim": rec.user_id_claim,
        "allowed_origins": list(rec.allowed_origins),
        "created_at": iso(rec.created_at),
        "updated_at": iso(rec.updated_at),
    }


async def put_issuer(
    conn: AsyncConnection,
    environment_id: str,
    issuer_id: str,
    body: SubjectIssuerInput,
    *,
    allow_private: bool,
    now: float,
) -> tuple[SubjectIssuerRecord, bool]:
    if not re.fullmatch(ISSUER_ID, issuer_id):
        raise InvalidInput("a subject issuer id is [a-z0-9][a-z0-9_-]{0,62}")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in body.audience):
        raise InvalidInput("audience must not contain control characters")
    check_url(body.jwks_uri, allow_private=allow_private, what="jwks_uri")
    iss = urlsplit(body.issuer)
    if iss.scheme not in ("http", "https") or not iss.netloc:
        raise InvalidInput("issuer must be an http(s) URL, exactly as the JWTs' iss claim")
    for other in await store.issuers_by_issuer(conn, body.issuer):
        if other.audience == body.audience and not (
            other.environment_id == environment_id and other.id == issuer_id
        ):
            raise AlreadyExists(
                "this issuer and audience are already trusted by another subject issuer; "
                "give each environment its own audience"
            )
    values = {
        "issuer": body.issuer,
        "jwks_uri": body.jwks_uri,
        "audience": body.audience,
        "user_id_claim": body.user_id_claim,
        "allowed_origins": list(body.allowed_origins),
    }
    created = await store.upsert_issuer(conn, environment_id, issuer_id, values, now)
    rec = await store.get_issuer(conn, environment_id, issuer_id)
    assert rec is not None
    return rec, created


async def get_issuer(
    conn: AsyncConnection, environment_id: str, issuer_id: str
) -> SubjectIssuerRecord:
    rec = await store.get_issuer(conn, environment_id, issuer_id)
    if rec is None:
        raise NotFound("no such subject issuer")
    return rec


async def delete_issuer(conn: AsyncConnection, environment_id: str, issuer_id: str) -> None:
    if not await store.delete_issuer(conn, environment_id, issuer_id):
        raise NotFound("no such subject issuer")
