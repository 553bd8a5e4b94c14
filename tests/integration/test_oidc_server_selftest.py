"""Self-test of the test OpenID provider (tests/oidc_server), without grantkeeper."""

from __future__ import annotations

import base64
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from tests.support.oidc import OidcServer, authorize, decode_jwt_unverified, pkce_pair

pytestmark = pytest.mark.oidc

REDIRECT_URI = "http://127.0.0.1:9/cb"  # never contacted: the driver stops there


def basic_auth(client_id: str, client_secret: str) -> str:
    """RFC 6749 2.3.1: form-urlencode id and secret, then base64."""
    raw = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}"
    return "Basic " + base64.b64encode(raw.encode()).decode()


@dataclass
class Client:
    client_id: str
    client_secret: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": basic_auth(self.client_id, self.client_secret)}


@dataclass
class Flow:
    tokens: dict[str, Any]
    nonce: str


def new_client(oidc: OidcServer, method: str = "client_secret_basic") -> Client:
    cid, secret = oidc.register_client([REDIRECT_URI], token_endpoint_auth_method=method)
    return Client(cid, secret)


def login(oidc: OidcServer, client: Client) -> tuple[str, str, str]:
    """Authorization request; returns (code, verifier, nonce)."""
    verifier, challenge = pkce_pair()
    state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    url = oidc.authorization_url(
        client.client_id, REDIRECT_URI, code_challenge=challenge, state=state, nonce=nonce
    )
    outcome = oidc.authorize(url)
    assert outcome.final_url is not None and outcome.final_url.startswith(REDIRECT_URI + "?")
    assert outcome.state == state
    assert outcome.iss == oidc.issuer
    assert outcome.code
    return outcome.code, verifier, nonce


def exchange(oidc: OidcServer, client: Client, code: str, verifier: str) -> httpx.Response:
    return httpx.post(
        oidc.token_endpoint,
        headers=client.auth,
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier,
        },
    )


def flow(oidc: OidcServer, client: Client) -> Flow:
    code, verifier, nonce = login(oidc, client)
    response = exchange(oidc, client, code, verifier)
    assert response.status_code == 200, response.text
    return Flow(response.json(), nonce)


def refresh(oidc: OidcServer, client: Client, refresh_token: str) -> httpx.Response:
    return httpx.post(
        oidc.token_endpoint,
        headers=client.auth,
        data={"grant_type": "refresh_token", "refresh_token": refresh_token},
    )


def echo(oidc: OidcServer, access_token: str) -> httpx.Response:
    return httpx.get(
        f"{oidc.api_base_url}/echo/x", headers={"Authorization": f"Bearer {access_token}"}
    )


