"""The admin UI's integration form for every credential kind, over plain HTTP (no browser),
against a real server on SQLite and PostgreSQL.

The form is submitted the way a browser would: every control the page renders, with the
value the page shows, plus what the test types in.
"""

from __future__ import annotations

from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any

import pytest
from tests.integration.test_admin_ui_http import Browserless, signed_in
from tests.support.gk import Server

API_KEY_STAMP = {"in": "header", "name": "X-Api-Key", "template": "{api_key}"}
VERIFY = {"method": "GET", "path": "/v1/me", "expect_status": 200}
CC_SECRET = "cc-UI-client-secret-0123456789"
PEM_MARK = "-----BEGIN PRIVATE KEY-----"


@pytest.fixture
def ui(gk: Server) -> Iterator[Browserless]:
    client = Browserless(gk)
    yield client
    client.close()


class _FormFields(HTMLParser):
    """The successful controls of the first ``<form>`` posting to ``action``, as a browser
    would send them (checked boxes only, the selected option, textarea text)."""

    def __init__(self, action: str) -> None:
        super().__init__(convert_charrefs=True)
        self.action = action
        self.inside = False
        self.done = False
        self.fields: list[tuple[str, str]] = []
        self._select: str | None = None
        self._select_value: str | None = None
        self._first_option: str | None = None
        self._textarea: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form" and not self.done and a.get("action") == self.action:
            self.inside = True
        if not self.inside:
            return
        if tag == "input" and a.get("name") and "disabled" not in a:
            kind = a.get("type", "text")
            if kind in ("checkbox", "radio") and "checked" not in a:
                return
            self.fields.append((a["name"], a.get("value", "on" if kind == "checkbox" else "")))
        elif tag == "select" and "disabled" not in a:
            self._select, self._select_value, self._first_option = a.get("name"), None, None
        elif tag == "option" and self._select is not None:
            value = a.get("value", "")
            if self._first_option is None:
                self._first_option = value
            if "selected" in a:
                self._select_value = value
        elif tag == "textarea" and "disabled" not in a:
            self._textarea, self._text = a.get("name"), []

    def handle_data(self, data: str) -> None:
        if self._textarea is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if not self.inside:
            return
        if tag == "select" and self._select:
            value = self._select_value if self._select_value is not None else self._first_option
            self.fields.append((self._select, value or ""))
            self._select = None
        elif tag == "textarea" and self._textarea:
            # the HTML parser keeps the newline after <textarea> that browsers drop
            self.fields.append((self._textarea, "".join(self._text).removeprefix("\n")))
            self._textarea = None
        elif tag == "form":
            self.inside, self.done = False, True


def form_fields(html: str, action: str) -> dict[str, str]:
    parser = _FormFields(action)
    parser.feed(html)
    assert parser.done, f"no form posting to {action}"
    return dict(parser.fields)


def put(server: Server, iid: str, body: dict[str, Any]) -> dict[str, Any]:
    with server.client() as c:
        r = c.put(f"/v1/integrations/{iid}", json=body)
        assert r.status_code in (200, 201), r.text
        got = c.get(f"/v1/integrations/{iid}")
    assert got.status_code == 200, got.text
    data: dict[str, Any] = got.json()
    return data


def get(server: Server, iid: str) -> dict[str, Any]:
    with server.client() as c:
        r = c.get(f"/v1/integrations/{iid}")
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


def save_unchanged(ui: Browserless, iid: str, **changes: str) -> Any:
    """Open the edit page, submit what it shows (plus ``changes``), as a browser would."""
    page = f"/ui/integrations/{iid}"
    r = ui.get(page)
    assert r.status_code == 200, r.text[:500]
    fields = form_fields(r.text, page)
    fields.update(changes)
    posted = ui.http.post(page, data=fields)
    ui.pages.append(posted.text)
    return posted


# --------------------------------------------------------------------------- the defect


