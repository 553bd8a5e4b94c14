"""Credential kinds: one module per kind behind one small interface (``base.Kind``).

>>> from grantkeeper.kinds import kind_for
>>> kind_for("api_key").has_access_token
False
"""

from __future__ import annotations

from grantkeeper.kinds.api_key import ApiKey
from grantkeeper.kinds.authorization_code import AuthorizationCode
from grantkeeper.kinds.base import (
    Credentials,
    Kind,
    KindConfig,
    KindContext,
    Outcome,
    Stamp,
    render_stamp,
)
from grantkeeper.kinds.basic import Basic
from grantkeeper.kinds.client_credentials import ClientCredentialsKind
from grantkeeper.kinds.github_app import GitHubApp
from grantkeeper.kinds.jwt_bearer import JwtBearer
from grantkeeper.kinds.mcp import McpKind
from grantkeeper.kinds.oauth1 import OAuth1

__all__ = [
    "Credentials",
    "Kind",
    "KindConfig",
    "KindContext",
    "Outcome",
    "Stamp",
    "kind_for",
    "render_stamp",
]

_KINDS: dict[str, Kind] = {
    "oauth2": AuthorizationCode(),
    "oidc": AuthorizationCode(),
    "mcp": McpKind(),
    "api_key": ApiKey(),
    "basic": Basic(),
    "client_credentials": ClientCredentialsKind(),
    "jwt_bearer": JwtBearer(),
    "github_app": GitHubApp(),
    "oauth1": OAuth1(),
}


def kind_for(auth_mode: str) -> Kind:
    """The kind of an entry's ``auth_mode``; modes without a module yet raise ``InvalidInput``."""
    kind = _KINDS.get(auth_mode)
    if kind is None:
        from grantkeeper.errors import InvalidInput

        raise InvalidInput(f"auth mode {auth_mode!r} is not supported yet")
    return kind