def signature_valid(oidc: OidcServer, jwt: str) -> bool:
    header, _, signature = decode_jwt_unverified(jwt)
    if header.get("alg") != "RS256":
        return False
    (jwk,) = [k for k in httpx.get(oidc.jwks_uri).json()["keys"] if k["kid"] == header["kid"]]

    def num(v: str) -> int:
        return int.from_bytes(base64.urlsafe_b64decode(v + "=" * (-len(v) % 4)), "big")

    key = rsa.RSAPublicNumbers(num(jwk["e"]), num(jwk["n"])).public_key()
    signing_input = jwt.rsplit(".", 1)[0].encode()
    try:
        key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def test_discovery_and_code_flow(oidc: OidcServer) -> None:
    meta = oidc.discovery()
    assert meta["issuer"] == oidc.issuer
    assert meta["authorization_response_iss_parameter_supported"] is True
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert "api:read" in meta["scopes_supported"]

    client = new_client(oidc)
    assert any(c in client.client_secret for c in "+/=%:")
    code, verifier, nonce = login(oidc, client)

    # Raw (not form-urlencoded) secret in Basic fails and does not consume the code.
    raw = base64.b64encode(f"{client.client_id}:{client.client_secret}".encode()).decode()
    bad = httpx.post(
        oidc.token_endpoint,
        headers={"Authorization": f"Basic {raw}"},
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier,
        },
    )
    assert bad.status_code in (400, 401)
    # Registered method is enforced: client_secret_post for a basic client fails.
    post = httpx.post(
        oidc.token_endpoint,
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier,
            "client_id": client.client_id,
            "client_secret": client.client_secret,
        },
    )
    assert post.status_code == 401 and post.json()["error"] == "invalid_client"

    response = exchange(oidc, client, code, verifier)
    assert response.status_code == 200, response.text
    tokens = response.json()
    assert tokens["refresh_token"] and tokens["access_token"]
    assert set(tokens["scope"].split()) == {"openid", "offline_access", "api:read"}
    assert tokens["expires_in"] <= 60
    _, claims, _ = decode_jwt_unverified(tokens["id_token"])
    assert claims["iss"] == oidc.issuer and claims["aud"] == client.client_id
    assert claims["nonce"] == nonce and claims["sub"] == "alice"
    assert signature_valid(oidc, tokens["id_token"])

    # Code replay -> invalid_grant.
    assert exchange(oidc, client, code, verifier).json()["error"] == "invalid_grant"

    stats = oidc.stats()
    assert stats["token"] == {"authorization_code": 4, "refresh_token": 0, "client_credentials": 0, "total": 4}
    assert [r["client_auth"] for r in stats["token_requests"]] == [
        "basic",
        "post",
        "basic",
        "basic",
    ]

    # Protected API.
    resp = echo(oidc, tokens["access_token"])
    # The replay revoked the tokens issued from that code.
    assert resp.status_code == 401
    tokens = flow(oidc, client).tokens
    resp = httpx.post(
        f"{oidc.api_base_url}/echo/a/b?x=1&y=2",
        headers={"Authorization": f"Bearer {tokens['access_token']}", "X-Custom": "v"},
        content=b"hello",
    )
    assert resp.status_code == 200
    body = resp.json()
    assert body["method"] == "POST" and body["path"] == "/api/echo/a/b"
    assert body["query"] == {"x": "1", "y": "2"} and body["body"] == "hello"
    assert body["headers"]["x-custom"] == "v" and body["account"] == "alice"
    unauth = httpx.get(f"{oidc.api_base_url}/echo/x")
    assert unauth.status_code == 401 and unauth.headers["www-authenticate"].startswith("Bearer")
    bad_tok = echo(oidc, "nope")
    assert bad_tok.status_code == 401 and "invalid_token" in bad_tok.headers["www-authenticate"]
    hdrs = {"Authorization": f"Bearer {tokens['access_token']}"}
    large = httpx.get(f"{oidc.api_base_url}/large?size=100000", headers=hdrs)
    assert len(large.content) == 100000 and large.content[:3] == b"\x00\x01\x02"
    limited = httpx.get(f"{oidc.api_base_url}/status/429", headers=hdrs)
    assert limited.status_code == 429 and limited.headers["retry-after"] == "7"
    redirect = httpx.get(f"{oidc.api_base_url}/redirect?to=https://x.example/", headers=hdrs)
    assert redirect.status_code == 302 and redirect.headers["location"] == "https://x.example/"
    assert httpx.get(f"{oidc.api_base_url}/slow?ms=50", headers=hdrs).status_code == 200
    assert oidc.stats()["api"] == 8

    userinfo = httpx.get(oidc.userinfo_endpoint, headers=hdrs)
    assert userinfo.status_code == 200 and userinfo.json()["sub"] == "alice"
    assert oidc.stats()["userinfo"] == 1


def test_no_refresh_token_without_prompt_consent(oidc: OidcServer) -> None:
    client = new_client(oidc)
    verifier, challenge = pkce_pair()
    url = oidc.authorization_url(
        client.client_id, REDIRECT_URI, code_challenge=challenge, state="s", nonce="n", prompt=None
    )
    outcome = oidc.authorize(url)
    assert outcome.code
    tokens = exchange(oidc, client, outcome.code, verifier).json()
    assert "refresh_token" not in tokens


