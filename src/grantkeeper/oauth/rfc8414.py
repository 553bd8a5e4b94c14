"""OAuth 2.0 Authorization Server Metadata (RFC 8414) and OpenID discovery, I/O-free.

- ``metadata_urls``: where an issuer's metadata may be, in the order tried: RFC 8414
  section 3.1 (the well-known path inserted before the issuer's path), then OpenID
  Connect Discovery with the path inserted, then OpenID Connect Discovery 1.0 section 4
  (appended to the issuer).
- ``parse_metadata``: section 3.3: the ``issuer`` in the document must be identical to
  the issuer the URL was formed from; endpoints must be URLs the vault may call (the
  network guard), and the server must support PKCE with S256 (the MCP authorization
  specification refuses servers that do not say so).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from grantkeeper.errors import UnsafeUrl
from grantkeeper.netguard import check_url

__all__ = [
    "AuthorizationServerMetadata",
    "InvalidServerMetadata",
    "metadata_urls",
    "parse_metadata",
]


class InvalidServerMetadata(ValueError):
    """The authorization server metadata fails a check of RFC 8414."""


def metadata_urls(issuer: str) -> list[str]:
    """Candidate metadata URLs for ``issuer`` (RFC 8414 3.1, then OpenID discovery)."""
    parts = urlsplit(issuer)
    if parts.query or parts.fragment:
        raise InvalidServerMetadata("an issuer has no query or fragment (RFC 8414 section 2)")
    origin = f"{parts.scheme}://{parts.netloc}"
    path = parts.path.rstrip("/")
    if not path:
        return [
            f"{origin}/.well-known/oauth-authorization-server",
            f"{origin}/.well-known/openid-configuration",
        ]
    return [
        f"{origin}/.well-known/oauth-authorization-server{path}",
        f"{origin}/.well-known/openid-configuration{path}",
        f"{origin}{path}/.well-known/openid-configuration",
    ]


@dataclass(frozen=True, slots=True)
class AuthorizationServerMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    registration_endpoint: str | None
    revocation_endpoint: str | None
    jwks_uri: str | None
    scopes_supported: tuple[str, ...]
    token_endpoint_auth_methods_supported: tuple[str, ...]
    code_challenge_methods_supported: tuple[str, ...]
    prompt_values_supported: tuple[str, ...]
    #: draft-ietf-oauth-client-id-metadata-document: client ids may be metadata URLs
    client_id_metadata_document_supported: bool
    #: RFC 9207: authorization responses carry ``iss``
    authorization_response_iss_parameter_supported: bool


def _strings(doc: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = doc.get(name)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidServerMetadata(f"{name} must be an array of strings")
    return tuple(value)


def _endpoint(
    doc: Mapping[str, Any], name: str, *, allow_private: bool, required: bool
) -> str | None:
    value = doc.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidServerMetadata(f"the metadata has no {name}")
    try:
        return check_url(value, allow_private=allow_private, what=name)
    except UnsafeUrl as exc:
        raise InvalidServerMetadata(exc.detail) from None


def parse_metadata(
    doc: Mapping[str, Any], *, expected_issuer: str, allow_private: bool
) -> AuthorizationServerMetadata:
    """Validate an authorization server metadata document for ``expected_issuer``."""
    issuer = doc.get("issuer")
    if issuer != expected_issuer:
        shown = issuer[:200] if isinstance(issuer, str) else issuer
        raise InvalidServerMetadata(
            f"the metadata names the issuer {shown!r}, not {expected_issuer[:200]!r} "
            "(RFC 8414 section 3.3)"
        )
    methods = _strings(doc, "code_challenge_methods_supported")
    if "S256" not in methods:
        raise InvalidServerMetadata(
            "the authorization server does not advertise PKCE with S256 "
            "(code_challenge_methods_supported)"
        )
    response_types = _strings(doc, "response_types_supported")
    if response_types and "code" not in response_types:
        raise InvalidServerMetadata("the authorization server does not support the code flow")

    def ep(name: str, required: bool = False) -> str | None:
        return _endpoint(doc, name, allow_private=allow_private, required=required)

    authorization = ep("authorization_endpoint", True)
    token = ep("token_endpoint", True)
    assert authorization is not None and token is not None
    return AuthorizationServerMetadata(
        issuer=expected_issuer,
        authorization_endpoint=authorization,
        token_endpoint=token,
        registration_endpoint=ep("registration_endpoint"),
        revocation_endpoint=ep("revocation_endpoint"),
        jwks_uri=ep("jwks_uri"),
        scopes_supported=_strings(doc, "scopes_supported"),
        token_endpoint_auth_methods_supported=_strings(
            doc, "token_endpoint_auth_methods_supported"
        ),
        code_challenge_methods_supported=methods,
        prompt_values_supported=_strings(doc, "prompt_values_supported"),
        client_id_metadata_document_supported=doc.get("client_id_metadata_document_supported")
        is True,
        authorization_response_iss_parameter_supported=doc.get(
            "authorization_response_iss_parameter_supported"
        )
        is True,
    )
