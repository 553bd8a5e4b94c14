"""Subject issuers' JWKS, fetched through the network guard and cached per process.

An unknown ``kid`` triggers one refetch (the issuer may have rotated its keys), but
at most once per ``GRANTKEEPER_JWKS_REFETCH_INTERVAL`` per JWKS URL: a stream of
tokens with made-up kids must not turn the vault into a hammer on the issuer.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from grantkeeper.errors import ProviderUnavailable
from grantkeeper.netguard import check_url

__all__ = ["JwksCache"]

_MAX_BYTES = 512 * 1024


@dataclass
class _Entry:
    doc: dict[str, Any]
    fetched_at: float
    kids: frozenset[str]


class JwksCache:
    def __init__(
        self,
        http: aiohttp.ClientSession,
        *,
        allow_private: bool,
        timeout: float,
        ttl: float,
        refetch_interval: float,
    ) -> None:
        self._http = http
        self._allow_private = allow_private
        self._timeout = timeout
        self._ttl = ttl
        self._refetch_interval = refetch_interval
        self._entries: dict[str, _Entry] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        #: fetches made (for tests and metrics)
        self.fetches = 0

    async def get(self, uri: str, *, kid: str | None) -> dict[str, Any]:
        """The JWKS document for ``uri``; refetched when stale, or once when ``kid`` is unknown."""
        entry = self._entries.get(uri)
        now = self._now()
        if entry is not None and self._fits(entry, now, kid):
            return entry.doc
        lock = self._locks.setdefault(uri, asyncio.Lock())
        async with lock:
            entry = self._entries.get(uri)  # another caller may have fetched meanwhile
            now = self._now()
            if entry is not None and self._fits(entry, now, kid):
                return entry.doc
            if (
                entry is not None
                and now - entry.fetched_at < self._ttl
                and now - entry.fetched_at < self._refetch_interval
            ):
                return entry.doc  # unknown kid, but we refetched moments ago: no new request
            doc = await self._fetch(uri)
            kids = frozenset(
                str(k["kid"]) for k in doc.get("keys", []) if isinstance(k, dict) and "kid" in k
            )
            self._entries[uri] = _Entry(doc, self._now(), kids)
            return doc

    def _now(self) -> float:
        return time.monotonic()

    def _fits(self, entry: _Entry, now: float, kid: str | None) -> bool:
        fresh = now - entry.fetched_at < self._ttl
        return fresh and (kid is None or kid in entry.kids)

    async def _fetch(self, uri: str) -> dict[str, Any]:
        check_url(uri, allow_private=self._allow_private, what="jwks_uri")
        self.fetches += 1
        try:
            async with self._http.get(
                uri,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                allow_redirects=False,
                headers={"Accept": "application/json, application/jwk-set+json"},
            ) as resp:
                if resp.status != 200:
                    raise ProviderUnavailable(f"the JWKS URL answered HTTP {resp.status}")
                data = orjson.loads(await resp.content.read(_MAX_BYTES))
        except (TimeoutError, aiohttp.ClientError, OSError, orjson.JSONDecodeError) as exc:
            raise ProviderUnavailable(f"could not fetch the JWKS ({type(exc).__name__})") from None
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise ProviderUnavailable("the JWKS is not a JSON key set")
        return data