def test_rotation_reuse_and_revocation(oidc: OidcServer) -> None:
    client = new_client(oidc)
    rt0 = flow(oidc, client).tokens["refresh_token"]
    r1 = refresh(oidc, client, rt0)
    assert r1.status_code == 200, r1.text
    rt1 = r1.json()["refresh_token"]
    assert rt1 != rt0 and r1.json()["id_token"]
    reuse = refresh(oidc, client, rt0)
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    assert refresh(oidc, client, rt1).json()["error"] == "invalid_grant"  # grant revoked
    assert oidc.stats()["token"]["refresh_token"] == 3

    tokens = flow(oidc, client).tokens
    rev = httpx.post(
        oidc.revocation_endpoint,
        headers=client.auth,
        data={"token": tokens["refresh_token"], "token_type_hint": "refresh_token"},
    )
    assert rev.status_code == 200
    assert refresh(oidc, client, tokens["refresh_token"]).json()["error"] == "invalid_grant"
    stats = oidc.stats()
    assert stats["revocation"] == 1
    assert stats["revocation_requests"] == [
        {"token_type_hint": "refresh_token", "client_auth": "basic"}
    ]

    # Revocation fault.
    oidc.faults(revocation=[{"mode": "status", "status": 503}])
    rev = httpx.post(oidc.revocation_endpoint, headers=client.auth, data={"token": "x"})
    assert rev.status_code == 503


def test_token_faults(oidc: OidcServer) -> None:
    client = new_client(oidc)
    rt = flow(oidc, client).tokens["refresh_token"]
    oidc.faults(
        token=[
            {"mode": "status", "status": 503, "retry_after": 2},
            {"mode": "invalid_grant"},
            {"mode": "delay", "ms": 1200},
            {"mode": "drop_after"},
        ]
    )
    r = refresh(oidc, client, rt)
    assert r.status_code == 503 and r.headers["retry-after"] == "2"
    assert r.json()["error"] == "temporarily_unavailable"
    r = refresh(oidc, client, rt)
    assert r.status_code == 400 and r.json() == {
        "error": "invalid_grant",
        "error_description": "grant request is invalid",
    }
    t0 = time.monotonic()
    r = refresh(oidc, client, rt)  # not consumed by the two faults above
    assert r.status_code == 200 and time.monotonic() - t0 >= 1.1
    rt = r.json()["refresh_token"]
    with pytest.raises(httpx.TransportError):
        refresh(oidc, client, rt)
    # The lost response consumed rt: retrying with it is reuse and kills the grant.
    assert refresh(oidc, client, rt).json()["error"] == "invalid_grant"
    assert oidc.stats()["token"]["refresh_token"] == 5


@pytest.mark.parametrize(
    "kind",
    [
        "wrong_nonce",
        "wrong_aud",
        "wrong_iss",
        "bad_signature",
        "alg_none",
        "expired",
        "missing_azp_multi_aud",
    ],
)
def test_id_token_defects(oidc: OidcServer, kind: str) -> None:
    client = new_client(oidc)
    oidc.id_token_defect(kind)
    f = flow(oidc, client)
    header, claims, _ = decode_jwt_unverified(f.tokens["id_token"])
    valid = signature_valid(oidc, f.tokens["id_token"])
    if kind == "bad_signature":
        assert not valid and claims["nonce"] == f.nonce
    elif kind == "alg_none":
        assert header["alg"] == "none" and f.tokens["id_token"].endswith(".")
    else:
        assert valid
    if kind == "wrong_nonce":
        assert claims["nonce"] != f.nonce
    if kind == "wrong_aud":
        assert claims["aud"] != client.client_id
    if kind == "wrong_iss":
        assert claims["iss"] == "https://evil.example"
    if kind == "expired":
        assert claims["exp"] < time.time()
    if kind == "missing_azp_multi_aud":
        assert claims["aud"] == [client.client_id, "other"] and "azp" not in claims
    # One-shot: the next response is clean.
    r = refresh(oidc, client, f.tokens["refresh_token"])
    assert signature_valid(oidc, r.json()["id_token"])


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("missing", None), ("foreign", "https://evil.example"), ("trailing_slash", "/")],
)
def test_iss_modes(oidc: OidcServer, mode: str, expected: str | None) -> None:
    client = new_client(oidc)
    oidc.iss_mode(mode)
    _, challenge = pkce_pair()
    url = oidc.authorization_url(client.client_id, REDIRECT_URI, code_challenge=challenge)
    outcome = oidc.authorize(url)
    assert outcome.code
    if expected == "/":
        expected = oidc.issuer + "/"
    assert outcome.iss == expected
    # One-shot.
    assert oidc.authorize(url).iss == oidc.issuer


