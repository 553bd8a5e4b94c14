"""Schemathesis against the live OpenAPI schema of a real server (issue 8.2).

Every operation of ``/openapi.json`` gets a bounded number of generated requests
(``GRANTKEEPER_FUZZ_EXAMPLES`` each, schema-conforming and schema-violating), sent
with the admin key to a real ``grantkeeper serve`` on SQLite: no 5xx ever, and every
response matches the schema (status code documented, content type documented, body
valid). The operations are listed at collection time from ``create_app``'s schema,
so each is its own test; the requests go to the live server's schema.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from pydantic import SecretStr
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from tests.support.gk import Server, master_key, running_server

from grantkeeper.api.app import create_app
from grantkeeper.config import Settings

MAX_EXAMPLES = int(os.environ.get("GRANTKEEPER_FUZZ_EXAMPLES", "25"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def _operations() -> list[tuple[str, str]]:
    app = create_app(
        Settings(database_url="sqlite+aiosqlite:///:memory:", master_keys=SecretStr(master_key()))
    )
    spec = app.openapi()
    methods = {"get", "put", "post", "delete", "patch", "head", "options"}
    return sorted(
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in item
        if method in methods
    )


OPERATIONS = _operations()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    with running_server("sqlite", tmp, worker=False) as server:
        with server.client() as c:
            r = c.put(
                "/v1/integrations/fuzz",
                json={
                    "provider": "oauth2",
                    "client_id": "cid",
                    "client_secret": "csecret",
                    "scopes": ["read"],
                    "return_urls": ["https://app.example/done"],
                    "endpoints": {
                        "authorization_url": "https://idp.example/authorize",
                        "token_url": "https://idp.example/token",
                    },
                },
            )
            assert r.status_code in (200, 201), r.text
        yield server


@pytest.fixture(scope="module")
def api_schema(live: Server) -> Any:
    return schemathesis.openapi.from_url(f"{live.base_url}/openapi.json")


def test_every_operation_is_fuzzed() -> None:
    assert len(OPERATIONS) >= 15, OPERATIONS


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_operation(live: Server, api_schema: Any, method: str, path: str, mode: GenerationMode) -> None:
    operation = api_schema[path][method]
    auth = {"Authorization": f"Bearer {live.admin_key}"}

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def run(case: Any) -> None:
        case.call_and_validate(base_url=live.base_url, headers=auth, checks=CHECKS, timeout=30)

    try:
        run()
    except Unsatisfiable:
        if mode is GenerationMode.NEGATIVE:
            pytest.skip("the schema leaves nothing to violate for this operation")
        raise
