"""Everything a process needs, built once by the CLI or ``create_app`` and passed down."""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from sqlalchemy.ext.asyncio import AsyncEngine

from grantkeeper import tracing
from grantkeeper.access.jwks import JwksCache
from grantkeeper.clock import Clock, SystemClock
from grantkeeper.config import Settings
from grantkeeper.counts import CachedCounts
from grantkeeper.errors import ConfigError
from grantkeeper.metrics import Metrics
from grantkeeper.netguard import GuardedConnector
from grantkeeper.oauth.discovery import DiscoveryCache
from grantkeeper.oauth.http1 import Http1Client
from grantkeeper.providers import Catalog, load_catalog
from grantkeeper.ratelimit import Limiter
from grantkeeper.store.db import create_engine
from grantkeeper.store.hotpath import HotPath
from grantkeeper.vault import Vault
from grantkeeper.vault.manager import KeyManager

__all__ = ["Runtime", "new_jwks_cache", "open_runtime", "unseal"]

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    vault: Vault
    http: aiohttp.ClientSession
    #: token endpoint calls (refresh, code exchange, minting, revocation): the lean
    #: keep-alive HTTP/1.1 client, same network guard and TLS verification as ``http``
    token_http: Http1Client
    discovery: DiscoveryCache
    metrics: Metrics
    clock: Clock
    #: identifies this process in refresh leases
    instance_id: str
    #: in-process coalescing of refreshes: grant id -> the running refresh (an optimisation
    #: only; the database lease is what makes refresh single-flight across processes)
    inflight: dict[str, asyncio.Future[Any]] = field(default_factory=dict)
    #: the token read's own few asyncpg connections (PostgreSQL; opened on first use)
    hotpath: HotPath | None = None
    #: root keys and the keyring (``vault`` is ``keys.vault``)
    keys: KeyManager | None = None
    #: subject issuers' key sets (end-user access); built by ``open_runtime``
    subject_jwks: JwksCache | None = None
    #: set when the process stops: the worker takes no new work (refreshes already at a
    #: provider finish and persist; ``refresh.engine.drain`` waits for them)
    draining: bool = False
    #: grant counts by status for /metrics and the dashboard (an estimate, ``grant_counts_ttl``)
    counts: CachedCounts = field(default_factory=lambda: CachedCounts(30.0))
    #: this process's reserved rate-limit tokens (the buckets themselves are in the database)
    limiter: Limiter = field(default_factory=Limiter)

    @property
    def catalog(self) -> Catalog:
        """The built-in provider catalog, read once per process (``load_catalog`` caches it):
        ``open_runtime`` reads it up front for a server or worker; an operator command reads
        it only if it needs an entry (516 files parsed and validated: ~0.25 s of CPU)."""
        return load_catalog()

    async def close(self) -> None:
        if self.hotpath is not None:
            await self.hotpath.close()
        await self.http.close()
        await self.token_http.close()
        await self.engine.dispose()
        # in a thread: the exporter's last flush is a blocking HTTP call
        await asyncio.to_thread(tracing.shutdown)


def new_http_session(settings: Settings) -> aiohttp.ClientSession:
    connector = GuardedConnector(
        allow_private=settings.allow_private_networks,
        limit=256,
        limit_per_host=64,
        ttl_dns_cache=60,
        enable_cleanup_closed=True,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=settings.http_timeout),
        # never leak proxy settings or cookies between providers
        trust_env=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": "grantkeeper"},
        auto_decompress=True,
    )


async def unseal(settings: Settings, engine: AsyncEngine) -> KeyManager:
    """Root keys -> keyring -> a vault that opens what is stored, or a one-line ``ConfigError``
    / ``RootKeyUnavailable`` naming the key id and backend (the process must not run)."""
    from grantkeeper.rotation import probe_failure

    keys = KeyManager.from_settings(settings)
    await keys.start(engine)
    failure = await probe_failure(engine, keys)
    if failure is not None:
        raise ConfigError(failure)
    return keys


async def open_runtime(
    settings: Settings,
    *,
    clock: Clock | None = None,
    engine: AsyncEngine | None = None,
    read_catalog: bool = True,
) -> Runtime:
    """``read_catalog=False``: leave the provider catalog until first use (one-shot commands)."""
    tracing.configure(settings)
    eng = engine or create_engine(settings)
    try:
        keys = await unseal(settings, eng)
    except BaseException:
        if engine is None:
            await eng.dispose()
        raise
    vault = keys.vault
    if read_catalog:
        load_catalog()
    http = new_http_session(settings)
    return Runtime(
        settings=settings,
        engine=eng,
        vault=vault,
        http=http,
        token_http=Http1Client(allow_private=settings.allow_private_networks),
        discovery=DiscoveryCache(
            http, allow_private=settings.allow_private_networks, timeout=settings.http_timeout
        ),
        metrics=Metrics(),
        clock=clock or SystemClock(),
        instance_id=f"{socket.gethostname()[:20]}-{secrets.token_hex(6)}",
        counts=CachedCounts(settings.grant_counts_ttl),
        hotpath=HotPath.for_engine(eng, settings.db_pool_size, settings.db_acquire_timeout)
        if eng.dialect.name == "postgresql"
        else None,
        keys=keys,
        subject_jwks=new_jwks_cache(settings, http),
    )


def new_jwks_cache(settings: Settings, http: aiohttp.ClientSession) -> JwksCache:
    return JwksCache(
        http,
        allow_private=settings.allow_private_networks,
        timeout=settings.http_timeout,
        ttl=settings.jwks_cache_seconds,
        refetch_interval=settings.jwks_refetch_interval,
    )