def test_saving_an_edit_keeps_what_the_form_does_not_show(gk: Server, ui: Browserless) -> None:
    """Data loss: saving a non-code integration from the edit form wiped its stamp,
    verification request, token parameters and health probe interval."""
    signed_in(ui)
    before_key = put(
        gk,
        "keyed",
        {
            "provider": "api_key",
            "api_base_url": "http://127.0.0.1:9/api",
            "stamp": API_KEY_STAMP,
            "verify_request": VERIFY,
            "health_probe_interval": 3600,
        },
    )
    before_cc = put(
        gk,
        "svc",
        {
            "provider": "client_credentials",
            "client_id": "svc-client",
            "client_secret": CC_SECRET,
            "endpoints": {"token_url": "http://127.0.0.1:9/token"},
            "scopes": ["api:read"],
            "token_params": {"audience": "https://api.example"},
        },
    )
    for iid, before in (("keyed", before_key), ("svc", before_cc)):
        r = save_unchanged(ui, iid, display_name=f"{iid} renamed")
        assert r.status_code == 303, r.text[:2000]
        after = get(gk, iid)
        assert after["display_name"] == f"{iid} renamed"
        for name in ("stamp", "verify_request", "token_params", "health_probe_interval", "endpoints",
                     "client_secret_set", "client_id", "scopes", "api_base_url"):  # fmt: skip
            assert after[name] == before[name], (iid, name, before[name], after[name])
    assert CC_SECRET not in "".join(ui.pages)


# --------------------------------------------------------------------------- every kind


def _pem() -> str:
    from joserfc.jwk import RSAKey

    pem: str = RSAKey.generate_key(2048, private=True).as_pem(private=True).decode()
    return pem


CC_TOKEN_URL = "http://127.0.0.1:9/oauth/token"
CONSUMER_SECRET = "oauth1-consumer-secret-0123456789"
GH_SECRET = "gh-app-client-secret-0123456789"


def _kind_cases(pem: str) -> list[tuple[str, str, dict[str, str], dict[str, Any]]]:
    """(kind, integration id, what the admin types, what the API must then show)."""
    return [
        (
            "api_key",
            "k-api",
            {"provider": "api_key", "api_base_url": "http://127.0.0.1:9/api", "stamp_in": "header",
             "stamp_name": "X-Api-Key", "stamp_template": "{api_key}", "verify_method": "GET",
             "verify_path": "/v1/me", "verify_status": "200"},
            {"stamp": API_KEY_STAMP, "verify_request": VERIFY},
        ),
        (
            "basic",
            "k-basic",
            {"provider": "basic", "api_base_url": "http://127.0.0.1:9/api", "stamp_in": "basic",
             "stamp_template": "{username}/token:{password}", "verify_path": "/me"},
            {"stamp": {"in": "basic", "name": "Authorization", "template": "{username}/token:{password}"},
             "verify_request": {"method": "GET", "path": "/me", "expect_status": 200}},
        ),
        (
            "client_credentials",
            "k-cc",
            {"provider": "client_credentials", "client_id": "svc-client", "client_secret": CC_SECRET,
             "token_url": CC_TOKEN_URL, "scopes": "api:read api:write",
             "token_params": "audience=https://api.example"},
            {"client_id": "svc-client", "client_secret_set": True, "scopes": ["api:read", "api:write"],
             "token_params": {"audience": "https://api.example"}, "endpoints": {"token_url": CC_TOKEN_URL}},
        ),
        (
            "jwt_bearer",
            "k-jwt",
            {"provider": "jwt_bearer", "token_url": CC_TOKEN_URL, "scopes": "read",
             "token_params": "resource=https://r.example"},
            {"endpoints": {"token_url": CC_TOKEN_URL}, "scopes": ["read"],
             "token_params": {"resource": "https://r.example"}},
        ),
        (
            "github_app",
            "k-gh",
            {"provider": "github-app-installation", "client_id": "Iv1.0123abcd", "client_secret": GH_SECRET,
             "app_id": "123456", "private_key": pem, "settings": "app_slug=my-app"},
            {"app_id": "123456", "private_key_set": True, "client_secret_set": True,
             "settings": {"app_slug": "my-app"}},
        ),
        (
            "oauth1",
            "k-o1",
            {"provider": "oauth1", "client_id": "consumer-key", "client_secret": CONSUMER_SECRET,
             "request_token_url": "http://127.0.0.1:9/oauth/request_token",
             "authorization_url": "http://127.0.0.1:9/oauth/authorize",
             "access_token_url": "http://127.0.0.1:9/oauth/access_token"},
            {"client_id": "consumer-key", "client_secret_set": True,
             "endpoints": {"request_token_url": "http://127.0.0.1:9/oauth/request_token",
                           "authorization_url": "http://127.0.0.1:9/oauth/authorize",
                           "access_token_url": "http://127.0.0.1:9/oauth/access_token"}},
        ),
    ]  # fmt: skip


def create_through_form(ui: Browserless, kind: str, iid: str, typed: dict[str, str]) -> Any:
    new = f"/ui/integrations/new?kind={kind}"
    r = ui.get(new)
    assert r.status_code == 200, r.text[:500]
    fields = form_fields(r.text, "/ui/integrations/new")
    for name in typed:
        if name != "provider":
            assert name in fields, f"the {kind} form has no {name!r} field"
    fields.update(typed, id=iid)
    posted = ui.http.post("/ui/integrations/new", data=fields)
    ui.pages.append(posted.text)
    return posted


