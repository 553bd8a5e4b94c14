"""OpenID Provider metadata (OIDC Discovery 1.0 / RFC 8414) and JWKS, cached per process.

The cache only saves round trips; nothing depends on it for correctness.
The issuer in the document must equal the configured issuer exactly.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from grantkeeper.errors import InvalidInput, ProviderUnavailable
from grantkeeper.netguard import check_url
from grantkeeper.oauth.body import BodyTooLarge, read_body

__all__ = ["DiscoveryCache", "ProviderMetadata"]


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str | None
    userinfo_endpoint: str | None
    revocation_endpoint: str | None
    iss_parameter_supported: bool
    id_token_signing_alg_values_supported: tuple[str, ...]
    code_challenge_methods_supported: tuple[str, ...]


def _opt_str(value: Any) -> str | None:
    """An optional URL member: anything but a non-empty string counts as absent."""
    return value if isinstance(value, str) and value else None


class DiscoveryCache:
    def __init__(
        self,
        http: aiohttp.ClientSession,
        *,
        allow_private: bool,
        timeout: float,
        ttl: float = 3600.0,
    ) -> None:
        self._http = http
        self._allow_private = allow_private
        self._timeout = timeout
        self._ttl = ttl
        self._meta: dict[str, tuple[float, ProviderMetadata]] = {}
        self._jwks: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = asyncio.Lock()

    async def _get_json(self, url: str) -> dict[str, Any]:
        check_url(url, allow_private=self._allow_private, what="discovery URL")
        try:
            async with self._http.get(
                url,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                allow_redirects=False,
                headers={"Accept": "application/json"},
            ) as resp:
                if resp.status != 200:
                    raise ProviderUnavailable(f"{url} answered HTTP {resp.status}")
                data = orjson.loads(await read_body(resp))
        except (
            TimeoutError,
            aiohttp.ClientError,
            OSError,
            orjson.JSONDecodeError,
            BodyTooLarge,
        ) as exc:
            raise ProviderUnavailable(
                f"could not fetch provider metadata ({type(exc).__name__})"
            ) from None
        if not isinstance(data, dict):
            raise ProviderUnavailable("provider metadata is not a JSON object")
        return data

    async def metadata(self, issuer: str) -> ProviderMetadata:
        hit = self._meta.get(issuer)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        doc = await self._get_json(issuer.rstrip("/") + "/.well-known/openid-configuration")
        if doc.get("issuer") != issuer:
            raise InvalidInput("the provider's discovery document names a different issuer")
        try:
            meta = ProviderMetadata(
                issuer=issuer,
                authorization_endpoint=str(doc["authorization_endpoint"]),
                token_endpoint=str(doc["token_endpoint"]),
                jwks_uri=_opt_str(doc.get("jwks_uri")),
                userinfo_endpoint=_opt_str(doc.get("userinfo_endpoint")),
                revocation_endpoint=_opt_str(doc.get("revocation_endpoint")),
                iss_parameter_supported=bool(
                    doc.get("authorization_response_iss_parameter_supported")
                ),
                id_token_signing_alg_values_supported=tuple(
                    doc.get("id_token_signing_alg_values_supported") or ("RS256",)
                ),
                code_challenge_methods_supported=tuple(
                    doc.get("code_challenge_methods_supported") or ()
                ),
            )
        except KeyError as exc:
            raise ProviderUnavailable(f"provider metadata lacks {exc.args[0]}") from None
        # every URL the vault will call, not only the two it calls first (SSRF, C13)
        for what, url in (
            ("authorization_endpoint", meta.authorization_endpoint),
            ("token_endpoint", meta.token_endpoint),
            ("jwks_uri", meta.jwks_uri),
            ("userinfo_endpoint", meta.userinfo_endpoint),
            ("revocation_endpoint", meta.revocation_endpoint),
        ):
            if url is not None:
                check_url(url, allow_private=self._allow_private, what=f"discovered {what}")
        self._meta[issuer] = (time.monotonic() + self._ttl, meta)
        return meta

    async def jwks(self, jwks_uri: str, *, force: bool = False) -> dict[str, Any]:
        hit = self._jwks.get(jwks_uri)
        if not force and hit is not None and hit[0] > time.monotonic():
            return hit[1]
        async with self._lock:
            doc = await self._get_json(jwks_uri)
            self._jwks[jwks_uri] = (time.monotonic() + self._ttl, doc)
            return doc
