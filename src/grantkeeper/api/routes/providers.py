from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from grantkeeper.api.deps import PrincipalDep, RuntimeDep
from grantkeeper.providers import ProviderSpec
from grantkeeper.providers.catalog import AuthMode

router = APIRouter(prefix="/v1/providers", tags=["providers"])


def summary(spec: ProviderSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "display_name": spec.display_name,
        "auth_mode": spec.auth_mode,
        "categories": list(spec.categories),
        "docs_url": spec.docs_url,
    }


def detail(spec: ProviderSpec) -> dict[str, Any]:
    data = spec.model_dump(mode="json", by_alias=True)
    # the fields a grant needs, defaults included, so a form can be drawn from the entry
    data["credential_fields"] = [f.model_dump(mode="json") for f in spec.fields()]
    return {**summary(spec), **data}


@router.get("")
async def list_providers(
    rt: RuntimeDep,
    _: PrincipalDep,
    category: str | None = Query(default=None, max_length=40),
    q: str | None = Query(default=None, max_length=100),
    auth_mode: AuthMode | None = None,
) -> dict[str, Any]:
    return {"data": [summary(s) for s in rt.catalog.search(q, category, auth_mode)]}


@router.get("/{name}")
async def get_provider(rt: RuntimeDep, _: PrincipalDep, name: str) -> dict[str, Any]:
    return detail(rt.catalog.get(name))
