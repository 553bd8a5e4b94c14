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
