from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import pytest
from sdk_fakes import API_KEY, BASE_URL, FakeVault, Sleeps

from grantkeeper.client import (
    AccessToken,
    Client,
    ConnectSession,
    Grant,
    Page,
    Revocation,
    WebhookEndpoint,
)


def test_constructor_validation(vault: FakeVault) -> None:
    with pytest.raises(ValueError, match="base_url"):
        Client("vault.test", API_KEY)
    with pytest.raises(ValueError, match="api_key"):
        Client(BASE_URL, "")
    with pytest.raises(ValueError, match="either"):
        Client(BASE_URL, API_KEY, transport=vault.transport(), http_client=httpx.Client())


def test_requests_carry_key_and_json_headers(client: Client, vault: FakeVault) -> None:
    client.providers.list()
    request = vault.requests[-1]
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.headers["accept"] == "application/json"
    assert request.headers["user-agent"].startswith("grantkeeper-python/")
    assert str(request.url) == f"{BASE_URL}/v1/providers"


def test_base_url_trailing_slash(vault: FakeVault) -> None:
    with Client(BASE_URL + "/", API_KEY, transport=vault.transport()) as client:
        client.providers.get("google")
    assert str(vault.requests[-1].url) == f"{BASE_URL}/v1/providers/google"


def test_providers(client: Client, vault: FakeVault) -> None:
    providers = client.providers.list(category="productivity", q="goo")
    assert [p.name for p in providers] == ["google"]
    assert vault.requests[-1].url.params["q"] == "goo"
    google = client.providers.get("google")
    assert google.display_name == "Google"
    assert google.categories == ("productivity",)
    assert google.extra["api_base_url"] == "https://www.googleapis.com"


def test_integrations(client: Client, vault: FakeVault) -> None:
    integration = client.integrations.put(
        "google-mail",
        provider="google",
        client_id="cid",
        client_secret="csecret",
        scopes=["email"],
        return_urls=["https://app.example/"],
        token_export="once",
    )
    body = json.loads(vault.requests[-1].content)
    assert body == {
        "provider": "google",
        "client_id": "cid",
        "client_secret": "csecret",
        "scopes": ["email"],
        "return_urls": ["https://app.example/"],
        "token_export": "once",
    }
    assert vault.requests[-1].method == "PUT"
    assert integration.client_secret_set is True
    assert integration.callback_url == "http://vault.test/oauth/callback"
    assert integration.scopes == ("email",)
    assert integration.created_at == datetime(2026, 5, 1, 12, tzinfo=UTC)
    assert "csecret" not in repr(integration)
    assert client.integrations.get("google-mail") == integration
    assert [i.id for i in client.integrations.list()] == ["google-mail"]
    client.integrations.delete("google-mail")
    assert client.integrations.list() == []


def test_integration_extra_fields_pass_through(client: Client, vault: FakeVault) -> None:
    client.integrations.put(
        "x", provider="oidc", client_id="c", issuer="https://id.example", pkce=True
    )
    body = json.loads(vault.requests[-1].content)
    assert body == {
        "provider": "oidc",
        "client_id": "c",
        "issuer": "https://id.example",
        "pkce": True,
    }


def test_path_segments_are_quoted(client: Client, vault: FakeVault) -> None:
    client.grants.list()  # warm up
    with pytest.raises(Exception):  # noqa: B017 - 404 from the fake
        client.grants.get("a/b?c")
    assert vault.requests[-1].url.raw_path == b"/v1/grants/a%2Fb%3Fc"
    with pytest.raises(ValueError):
        client.grants.get("")


def test_connect(client: Client, vault: FakeVault) -> None:
    session = client.connect.create_session(
        "google-mail", "user-1", "https://app.example/done", scopes=["email"]
    )
    assert isinstance(session, ConnectSession)
    assert json.loads(vault.requests[-1].content) == {
        "integration_id": "google-mail",
        "user_id": "user-1",
        "return_to": "https://app.example/done",
        "scopes": ["email"],
    }
    assert session.connect_url.endswith(session.id)
    assert session.expires_at == datetime(2026, 5, 1, 12, 10, tzinfo=UTC)
    status = client.connect.get_session(session.id)
    assert status.status == "pending" and status.grant_id is None
    tokens = client.connect.export_tokens(session.id)
    assert tokens.access_token == "ya29.exported"
    assert tokens.refresh_token == "1//refresh-exported"
    assert "ya29.exported" not in repr(tokens) and "refresh-exported" not in repr(tokens)
    with pytest.raises(TypeError):
        client.connect.create_session("i", "u", "https://app.example/", scopes="email")


def test_grants_crud(client: Client, vault: FakeVault) -> None:
    grant = client.grants.import_(
        "google-mail",
        "user-9",
        "1//refresh",
        access_token="ya29.a",
        expires_at=datetime(2026, 5, 1, 13, tzinfo=UTC),
        scopes=["email"],
    )
    assert json.loads(vault.requests[-1].content) == {
        "integration_id": "google-mail",
        "user_id": "user-9",
        "refresh_token": "1//refresh",
        "access_token": "ya29.a",
        "expires_at": "2026-05-01T13:00:00Z",
        "scopes": ["email"],
        "verify": True,
    }
    assert isinstance(grant, Grant)
    assert grant.is_active and grant.user_id == "user-9"
    assert grant.created_at.tzinfo is not None
    assert grant.last_refreshed_at == datetime(2026, 5, 1, 12, tzinfo=UTC)
    assert client.grants.get(grant.id) == grant

    session = client.grants.reconnect(grant.id, "https://app.example/again")
    assert vault.requests[-1].url.path == f"/v1/grants/{grant.id}/reconnect"
    assert json.loads(vault.requests[-1].content) == {"return_to": "https://app.example/again"}
    assert session.connect_url

    revocation = client.grants.delete(grant.id)
    assert revocation == Revocation(grant.id, "revoked", "succeeded")
    assert client.grants.get(grant.id).status == "revoked"


