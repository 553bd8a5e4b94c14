"""The pure parts of the MCP kind: the client ID metadata document and the authorization
request parameters."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from grantkeeper.config import Settings
from grantkeeper.kinds import mcp
from grantkeeper.store.records import IntegrationRecord


def _record(**m: Any) -> IntegrationRecord:
    return IntegrationRecord(
        environment_id="e",
        id="tools",
        provider="mcp",
        display_name=None,
        client_id="c",
        client_secret_ct=None,
        scopes=(),
        return_urls=("https://app.example/done",),
        authorization_params={},
        issuer="https://as.example.com",
        endpoints={},
        settings={},
        api_base_url="https://mcp.example.com/mcp",
        token_export="never",
        connect_page=False,
        created_at=0.0,
        updated_at=0.0,
        mcp={"server_url": "https://mcp.example.com/mcp", **m},
    )


def test_client_metadata_document_names_itself() -> None:
    s = Settings(public_url="https://vault.example")
    doc = mcp.client_metadata_document(s)
    assert doc["client_id"] == "https://vault.example/oauth/client-metadata.json"
    assert doc["client_id"] == mcp.client_metadata_url(s)
    assert doc["redirect_uris"] == ["https://vault.example/oauth/callback"]
    assert doc["grant_types"] == ["authorization_code", "refresh_token"]
    assert doc["token_endpoint_auth_method"] == "none"


def test_resource_always_and_metadata_scopes_when_none_named() -> None:
    rec = _record(default_scopes=["files:read"], offline_access=False)
    assert mcp.authorization_params(rec, (), consent=True) == {
        "resource": "https://mcp.example.com/mcp",
        "scope": "files:read",
    }
    assert mcp.authorization_params(rec, ("a", "b"), consent=False)["scope"] == "a b"
    assert "scope" not in mcp.authorization_params(_record(), (), consent=False)


def test_offline_access_and_consent_for_a_refresh_token() -> None:
    rec = _record(default_scopes=["mcp:tools"], offline_access=True, prompt_consent=True)
    first = mcp.authorization_params(rec, (), consent=True)
    assert first["scope"] == "mcp:tools offline_access" and first["prompt"] == "consent"
    again = mcp.authorization_params(rec, (), consent=False)
    assert "prompt" not in again and again["scope"] == "mcp:tools offline_access"
    no_prompt = replace(rec, mcp={**(rec.mcp or {}), "prompt_consent": False})
    assert "prompt" not in mcp.authorization_params(no_prompt, (), consent=True)


def test_view_reports_the_contract_members() -> None:
    rec = _record(resource="https://mcp.example.com/mcp", authorization_server="https://as.example.com", registration="dcr")
    view = mcp.view(rec)
    assert view is not None
    assert {k: view[k] for k in ("resource", "authorization_server", "registration")} == {
        "resource": "https://mcp.example.com/mcp",
        "authorization_server": "https://as.example.com",
        "registration": "dcr",
    }
    assert mcp.view(replace(rec, mcp=None)) is None


def test_the_mcp_kind_is_an_authorization_code_kind() -> None:
    from grantkeeper.kinds import kind_for
    from grantkeeper.kinds.authorization_code import AuthorizationCode

    kind = kind_for("mcp")
    assert isinstance(kind, mcp.McpKind) and isinstance(kind, AuthorizationCode)
    assert kind.mode == "mcp" and kind.has_access_token
