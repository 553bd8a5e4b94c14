"""Adversarial HTTP cases (SECURITY.md section 4) not covered by tests/integration:
17 (header splitting through our redirects), 28 (provider slugs), 29 (CORS)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from tests.support.gk import BACKENDS, Server, require_postgres, running_server

HOSTILE_ORIGINS = ("https://evil.tld", "null", "http://127.0.0.1.evil.tld")


@pytest.fixture(scope="module", params=BACKENDS)
def probed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One grantkeeper (API + worker) per backend for the probes below that change nothing:
    each probe is a request that must be refused or answered without a grant, so they need
    no fresh server each (25 server starts per backend, most of this file's time, before)."""
    backend: str = request.param
    if backend == "postgres":
        require_postgres()
    with running_server(backend, tmp_path_factory.mktemp(f"probed-{backend}")) as server:
        yield server


@pytest.mark.parametrize(
    "slug",
    ["nope", "..", "%2e%2e", "..%2f..%2fetc%2fpasswd", "oidc%00", "OIDC", "google%2F..", "a" * 300],
)
def test_unknown_or_dotted_provider_slug_is_404(probed: Server, slug: str) -> None:
    """28: unknown or '..' provider slugs -> 404, never a file or another entry."""
    with probed.client() as c:
        r = c.get(f"/v1/providers/{slug}")
        assert r.status_code == 404, (slug, r.status_code, r.text[:200])
        assert r.headers["content-type"].startswith("application/problem+json")
        assert "Traceback" not in r.text and "/" not in r.json()["code"]


@pytest.mark.parametrize("provider", ["nope", "..", "../oidc", "oidc/..", "google-mail/../oidc"])
def test_integration_with_unknown_provider_is_refused(probed: Server, provider: str) -> None:
    with probed.client() as c:
        r = c.put(
            "/v1/integrations/x1",
            json={
                "provider": provider,
                "client_id": "c",
                "client_secret": "s",
                "scopes": [],
                "return_urls": ["https://app.example/done"],
            },
        )
        assert r.status_code in (404, 422), (provider, r.status_code, r.text[:200])
        assert c.get("/v1/integrations/x1").status_code == 404


