"""OAuth 2.0 Dynamic Client Registration (RFC 7591), I/O-free.

The vault registers as a confidential client when the server allows a secret-based
method (``client_secret_basic`` preferred, as RFC 7591 2 defaults to it), else as a
public client (``none``; PKCE protects the code). It asks for exactly the
``authorization_code`` and ``refresh_token`` grant types.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "GRANT_TYPES",
    "ClientRegistration",
    "InvalidRegistration",
    "choose_auth_method",
    "parse_response",
    "registration_request",
]

GRANT_TYPES: Final = ("authorization_code", "refresh_token")
_METHODS: Final = ("client_secret_basic", "client_secret_post", "none")


class InvalidRegistration(ValueError):
    """The registration response is unusable."""


def choose_auth_method(supported: Sequence[str]) -> str:
    """The token endpoint authentication method to register with (absent list: the default)."""
    if not supported:
        return "client_secret_basic"
    for method in _METHODS:
        if method in supported:
            return method
    raise InvalidRegistration("the authorization server supports none of " + ", ".join(_METHODS))


def registration_request(
    *, redirect_uri: str, auth_method: str, client_name: str, client_uri: str | None = None
) -> dict[str, Any]:
    """The client metadata sent to the registration endpoint (RFC 7591 section 2)."""
    body: dict[str, Any] = {
        "client_name": client_name,
        "redirect_uris": [redirect_uri],
        "grant_types": list(GRANT_TYPES),
        "response_types": ["code"],
        "token_endpoint_auth_method": auth_method,
    }
    if client_uri:
        body["client_uri"] = client_uri
    return body


@dataclass(frozen=True, slots=True, repr=False)
class ClientRegistration:
    """A registration response (RFC 7591 3.2.1). ``repr`` shows no secret."""

    client_id: str
    client_secret: str | None
    token_endpoint_auth_method: str
    registration_access_token: str | None
    registration_client_uri: str | None

    def __repr__(self) -> str:
        return (
            f"ClientRegistration(client_id={self.client_id!r}, "
            f"token_endpoint_auth_method={self.token_endpoint_auth_method!r})"
        )


def _opt_str(doc: Mapping[str, Any], name: str, limit: int) -> str | None:
    value = doc.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise InvalidRegistration(f"{name} in the registration response is not usable")
    return value


def parse_response(doc: Mapping[str, Any], *, requested_method: str) -> ClientRegistration:
    client_id = doc.get("client_id")
    if not isinstance(client_id, str) or not client_id or len(client_id) > 1000:
        raise InvalidRegistration("the registration response has no client_id")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in client_id):
        raise InvalidRegistration("the client_id contains control characters")
    method = doc.get("token_endpoint_auth_method", requested_method)
    if method not in _METHODS:
        raise InvalidRegistration(
            f"the server registered the client for {str(method)[:60]!r}, which the vault cannot use"
        )
    secret = _opt_str(doc, "client_secret", 4000)
    if method != "none" and secret is None:
        raise InvalidRegistration("the server registered a confidential client but sent no secret")
    return ClientRegistration(
        client_id=client_id,
        client_secret=secret,
        token_endpoint_auth_method=str(method),
        registration_access_token=_opt_str(doc, "registration_access_token", 8000),
        registration_client_uri=_opt_str(doc, "registration_client_uri", 2000),
    )
