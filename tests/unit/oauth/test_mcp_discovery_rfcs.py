"""RFC 9728, RFC 8414 and RFC 7591 helpers used by MCP discovery (I/O-free)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from grantkeeper.oauth import rfc7591, rfc8414, rfc9728

# ---------------------------------------------------------------- RFC 9728


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        ("https://mcp.example.com", "https://mcp.example.com/.well-known/oauth-protected-resource"),
        ("https://mcp.example.com/", "https://mcp.example.com/.well-known/oauth-protected-resource"),
        ("https://mcp.example.com/mcp", "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"),
        ("https://h.example/a/b/", "https://h.example/.well-known/oauth-protected-resource/a/b/"),
        ("https://h.example:8443/mcp?x=1", "https://h.example:8443/.well-known/oauth-protected-resource/mcp?x=1"),
    ],
)
def test_well_known_url_inserts_between_host_and_path(resource: str, expected: str) -> None:
    assert rfc9728.well_known_url(resource) == expected


def test_bearer_challenge_with_quoted_and_token_params() -> None:
    header = (
        'Basic realm="x", Bearer error="invalid_token", '
        'resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/mcp", '
        'scope="files:read files:write", Error=ignored_duplicate'
    )
    params = rfc9728.bearer_challenge([header])
    assert params == {
        "error": "invalid_token",
        "resource_metadata": "https://mcp.example.com/.well-known/oauth-protected-resource/mcp",
        "scope": "files:read files:write",
    }


def test_challenges_across_header_values_and_escapes() -> None:
    got = rfc9728.parse_challenges(['Newauth realm="a\\"pps"', "bearer resource_metadata=tok"])
    assert got == [("newauth", {"realm": 'a"pps'}), ("bearer", {"resource_metadata": "tok"})]
    assert rfc9728.bearer_challenge(['Bearer realm="unterminated']) == {}
    assert rfc9728.bearer_challenge(["Basic"]) is None
    assert rfc9728.bearer_challenge(['=x, Bearer a="b"']) is None


@given(st.text(max_size=200))
def test_challenge_parser_never_raises(value: str) -> None:
    rfc9728.parse_challenges([value])


def test_resource_must_be_identical() -> None:
    doc: dict[str, Any] = {"resource": "https://mcp.example.com/mcp", "authorization_servers": ["https://as.example.com"]}
    meta = rfc9728.parse_metadata(doc, expected_resource="https://mcp.example.com/mcp")
    assert meta.authorization_servers == ("https://as.example.com",)
    for other in ("https://mcp.example.com/mcp/", "https://mcp.example.com", "https://evil.example/mcp"):
        with pytest.raises(rfc9728.InvalidResourceMetadata, match="RFC 9728"):
            rfc9728.parse_metadata(doc, expected_resource=other)
    with pytest.raises(rfc9728.InvalidResourceMetadata, match="authorization_servers"):
        rfc9728.parse_metadata({"resource": "https://r.example"}, expected_resource="https://r.example")
    with pytest.raises(rfc9728.InvalidResourceMetadata):
        rfc9728.parse_metadata(
            {"resource": "https://r.example", "authorization_servers": "https://as.example"},
            expected_resource="https://r.example",
        )


# ---------------------------------------------------------------- RFC 8414


def test_metadata_urls_follow_rfc8414_then_openid() -> None:
    assert rfc8414.metadata_urls("https://as.example.com") == [
        "https://as.example.com/.well-known/oauth-authorization-server",
        "https://as.example.com/.well-known/openid-configuration",
    ]
    assert rfc8414.metadata_urls("https://as.example.com/tenant1") == [
        "https://as.example.com/.well-known/oauth-authorization-server/tenant1",
        "https://as.example.com/.well-known/openid-configuration/tenant1",
        "https://as.example.com/tenant1/.well-known/openid-configuration",
    ]
    with pytest.raises(rfc8414.InvalidServerMetadata):
        rfc8414.metadata_urls("https://as.example.com/?q=1")


def _as_doc(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "issuer": "https://as.example.com",
        "authorization_endpoint": "https://as.example.com/authorize",
        "token_endpoint": "https://as.example.com/token",
        "registration_endpoint": "https://as.example.com/register",
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "client_id_metadata_document_supported": True,
    }
    doc.update(over)
    return {k: v for k, v in doc.items() if v is not None}


def test_server_metadata_checks() -> None:
    meta = rfc8414.parse_metadata(_as_doc(), expected_issuer="https://as.example.com", allow_private=False)
    assert meta.client_id_metadata_document_supported and meta.registration_endpoint
    with pytest.raises(rfc8414.InvalidServerMetadata, match="issuer"):
        rfc8414.parse_metadata(_as_doc(issuer="https://evil.example"), expected_issuer="https://as.example.com", allow_private=False)
    with pytest.raises(rfc8414.InvalidServerMetadata, match="issuer"):
        rfc8414.parse_metadata(_as_doc(issuer="https://as.example.com/"), expected_issuer="https://as.example.com", allow_private=False)
    with pytest.raises(rfc8414.InvalidServerMetadata, match="S256"):
        rfc8414.parse_metadata(_as_doc(code_challenge_methods_supported=None), expected_issuer="https://as.example.com", allow_private=False)
    with pytest.raises(rfc8414.InvalidServerMetadata, match="code flow"):
        rfc8414.parse_metadata(_as_doc(response_types_supported=["token"]), expected_issuer="https://as.example.com", allow_private=False)
    with pytest.raises(rfc8414.InvalidServerMetadata, match="token_endpoint"):
        rfc8414.parse_metadata(_as_doc(token_endpoint=None), expected_issuer="https://as.example.com", allow_private=False)


@pytest.mark.parametrize(
    ("name", "url"),
    [
        ("token_endpoint", "http://10.0.0.5/token"),
        ("authorization_endpoint", "https://127.0.0.1/authorize"),
        ("registration_endpoint", "https://[::1]/register"),
        ("revocation_endpoint", "https://169.254.169.254/latest"),
        ("jwks_uri", "https://localhost/jwks"),
        ("token_endpoint", "http://as.example.com/token"),
    ],
)
def test_endpoints_on_private_addresses_are_refused(name: str, url: str) -> None:
    with pytest.raises(rfc8414.InvalidServerMetadata):
        rfc8414.parse_metadata(_as_doc(**{name: url}), expected_issuer="https://as.example.com", allow_private=False)
    if url.startswith("https://") or "10.0.0.5" in url:
        rfc8414.parse_metadata(_as_doc(**{name: url}), expected_issuer="https://as.example.com", allow_private=True)


# ---------------------------------------------------------------- RFC 7591


def test_registration_request_asks_for_code_and_refresh() -> None:
    body = rfc7591.registration_request(
        redirect_uri="https://vault.example/oauth/callback", auth_method="client_secret_basic", client_name="grantkeeper"
    )
    assert body["grant_types"] == ["authorization_code", "refresh_token"]
    assert body["redirect_uris"] == ["https://vault.example/oauth/callback"]
    assert body["response_types"] == ["code"]


def test_auth_method_choice() -> None:
    assert rfc7591.choose_auth_method([]) == "client_secret_basic"
    assert rfc7591.choose_auth_method(["private_key_jwt", "client_secret_post", "none"]) == "client_secret_post"
    assert rfc7591.choose_auth_method(["none"]) == "none"
    with pytest.raises(rfc7591.InvalidRegistration):
        rfc7591.choose_auth_method(["private_key_jwt"])


def test_registration_response() -> None:
    reg = rfc7591.parse_response(
        {"client_id": "abc", "client_secret": "s3cr3t-value", "registration_access_token": "rat-1"},
        requested_method="client_secret_basic",
    )
    assert reg.client_id == "abc" and reg.token_endpoint_auth_method == "client_secret_basic"
    assert "s3cr3t" not in repr(reg) and "rat-1" not in repr(reg)
    with pytest.raises(rfc7591.InvalidRegistration, match="no secret"):
        rfc7591.parse_response({"client_id": "abc"}, requested_method="client_secret_basic")
    with pytest.raises(rfc7591.InvalidRegistration, match="client_id"):
        rfc7591.parse_response({"client_secret": "x"}, requested_method="none")
    with pytest.raises(rfc7591.InvalidRegistration, match="cannot use"):
        rfc7591.parse_response({"client_id": "a", "token_endpoint_auth_method": "tls_client_auth"}, requested_method="none")
    assert rfc7591.parse_response({"client_id": "a"}, requested_method="none").client_secret is None
