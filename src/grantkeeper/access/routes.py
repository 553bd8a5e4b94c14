"""HTTP side of end-user access: subject issuers, end-user tokens, ``/oauth/token``, ``/v1/me``, the JS SDK."""

from __future__ import annotations

import functools
import hashlib
from importlib import resources
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Path, Request, Response

from grantkeeper import audit
from grantkeeper.access import endusertokens, issuers, selfservice
from grantkeeper.access.cors import SCOPE_KEY
from grantkeeper.access.exchange import exchange, parse_request
from grantkeeper.access.subjects import ACCESS_TOKEN_TYPE, JWT_TYPE, Subject, verify_subject_token
from grantkeeper.api.deps import PrincipalDep, RuntimeDep, bearer
from grantkeeper.errors import InvalidSubjectToken, RequestTooLarge
from grantkeeper.store import access as access_store
from grantkeeper.store.db import reading

__all__ = ["router"]

router = APIRouter()

IssuerId = Path(pattern=f"^{issuers.ISSUER_ID}$")
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

# ---------------------------------------------------------------- subject issuers (admin)


@router.put("/v1/subject-issuers/{issuer_id}", tags=["end-user access"])
async def put_subject_issuer(
    rt: RuntimeDep,
    principal: PrincipalDep,
    body: issuers.SubjectIssuerInput,
    response: Response,
    issuer_id: str = IssuerId,
) -> dict[str, Any]:
    principal.require("admin")
    async with rt.engine.begin() as conn:
        rec, created = await issuers.put_issuer(
            conn,
            principal.environment_id,
            issuer_id,
            body,
            allow_private=rt.settings.allow_private_networks,
            now=rt.clock.now(),
        )
        await audit.record(
            conn,
            environment_id=principal.environment_id,
            actor=principal.actor,
            action="subject_issuer.created" if created else "subject_issuer.updated",
            now=rt.clock.now(),
            subject_issuer_id=issuer_id,
        )
    response.status_code = 201 if created else 200
    return issuers.issuer_view(rec)


@router.get("/v1/subject-issuers", tags=["end-user access"])
async def list_subject_issuers(rt: RuntimeDep, principal: PrincipalDep) -> dict[str, Any]:
    principal.require("admin")
    async with reading(rt.engine) as conn:
        recs = await access_store.list_issuers(conn, principal.environment_id)
    return {"data": [issuers.issuer_view(r) for r in recs]}


@router.get("/v1/subject-issuers/{issuer_id}", tags=["end-user access"])
async def get_subject_issuer(
    rt: RuntimeDep, principal: PrincipalDep, issuer_id: str = IssuerId
) -> dict[str, Any]:
    principal.require("admin")
    async with reading(rt.engine) as conn:
        rec = await issuers.get_issuer(conn, principal.environment_id, issuer_id)
    return issuers.issuer_view(rec)


@router.delete("/v1/subject-issuers/{issuer_id}", tags=["end-user access"])
async def delete_subject_issuer(
    rt: RuntimeDep, principal: PrincipalDep, issuer_id: str = IssuerId
) -> dict[str, Any]:
    principal.require("admin")
    async with rt.engine.begin() as conn:
        await issuers.delete_issuer(conn, principal.environment_id, issuer_id)
        await audit.record(
            conn,
            environment_id=principal.environment_id,
            actor=principal.actor,
            action="subject_issuer.deleted",
            now=rt.clock.now(),
            subject_issuer_id=issuer_id,
        )
    return {"id": issuer_id, "deleted": True}


# ---------------------------------------------------------------- end-user tokens


@router.post("/v1/end-user-tokens", status_code=201, tags=["end-user access"])
async def create_end_user_token(
    rt: RuntimeDep,
    principal: PrincipalDep,
    body: endusertokens.CreateEndUserToken,
    response: Response,
) -> dict[str, Any]:
    principal.require("connect")
    response.headers.update(_NO_STORE)
    now = rt.clock.now()
    async with rt.engine.begin() as conn:
        out = await endusertokens.mint(conn, principal, body, now=now)
        await audit.record(
            conn,
            environment_id=principal.environment_id,
            actor=principal.actor,
            action="end_user_token.created",
            now=now,
            end_user_token_id=out["id"],
            user_id=body.user_id,
        )
    return out


@router.delete("/v1/end-user-tokens/{token_id}", tags=["end-user access"])
async def revoke_end_user_token(
    rt: RuntimeDep, principal: PrincipalDep, token_id: str
) -> dict[str, Any]:
    principal.require("connect")
    now = rt.clock.now()
    async with rt.engine.begin() as conn:
        await endusertokens.revoke(conn, principal, token_id, now=now)
        await audit.record(
            conn,
            environment_id=principal.environment_id,
            actor=principal.actor,
            action="end_user_token.revoked",
            now=now,
            end_user_token_id=token_id,
        )
    return {"id": token_id, "revoked": True}


