"""Dependencies that read like types (``RuntimeDep``, ``PrincipalDep``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from grantkeeper.apikeys import Principal, authenticate
from grantkeeper.errors import Unauthenticated
from grantkeeper.runtime import Runtime
from grantkeeper.store.db import reading

__all__ = ["PrincipalDep", "RuntimeDep", "bearer", "get_principal", "get_runtime", "parse_bearer"]


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


async def get_principal(
    request: Request, rt: Annotated[Runtime, Depends(get_runtime)]
) -> Principal:
    raw = bearer(request)
    if raw is None:
        raise Unauthenticated()
    async with reading(rt.engine) as conn:
        principal = await authenticate(conn, raw)
    request.state.principal = principal
    return principal


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