def test_import_rejects_naive_datetimes(client: Client) -> None:
    with pytest.raises(ValueError, match="timezone"):
        client.grants.import_("i", "u", "r", expires_at=datetime(2026, 1, 1))  # noqa: DTZ001


def test_token(client: Client, vault: FakeVault) -> None:
    gid = vault.add_grant()
    token = client.grants.token(gid, min_ttl=300)
    assert isinstance(token, AccessToken)
    assert vault.token_calls[-1] == {"min_ttl": 300}
    assert token.access_token == "at-1"
    assert token.token_type == "Bearer"
    assert token.expires_in == 3600
    assert token.expires_at == datetime(2026, 5, 1, 13, tzinfo=UTC)
    assert token.scopes == ("openid", "email")
    assert token.grant_id == gid
    assert "at-1" not in repr(token) and "at-1" not in str(token)
    assert token.authorization == "Bearer at-1"

    forced = client.token(gid, force_refresh=True)
    assert vault.token_calls[-1] == {"force_refresh": True}
    assert forced.access_token == "at-2"
    client.token(gid)
    assert vault.token_calls[-1] == {}
    with pytest.raises(ValueError):
        client.token(gid, min_ttl=-1)


def test_list_and_iter_grants(client: Client, vault: FakeVault) -> None:
    ids = [vault.add_grant(f"g{i:02d}") for i in range(25)]
    vault.add_grant("other", integration_id="slack")
    page = client.grants.list(integration_id="google-mail", limit=10)
    assert isinstance(page, Page)
    assert [g.id for g in page] == ids[:10]
    assert len(page) == 10 and page.has_more and page.next_offset == 10 and page.offset == 0
    assert vault.requests[-1].url.params["integration_id"] == "google-mail"
    assert vault.requests[-1].url.params["limit"] == "10"

    vault.requests.clear()
    assert [g.id for g in client.grants.iter(integration_id="google-mail", limit=10)] == ids
    assert [r.url.params.get("offset") for r in vault.requests] == [None, "10", "20"]

    last = client.grants.list(integration_id="google-mail", limit=10, offset=20)
    assert last.next_offset is None and not last.has_more
    assert [g.id for g in client.grants.iter(status="active")] == [*ids, "other"]


def test_webhook_endpoints(client: Client) -> None:
    endpoint = client.webhook_endpoints.create("https://app.example/hooks", ["grant.invalid"])
    assert isinstance(endpoint, WebhookEndpoint)
    assert endpoint.secret == "whsec_c2VjcmV0"
    assert "whsec_" not in repr(endpoint)
    assert endpoint.events == ("grant.invalid",)
    listed = client.webhook_endpoints.list()
    assert [e.id for e in listed] == [endpoint.id]
    assert listed[0].secret is None
    assert client.webhook_endpoints.get(endpoint.id).url == "https://app.example/hooks"
    client.webhook_endpoints.delete(endpoint.id)
    assert client.webhook_endpoints.list() == []


def test_audit_events(client: Client, vault: FakeVault) -> None:
    page = client.audit_events.list(grant_id="g1", limit=10)
    event = page.data[0]
    assert event.action == "grant.token_issued"
    assert event.grant_id == "g1" and event.api_key_id == "key-1"
    assert event.at == datetime(2026, 5, 1, 12, tzinfo=UTC)
    assert vault.requests[-1].url.params["limit"] == "10"


def test_proxy(client: Client, vault: FakeVault) -> None:
    gid = vault.add_grant()
    response = client.proxy.request(
        gid, "post", "/gmail/v1/users/me/messages", params={"q": "x"}, json={"a": 1}
    )
    assert isinstance(response, httpx.Response)
    assert response.json() == {
        "method": "POST",
        "path": "gmail/v1/users/me/messages",
        "query": "q=x",
        "body": {"a": 1},
    }
    assert vault.requests[-1].url.path == f"/v1/proxy/{gid}/gmail/v1/users/me/messages"
    assert vault.requests[-1].headers["authorization"] == f"Bearer {API_KEY}"

    # Provider errors come back as responses, not exceptions.
    missing = client.proxy.get(gid, "missing")
    assert missing.status_code == 404


def test_proxy_keeps_vault_key_and_raises_grant_problems(client: Client, vault: FakeVault) -> None:
    from grantkeeper.client import GrantInvalidError

    gid = vault.add_grant()
    client.proxy.get(gid, "x", headers={"Authorization": "Bearer nope", "X-Extra": "1"})
    assert vault.requests[-1].headers["authorization"] == f"Bearer {API_KEY}"
    assert vault.requests[-1].headers["x-extra"] == "1"
    bad = vault.add_grant(status="invalid")
    with pytest.raises(GrantInvalidError):
        client.proxy.get(bad, "x")


def test_bring_your_own_http_client(vault: FakeVault) -> None:
    http = httpx.Client(transport=vault.transport())
    with Client(BASE_URL, API_KEY, http_client=http) as client:
        assert client.providers.list()
    assert not http.is_closed
    http.close()


def test_close_closes_own_http_client(vault: FakeVault, sleeps: Sleeps) -> None:
    client = Client(BASE_URL, API_KEY, transport=vault.transport())
    client.close()
    assert client._http.is_closed