# ---------------------------------------------------------------- RFC 8693 exchange

_EXCHANGE_MAX_BODY = 32 * 1024

_EXCHANGE_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "required": ["grant_type", "subject_token", "subject_token_type", "audience"],
                    "properties": {
                        "grant_type": {
                            "type": "string",
                            "enum": ["urn:ietf:params:oauth:grant-type:token-exchange"],
                        },
                        "subject_token": {"type": "string"},
                        "subject_token_type": {
                            "type": "string",
                            "enum": [JWT_TYPE, ACCESS_TOKEN_TYPE],
                        },
                        "audience": {"type": "string", "description": "the integration id"},
                        "scope": {"type": "string"},
                        "requested_token_type": {"type": "string", "enum": [ACCESS_TOKEN_TYPE]},
                        "login_hint": {"type": "string"},
                    },
                }
            }
        },
    },
    "responses": {
        "200": {
            "description": "The end user's provider access token (RFC 8693 2.2.1)",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["access_token", "issued_token_type", "token_type"],
                        "properties": {
                            "access_token": {"type": "string"},
                            "issued_token_type": {"type": "string"},
                            "token_type": {"type": "string"},
                            "expires_in": {"type": "integer"},
                            "scope": {"type": "string"},
                        },
                    }
                }
            },
        },
        "400": {"description": "RFC 6749 5.2 error (`error`, `error_description`)"},
        "401": {"description": "`invalid_client`"},
    },
}


@router.post(
    "/oauth/token",
    tags=["end-user access"],
    response_class=Response,
    openapi_extra=_EXCHANGE_OPENAPI,
)
async def token_exchange(request: Request, rt: RuntimeDep) -> Response:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > _EXCHANGE_MAX_BODY:
            raise RequestTooLarge(f"the limit is {_EXCHANGE_MAX_BODY} bytes")
    req = parse_request(bytes(body), request.headers.get("content-type"))
    has_auth = bool(request.headers.getlist("authorization"))
    api_key = bearer(request) if has_auth else None
    if has_auth and api_key is None:
        api_key = ""  # a malformed Authorization header is a failed client authentication

    def on_subject(origins: set[str]) -> None:
        request.scope[SCOPE_KEY] = origins

    payload = await exchange(
        rt,
        req,
        api_key=api_key,
        origin=request.headers.get("origin"),
        on_subject=on_subject,
    )
    return Response(orjson.dumps(payload), media_type="application/json", headers=_NO_STORE)


# ---------------------------------------------------------------- /v1/me


async def get_subject(request: Request, rt: RuntimeDep) -> Subject:
    raw = bearer(request)
    if raw is None:
        raise InvalidSubjectToken("send the end user's token as a bearer")
    kind = ACCESS_TOKEN_TYPE if endusertokens.looks_like(raw) else JWT_TYPE
    subject = await verify_subject_token(rt, raw, kind)
    async with reading(rt.engine) as conn:
        request.scope[SCOPE_KEY] = await access_store.origins(conn, subject.environment_id)
    return subject


SubjectDep = Annotated[Subject, Depends(get_subject)]


@router.get("/v1/me/grants", tags=["end-user access"])
async def my_grants(rt: RuntimeDep, subject: SubjectDep) -> dict[str, Any]:
    return {"data": await selfservice.my_grants(rt, subject)}


@router.post("/v1/me/connect-sessions", status_code=201, tags=["end-user access"])
async def my_connect_session(
    rt: RuntimeDep, subject: SubjectDep, body: selfservice.MyConnectSession
) -> dict[str, Any]:
    return await selfservice.start_connect(rt, subject, body)


@router.delete("/v1/me/grants/{grant_id}", tags=["end-user access"])
async def my_disconnect(rt: RuntimeDep, subject: SubjectDep, grant_id: str) -> dict[str, Any]:
    return await selfservice.disconnect(rt, subject, grant_id)


# ---------------------------------------------------------------- the browser SDK


@functools.cache
def _sdk() -> tuple[bytes, str]:
    data = resources.files("grantkeeper.access").joinpath("sdk/grantkeeper.js").read_bytes()
    return data, '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


@router.get("/sdk/grantkeeper.js", tags=["end-user access"], response_class=Response)
async def sdk_module(request: Request) -> Response:
    data, etag = _sdk()
    headers = {
        "Cache-Control": "public, max-age=300",
        "ETag": etag,
        "Access-Control-Allow-Origin": "*",
        "X-Content-Type-Options": "nosniff",
        "Cross-Origin-Resource-Policy": "cross-origin",
    }
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type="text/javascript; charset=utf-8", headers=headers)