@pytest.mark.parametrize("origin", HOSTILE_ORIGINS)
@pytest.mark.parametrize("path", ["/v1/grants", "/v1/connect/sessions", "/oauth/callback", "/healthz"])
def test_preflight_with_hostile_origin_gets_no_wildcard_with_credentials(probed: Server, origin: str, path: str) -> None:
    """29: OPTIONS with a hostile Origin: never ACAO '*' together with credentials, never the
    origin reflected, and no CORS grant on the real request either."""
    r = httpx.options(
        probed.base_url + path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert r.status_code < 500
    acao = r.headers.get("access-control-allow-origin")
    acac = r.headers.get("access-control-allow-credentials", "").lower()
    assert not (acao == "*" and acac == "true")
    assert acao != origin
    real = httpx.get(probed.base_url + path, headers={"Origin": origin, "Authorization": f"Bearer {probed.admin_key}"})
    assert real.headers.get("access-control-allow-origin") not in (origin, "*")
    assert real.headers.get("access-control-allow-credentials") is None


CRLF_VALUES = [
    "https://app.example/done\r\nSet-Cookie: pwned=1",
    "https://app.example/done%0d%0aSet-Cookie:%20pwned=1",
    "https://app.example/done\nLocation: https://evil.tld",
]


@pytest.mark.parametrize("value", CRLF_VALUES)
def test_crlf_in_values_that_reach_redirects_is_refused(gk: Server, value: str) -> None:
    """17: CR/LF (raw or percent-encoded) in values that end up in Location headers: refused
    up front (400/422), or kept encoded so no header is ever split."""
    with gk.client() as c:
        r = c.put(
            "/v1/integrations/crlf",
            json={
                "provider": "oauth2",
                "client_id": "c",
                "client_secret": "s",
                "scopes": [],
                "return_urls": ["https://app.example/done"],
                "endpoints": {"authorization_url": "https://idp.example/a", "token_url": "https://idp.example/t"},
            },
        )
        assert r.status_code in (200, 201)
        s = c.post("/v1/connect/sessions", json={"integration_id": "crlf", "user_id": "u", "return_to": value})
        assert s.status_code in (400, 422), (value, s.status_code)  # not in the allowlist either
        bad_put = c.put(
            "/v1/integrations/crlf2",
            json={
                "provider": "oauth2",
                "client_id": "c",
                "client_secret": "s",
                "scopes": [],
                "return_urls": [value],
                "endpoints": {"authorization_url": "https://idp.example/a", "token_url": "https://idp.example/t"},
            },
        )
        if "\r" in value or "\n" in value:
            assert bad_put.status_code in (400, 422), (value, bad_put.status_code)
        elif bad_put.status_code in (200, 201):
            # accepted only in its encoded form: it is never decoded into a header
            stored = c.get("/v1/integrations/crlf2").json()["return_urls"]
            assert all("\r" not in u and "\n" not in u for u in stored)
            assert any("%0d%0a" in u.lower() for u in stored)
    # the callback reflects nothing into headers
    cb = httpx.get(gk.base_url + "/oauth/callback", params={"state": "x\r\nSet-Cookie: pwned=1", "code": "y"}, follow_redirects=False)
    assert cb.status_code == 400
    assert "pwned" not in str(cb.headers).lower()
    assert "set-cookie" not in {k.lower() for k in cb.headers}


def test_errors_are_problem_json_without_stack_traces(gk: Server) -> None:
    """Every section 4 case also requires a JSON error body and no stack trace; spot checks
    over odd methods, paths and bodies (the schemathesis run covers the schema-driven rest)."""
    with gk.client() as c:
        cases = [
            c.request("PATCH", "/v1/grants"),
            c.request("TRACE", "/v1/grants"),
            c.get("/v1/" + "%ff" * 50),
            c.post("/v1/connect/sessions", content=b"\xff\xfe\x00", headers={"content-type": "application/json"}),
            c.post("/v1/webhook-endpoints", content=b'{"url": "' + b"a" * 5000 + b'", "events": []}', headers={"content-type": "application/json"}),
        ]
    for r in cases:
        assert 400 <= r.status_code < 500, (r.request.method, r.request.url, r.status_code)
        assert "Traceback" not in r.text and "File \"" not in r.text
        if r.request.method != "TRACE":
            assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    assert "Traceback" not in gk.log_text()


def _key(server: Server, *scopes: str) -> str:
    import json

    args = ["api-keys", "create", "--name", "ro", "--json"]
    for s in scopes:
        args += ["--scope", s]
    return str(json.loads(server.cli(*args).stdout)["key"])


def _imported(server: Server, user: str) -> httpx.Response:
    with server.client() as c:
        c.put(
            "/v1/integrations/adv",
            json={
                "provider": "oauth2",
                "client_id": "c",
                "client_secret": "s",
                "scopes": [],
                "return_urls": ["https://app.example/done"],
                "endpoints": {"authorization_url": "https://idp.example/a", "token_url": "https://idp.example/t"},
                "api_base_url": "https://api.example",
            },
        ).raise_for_status()
        return c.post(
            "/v1/grants",
            json={"integration_id": "adv", "user_id": user, "refresh_token": "rt-x", "access_token": "at-x", "verify": False},
        )


def test_read_only_key_cannot_revoke_or_write_through_the_proxy(gk: Server) -> None:
    """16: a read-only key (grants:read) calling revoke, token, proxy writes or imports -> 403."""
    gid = _imported(gk, "u-ro").json()["id"]
    ro = _key(gk, "grants:read")
    with gk.client(ro) as c:
        assert c.get(f"/v1/grants/{gid}").status_code == 200
        for r in (
            c.delete(f"/v1/grants/{gid}"),
            c.post(f"/v1/grants/{gid}/token", json={}),
            c.post(f"/v1/proxy/{gid}/anything", json={"a": 1}),
            c.delete(f"/v1/proxy/{gid}/anything"),
            c.post("/v1/grants", json={"integration_id": "adv", "user_id": "x", "refresh_token": "r", "verify": False}),
            c.post("/v1/webhook-endpoints", json={"url": "https://hooks.example/x", "events": ["grant.created"]}),
        ):
            assert r.status_code == 403, (r.request.method, r.request.url.path, r.status_code)
            assert r.json()["code"] == "forbidden"
    with gk.client() as c:
        assert c.get(f"/v1/grants/{gid}").json()["status"] == "active"


@pytest.mark.parametrize(
    ("a", "b"),
    [("user", "\uff55ser"), ("admin", "adm\u0456n"), ("abc", "\u202eabc"), ("caf\u00e9", "cafe\u0301")],
)
def test_look_alike_user_ids_never_collide(gk: Server, a: str, b: str) -> None:
    """7: look-alikes (fullwidth, Cyrillic, NFC vs NFD) are different users: no collision,
    no NFC folding; an RTL override is refused as a control character or kept apart."""
    ra = _imported(gk, a)
    assert ra.status_code == 201, ra.text
    rb = _imported(gk, b)
    if rb.status_code == 422:
        assert "\u202e" in b  # bidi controls are refused outright
        return
    assert rb.status_code == 201, rb.text
    assert ra.json()["id"] != rb.json()["id"]
    assert rb.json()["user_id"] == b
    with gk.client() as c:
        only_a = c.get("/v1/grants", params={"user_id": a}).json()["data"]
        assert [g["id"] for g in only_a] == [ra.json()["id"]]