def test_accounts_deny_ttl_and_account_revocation(oidc: OidcServer) -> None:
    oidc.revoke_account_grants("bob")  # the session's provider is shared: start from none
    client = new_client(oidc)
    oidc.set_account("bob")
    tokens = flow(oidc, client).tokens
    assert echo(oidc, tokens["access_token"]).json()["account"] == "bob"

    oidc.set_account("someone-new@x", deny=True)
    _, challenge = pkce_pair()
    outcome = oidc.authorize(
        oidc.authorization_url(client.client_id, REDIRECT_URI, code_challenge=challenge, state="s")
    )
    assert outcome.error == "access_denied" and outcome.state == "s"
    assert outcome.iss == oidc.issuer and outcome.code is None

    oidc.set_account("carol")
    # a few seconds, not one: on a loaded machine the echo right after the flow came more
    # than a second late (CI rehearsal: 401 where 200 was due)
    oidc.set_ttl(AccessToken=4)
    minted = time.monotonic()
    carol = flow(oidc, client).tokens
    assert carol["expires_in"] == 4
    assert echo(oidc, carol["access_token"]).status_code == 200
    time.sleep(max(0.0, minted + 5.05 - time.monotonic()))
    assert echo(oidc, carol["access_token"]).status_code == 401

    # Revoke bob's grants at the provider: his tokens die, carol's don't.
    assert oidc.revoke_account_grants("bob") == 1
    assert echo(oidc, tokens["access_token"]).status_code == 401
    assert refresh(oidc, client, tokens["refresh_token"]).json()["error"] == "invalid_grant"
    assert refresh(oidc, client, carol["refresh_token"]).status_code == 200

    oidc.reset()
    stats = oidc.stats()
    assert stats["token"]["total"] == 0 and stats["api"] == 0


def test_post_and_public_clients(oidc: OidcServer) -> None:
    client = new_client(oidc, "client_secret_post")
    code, verifier, _ = login(oidc, client)
    response = httpx.post(
        oidc.token_endpoint,
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier,
            "client_id": client.client_id,
            "client_secret": client.client_secret,
        },
    )
    assert response.status_code == 200 and response.json()["refresh_token"]

    public_id, public_secret = oidc.register_client([REDIRECT_URI], "none")
    assert public_secret == ""
    public = Client(public_id, "")
    code, verifier, _ = login(oidc, public)
    response = httpx.post(
        oidc.token_endpoint,
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier,
            "client_id": public_id,
        },
    )
    assert response.status_code == 200
    assert [r["client_auth"] for r in oidc.stats()["token_requests"]] == ["post", "none"]


def test_authorize_driver_follows_stop_origin_and_stops_on_html(oidc: OidcServer) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Callback(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/oauth/callback?"):
                self.send_response(302)
                self.send_header("Location", "https://app.example/done?ok=1")
            else:
                self.send_response(400)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Callback)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        origin = f"http://127.0.0.1:{httpd.server_address[1]}"
        callback = f"{origin}/oauth/callback"
        client_id, _ = oidc.register_client([callback])
        _, challenge = pkce_pair()
        url = oidc.authorization_url(client_id, callback, code_challenge=challenge, state="s")
        outcome = authorize(url, stop_origin=origin)
        assert outcome.final_url == "https://app.example/done?ok=1"
        assert outcome.query == {"ok": "1"}
        assert outcome.responses[-1][1].startswith(callback + "?code=")
        # Without stop_origin the driver stops at the callback itself.
        outcome = authorize(url)
        assert outcome.final_url is not None and outcome.final_url.startswith(callback)
        assert outcome.code and outcome.iss == oidc.issuer
        # An unregistered redirect_uri: the provider answers an HTML error page.
        bad = oidc.authorization_url(client_id, REDIRECT_URI, code_challenge=challenge)
        outcome = authorize(bad, stop_origin=origin)
        assert outcome.final_url is None and outcome.last_response.status_code == 400
        assert "text/html" in outcome.last_response.headers["content-type"]
    finally:
        httpd.shutdown()
        httpd.server_close()


