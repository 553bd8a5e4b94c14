"""The admin UI's ``mcp`` integration form over plain HTTP, against a real server, the local
MCP server and oidc-provider registering clients (DCR), on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.integration import test_mcp
from tests.integration.test_admin_ui_http import Browserless, signed_in
from tests.integration.test_admin_ui_kinds_http import create_through_form, get, save_unchanged
from tests.support.flows import RETURN_URL
from tests.support.gk import Server
from tests.support.mcp_server import McpServer

pytestmark = pytest.mark.oidc

dcr_as = test_mcp.dcr_as
_dcr_mcp = test_mcp._dcr_mcp
mcp = test_mcp.mcp


@pytest.fixture
def ui(gk: Server) -> Iterator[Browserless]:
    client = Browserless(gk)
    yield client
    client.close()


def test_mcp_integration_through_the_form_keeps_its_registration(
    gk: Server, ui: Browserless, mcp: McpServer
) -> None:
    signed_in(ui)
    r = create_through_form(
        ui, "mcp", "tools", {"provider": "mcp", "server_url": mcp.url, "return_urls": RETURN_URL}
    )
    assert r.status_code == 303, r.text[:3000]
    created = get(gk, "tools")
    assert created["server_url"] == mcp.url and created["mcp"]["registration"] == "dcr"
    page = ui.get("/ui/integrations/tools").text
    assert "registered by grantkeeper" in page and 'name="client_id"' not in page
    # saving the edit keeps the vault's own registration (not turned into a static client)
    r = save_unchanged(ui, "tools", scopes="mcp:tools")
    assert r.status_code == 303, r.text[:3000]
    after = get(gk, "tools")
    assert after["client_id"] == created["client_id"]
    assert after["mcp"]["registration"] == "dcr" and after["scopes"] == ["mcp:tools"]
    assert after["client_secret_set"] == created["client_secret_set"]
