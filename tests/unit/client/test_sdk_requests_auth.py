"""client.requests_auth(): the same adapter for the requests library."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
from sdk_fakes import FakeVault

from grantkeeper.client import Client

requests = pytest.importorskip("requests")
from requests.adapters import BaseAdapter  # noqa: E402


class ProviderAdapter(BaseAdapter):
    """A requests transport answering like a provider that accepts one token."""

    def __init__(self, accepts: Callable[[], str | None]) -> None:
        super().__init__()
        self.accepts = accepts
        self.seen: list[tuple[str | None, bytes | None]] = []

    def send(self, request: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        body = request.body
        if hasattr(body, "read"):
            body = body.read()
        if isinstance(body, str):
            body = body.encode()
        header = request.headers.get("Authorization")
        self.seen.append((header, body))
        response = requests.Response()
        response.status_code = 200 if header == f"Bearer {self.accepts()}" else 401
        response._content = b'{"ok": true}' if response.status_code == 200 else b"{}"
        response.headers["Content-Type"] = "application/json"
        response.request = request
        response.url = request.url
        response.connection = self
        return response

    def close(self) -> None:
        pass


def session_for(client: Client, vault: FakeVault, grant_id: str) -> tuple[Any, ProviderAdapter]:
    adapter = ProviderAdapter(lambda: vault.current_token.get(grant_id))
    session = requests.Session()
    session.mount("https://", adapter)
    session.auth = client.requests_auth(grant_id)
    return session, adapter


def test_stamps_and_caches(client: Client, vault: FakeVault) -> None:
    gid = vault.add_grant()
    session, adapter = session_for(client, vault, gid)
    assert session.get("https://api.provider.test/me").json() == {"ok": True}
    assert session.get("https://api.provider.test/me").status_code == 200
    assert [h for h, _ in adapter.seen] == ["Bearer at-1", "Bearer at-1"]
    assert len(vault.token_calls) == 1


def test_refresh_on_401_replays_body(client: Client, vault: FakeVault) -> None:
    gid = vault.add_grant()
    session, adapter = session_for(client, vault, gid)
    session.get("https://api.provider.test/me")
    vault.current_token[gid] = "rotated"
    response = session.post("https://api.provider.test/x", data=b"payload")
    assert response.status_code == 200
    assert adapter.seen[-2:] == [("Bearer at-1", b"payload"), ("Bearer at-2", b"payload")]
    assert [r.status_code for r in response.history] == [401]
    assert vault.token_calls[-1] == {"min_ttl": 60, "force_refresh": True}


def test_rewinds_file_bodies(client: Client, vault: FakeVault) -> None:
    gid = vault.add_grant()
    session, adapter = session_for(client, vault, gid)
    session.get("https://api.provider.test/me")
    vault.current_token[gid] = "rotated"
    response = session.put("https://api.provider.test/x", data=io.BytesIO(b"file-body"))
    assert response.status_code == 200
    assert [b for _, b in adapter.seen[-2:]] == [b"file-body", b"file-body"]


def test_retries_only_once(client: Client, vault: FakeVault) -> None:
    gid = vault.add_grant()
    adapter = ProviderAdapter(lambda: None)
    session = requests.Session()
    session.mount("https://", adapter)
    session.auth = client.requests_auth(gid)
    assert session.get("https://api.provider.test/me").status_code == 401
    assert len(adapter.seen) == 2


def test_repr(client: Client) -> None:
    auth = client.requests_auth("g1")
    assert repr(auth) == "GrantRequestsAuth(grant_id='g1')"


def test_missing_requests_gives_clear_error(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "requests", None)
    monkeypatch.delitem(sys.modules, "grantkeeper.client._requests_auth", raising=False)
    with pytest.raises(ImportError, match="pip install requests"):
        client.requests_auth("g1")