def _raw_chunks(url: str, **kw: Any) -> tuple[int, list[bytes]]:
    """The body as the socket delivered it (one entry per read)."""
    with httpx.stream("POST" if "data" in kw else "GET", url, timeout=15, **kw) as r:
        return r.status_code, list(r.iter_raw())


def test_split_fault_sends_the_answer_in_small_pieces(oidc: OidcServer) -> None:
    client = new_client(oidc)
    rt = flow(oidc, client).tokens["refresh_token"]
    oidc.faults(token=[{"mode": "split", "chunk": 7, "pause_ms": 15}])
    t0 = time.monotonic()
    status, chunks = _raw_chunks(
        oidc.token_endpoint,
        headers=client.auth,
        data={"grant_type": "refresh_token", "refresh_token": rt},
    )
    assert status == 200 and len(chunks) > 10, len(chunks)
    assert time.monotonic() - t0 >= 0.15
    import json

    tokens = json.loads(b"".join(chunks))
    assert refresh(oidc, client, tokens["refresh_token"]).status_code == 200
    assert oidc.stats()["faults"] == {"token": {"split": 1}}


def test_split_and_status_faults_on_discovery_jwks_userinfo(oidc: OidcServer) -> None:
    oidc.faults(discovery=[{"mode": "split", "chunk": 5, "pause_ms": 1}], jwks=[{"mode": "status", "status": 502}])
    status, chunks = _raw_chunks(oidc.discovery_url)
    assert status == 200 and len(chunks) > 10
    assert httpx.get(oidc.jwks_uri).status_code == 502
    assert httpx.get(oidc.jwks_uri).status_code == 200
    client = new_client(oidc)
    at = flow(oidc, client).tokens["access_token"]
    oidc.faults(userinfo=[{"mode": "split", "chunk": 3, "pause_ms": 1}])
    status, chunks = _raw_chunks(oidc.userinfo_endpoint, headers={"Authorization": f"Bearer {at}"})
    assert status == 200 and len(chunks) > 3


def test_truncate_fault_cuts_a_processed_answer_short(oidc: OidcServer) -> None:
    client = new_client(oidc)
    rt = flow(oidc, client).tokens["refresh_token"]
    oidc.faults(token=[{"mode": "truncate", "bytes": 40}])
    with pytest.raises(httpx.TransportError):
        refresh(oidc, client, rt)
    # processed: the refresh token was consumed, presenting it again is reuse
    assert refresh(oidc, client, rt).json()["error"] == "invalid_grant"


def test_hold_fault_holds_back_a_processed_answer_until_released(oidc: OidcServer) -> None:
    import threading

    client = new_client(oidc)
    rt = flow(oidc, client).tokens["refresh_token"]
    oidc.faults(token=[{"mode": "hold"}])
    got: list[httpx.Response] = []
    t = threading.Thread(target=lambda: got.append(refresh(oidc, client, rt)))
    t.start()
    time.sleep(0.8)
    assert not got, "held back"
    assert oidc.release() == 1
    t.join(10)
    assert got[0].status_code == 200
    new_rt = got[0].json()["refresh_token"]
    oidc.faults(token=[{"mode": "hold", "ms": 300, "then": "drop"}])
    with pytest.raises(httpx.TransportError):
        refresh(oidc, client, new_rt)
    assert refresh(oidc, client, new_rt).json()["error"] == "invalid_grant"


def test_fault_policy_is_sticky_until_cleared(oidc: OidcServer) -> None:
    client = new_client(oidc)
    rt = flow(oidc, client).tokens["refresh_token"]
    oidc.fault_policy(token={"mode": "status", "status": 503, "retry_after": 1, "probability": 1})
    for _ in range(3):
        assert refresh(oidc, client, rt).status_code == 503
    oidc.faults(token=[{"mode": "none"}])  # the queue goes first
    r = refresh(oidc, client, rt)
    assert r.status_code == 200
    oidc.fault_policy(token=None)
    assert refresh(oidc, client, r.json()["refresh_token"]).status_code == 200
    assert oidc.stats()["faults"]["token"] == {"status": 3}
    with pytest.raises(ValueError):
        oidc.fault_policy(nope={"mode": "status"})
