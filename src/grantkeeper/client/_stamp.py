"""How a grant's credential goes on a request to the provider, whatever its kind.

Token kinds (authorization code, ``client_credentials``, ``jwt_bearer``, ``github_app``,
``mcp``) carry ``Authorization: Bearer <access token>``. ``api_key`` and ``basic`` grants
carry their credentials the way the integration's ``stamp`` says (the same rule the vault's
proxy follows): ``{"in": "header" | "query" | "basic", "name", "template"}``. ``oauth1``
grants cannot be stamped here: signing needs the consumer secret, which the vault never
hands out, so they go through the vault's proxy (``Client.proxy``).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._exceptions import UnsupportedGrantKindError

__all__ = ["BEARER", "Stamp", "rendered"]

_PLACEHOLDER = re.compile(r"\{([a-z][a-z0-9_]{0,31})\}")


@dataclass(frozen=True, slots=True)
class Stamp:
    """Where and how a credential is put on a request (CONTRACT "Credential kinds").

    ``where`` is ``header`` (``name`` = ``template`` rendered), ``query`` (parameter
    ``name``) or ``basic`` (``Authorization: Basic base64(template)``). Without a template,
    the vault's defaults: ``Bearer {api_key}`` / ``Bearer {access_token}`` in the
    ``Authorization`` header, the bare value elsewhere, ``{username}:{password}`` (or
    ``{api_key}:``) for ``basic``.
    """

    where: str = "header"
    name: str = "Authorization"
    template: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Stamp:
        data = data or {}
        return cls(
            where=str(data.get("in") or data.get("location") or "header"),
            name=str(data.get("name") or "Authorization"),
            template=data.get("template") or data.get("format") or None,
        )

    def template_for(self, kind: str) -> str:
        if self.template is not None:
            return self.template
        if kind == "basic" or self.where == "basic":
            return "{api_key}:" if kind == "api_key" else "{username}:{password}"
        value = "{api_key}" if kind == "api_key" else "{access_token}"
        if self.where == "header" and self.name.lower() == "authorization":
            return f"Bearer {value}"
        return value


#: the stamp of every token kind
BEARER = Stamp()


def rendered(stamp: Stamp, kind: str, values: Mapping[str, Any]) -> tuple[str, str, str]:
    """``(where, name, value)``: ``where`` is ``header`` or ``query``; ``basic`` is already
    turned into an ``Authorization`` header."""
    if kind == "oauth1":
        raise UnsupportedGrantKindError(
            "oauth1 grants are signed by the vault's proxy (the consumer secret never leaves "
            "the vault): call the provider through Client.proxy instead of auth()"
        )
    text = _PLACEHOLDER.sub(lambda m: str(values.get(m.group(1)) or ""), stamp.template_for(kind))
    if stamp.where == "basic":
        return "header", "Authorization", "Basic " + base64.b64encode(text.encode()).decode()
    if stamp.where == "query":
        return "query", stamp.name, text
    return "header", stamp.name, text
