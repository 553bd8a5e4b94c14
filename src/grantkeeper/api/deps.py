"""Dependencies that read like types (``RuntimeDep``, ``PrincipalDep``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from grantkeeper.apikeys import Principal, authenticate
from grantkeeper.errors import Unauthenticated
from grantkeeper.runtime import Runtime
from grantkeeper.store.db import reading

__all__ = [
    "PrincipalDep",
    "RuntimeDep",
    "bearer",
    "get_principal",
    "get_runtime",
    "missing_key",
    "parse_bearer",
    "unauthenticated_request",
]


def get_runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def bearer(request: Request) -> str | None:
    """The bearer credential; duplicated or malformed Authorization headers count as none."""
    return parse_bearer(request.headers.getlist("authorization"))


def parse_bearer(values: list[str]) -> str | None:
    """``bearer`` on the Authorization header values already picked out of a request."""
    if len(values) != 1:
        return None
    scheme, _, cred = values[0].partition(" ")
    if scheme.lower() != "bearer" or not cred.strip():
        return None
    return cred.strip()


def missing_key(authorization: list[str], x_api_key: bool) -> Unauthenticated:
    """The 401 for a request whose key was not read, with a hint about the header's form.

    Only the form is described, never the value: a wrong key sent the right way gets the
    plain answer, the same for an unknown and a wrong key.
    """
    want = "'Authorization: Bearer <API key>'"
    if len(authorization) > 1:
        hint = f"send one Authorization header, {want}"
    elif authorization:
        hint = f"the Authorization header must use the Bearer scheme: {want}"
    elif x_api_key:
        hint = f"the API key goes in {want}; the X-API-Key header is not read"
    else:
        hint = f"send the API key as {want}"
    return Unauthenticated(f"No API key: {hint}")


def unauthenticated_request(request: Request) -> Unauthenticated:
    return missing_key(request.headers.getlist("authorization"), "x-api-key" in request.headers)


async def get_principal(
    request: Request, rt: Annotated[Runtime, Depends(get_runtime)]
) -> Principal:
    raw = bearer(request)
    if raw is None:
        raise unauthenticated_request(request)
    async with reading(rt.engine) as conn:
        principal = await authenticate(conn, raw)
    request.state.principal = principal
    return principal


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