def test_every_kind_is_created_and_edited_through_the_form(gk: Server, ui: Browserless) -> None:
    signed_in(ui)
    pem = _pem()
    secrets = [CC_SECRET, GH_SECRET, CONSUMER_SECRET, *[line for line in pem.splitlines()[1:-1] if len(line) > 20]]
    for kind, iid, typed, expect in _kind_cases(pem):
        r = create_through_form(ui, kind, iid, typed)
        assert r.status_code == 303, (kind, r.text[:3000])
        created = get(gk, iid)
        assert created["auth_mode"] == (kind if kind != "github_app" else "github_app")
        for name, value in expect.items():
            assert created[name] == value, (kind, name, created[name])
        # the edit page shows this kind's fields and that secrets are set, never their values
        page = ui.get(f"/ui/integrations/{iid}").text
        if "private_key_set" in expect:
            assert "A private key is set" in page
            assert "This entry takes: <code>app_slug</code>" in page  # the app's slug
        if expect.get("client_secret_set"):
            assert "A secret is stored" in page
        r = save_unchanged(ui, iid)
        assert r.status_code == 303, (kind, r.text[:3000])
        after = get(gk, iid)
        for name in ("stamp", "verify_request", "token_params", "endpoints", "client_secret_set",
                     "private_key_set", "app_id", "client_id", "scopes", "settings"):  # fmt: skip
            assert after[name] == created[name], (kind, name, created[name], after[name])
    # the kind filter lists that kind's catalog entries only
    listed = ui.get("/ui/integrations/new?kind=api_key").text
    assert 'value="stripe-api-key"' in listed and 'value="google"' not in listed
    assert 'value="google"' in ui.get("/ui/integrations/new").text
    pages = "".join(ui.pages)
    for s in secrets:
        assert s not in pages, "a secret was echoed in a page"


def test_kind_fields_errors_are_shown_beside_the_fields(gk: Server, ui: Browserless) -> None:
    signed_in(ui)
    r = create_through_form(
        ui,
        "api_key",
        "bad-key",
        {"provider": "api_key", "api_base_url": "http://127.0.0.1:9/api", "stamp_in": "header",
         "stamp_name": "bad name!", "verify_path": "no-slash", "verify_status": "404"},
    )  # fmt: skip
    assert r.status_code == 422
    for field in ("f-stamp-name", "f-verify-path", "f-verify-status"):
        assert f'id="{field}-error"' in r.text, field
        assert f'aria-describedby="{field}-hint {field}-error"' in r.text or f'aria-describedby="{field}-error"' in r.text
    # a problem the API layer finds (not the form's): in the summary, form kept
    r = create_through_form(ui, "api_key", "no-base", {"provider": "api_key", "verify_path": "/me"})
    assert r.status_code == 422
    assert "verify_request needs an api_base_url" in r.text
    assert 'value="/me"' in r.text
    # a github_app private key that is not a key: refused, and not echoed
    r = create_through_form(
        ui, "github_app", "bad-gh",
        {"provider": "github-app-installation", "app_id": "1", "private_key": "not-a-pem-secret-value",
         "settings": "app_slug=x"},
    )  # fmt: skip
    assert r.status_code == 422
    assert "not-a-pem-secret-value" not in r.text
    # the code flow's form still says what it needs, each beside its field
    r = create_through_form(ui, "code", "", {"return_urls": "not a url"})
    assert r.status_code == 422
    for field in ("f-id", "f-provider", "f-client-id", "f-return"):
        assert f'id="{field}-error"' in r.text, field


def test_grant_pages_show_the_kind_and_only_public_credential_fields(gk: Server, ui: Browserless) -> None:
    signed_in(ui)
    put(gk, "zd", {"provider": "basic", "api_base_url": "http://127.0.0.1:9/api"})
    password = "basic-password-s3cret-0123456789"
    with gk.client() as c:
        g = c.post(
            "/v1/grants",
            json={"integration_id": "zd", "user_id": "u1", "verify": False,
                  "credentials": {"username": "agent@example.com", "password": password}},
        )  # fmt: skip
    assert g.status_code == 201, g.text
    listing = ui.get("/ui/grants").text
    assert "<code>basic</code>" in listing
    detail = ui.get(f"/ui/grants/{g.json()['id']}").text
    assert "<code>basic</code>" in detail and "agent@example.com" in detail
    assert password not in listing + detail
