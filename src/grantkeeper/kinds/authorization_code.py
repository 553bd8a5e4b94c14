"""``oauth2`` / ``oidc`` (and ``mcp``): the authorization-code flow through the connect URL.

Tokens are stored in the grant's token columns and refreshed by ``refresh.engine``; this
kind only says how an access token is stamped. Grants are created by the connect flow or
by importing a refresh token, never from a ``credentials`` object.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from grantkeeper.errors import InvalidInput
from grantkeeper.kinds.base import Credentials, Kind, KindConfig

__all__ = ["AuthorizationCode"]


class AuthorizationCode(Kind):
    mode: ClassVar[str] = "oauth2"
    has_access_token: ClassVar[bool] = True

    def parse(self, cfg: KindConfig, raw: Mapping[str, Any]) -> Credentials:
        raise InvalidInput(
            "this integration uses the authorization-code flow: connect the user through a "
            "connect session, or import a refresh_token"
        )
