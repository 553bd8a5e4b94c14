"""An MCP integration's empty proxy path is its server_url itself (CONTRACT "MCP servers")."""

from __future__ import annotations

import pytest

from grantkeeper.errors import InvalidProxyPath
from grantkeeper.providers import StampSpec
from grantkeeper.proxy.routes import _Upstream


def test_empty_path_is_the_server_url() -> None:
    up = _Upstream("https://mcp.example.com/mcp", "", "", StampSpec(), exact_root=True)
    assert str(up.url("t")) == "https://mcp.example.com/mcp"
    up = _Upstream("https://mcp.example.com/mcp?tenant=a", "", "x=1", StampSpec(), exact_root=True)
    assert str(up.url("t")) == "https://mcp.example.com/mcp?tenant=a&x=1"


def test_other_paths_are_appended() -> None:
    up = _Upstream("https://mcp.example.com/mcp", "sse", "", StampSpec(), exact_root=True)
    assert str(up.url("t")) == "https://mcp.example.com/mcp/sse"


def test_without_exact_root_the_base_gets_a_slash() -> None:
    up = _Upstream("https://api.example.com/v1", "", "", StampSpec())
    assert str(up.url("t")) == "https://api.example.com/v1/"


def test_a_sibling_path_is_still_refused() -> None:
    up = _Upstream("https://mcp.example.com/mcp", "..%2fadmin", "", StampSpec(), exact_root=True)
    with pytest.raises(InvalidProxyPath):
        up.url("t")
