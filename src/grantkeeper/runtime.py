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

from grantkeeper.clock import Clock, SystemClock
from grantkeeper.config import Settings
from grantkeeper.metrics import Metrics
from grantkeeper.netguard import GuardedConnector
from grantkeeper.oauth.discovery import DiscoveryCache
from grantkeeper.providers import Catalog, load_catalog
from grantkeeper.store.db import create_engine
from grantkeeper.store.hotpath import HotPath
from grantkeeper.vault import Vault, load_keyring

__all__ = ["Runtime", "open_runtime"]

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    vault: Vault
    catalog: Catalog
    http: aiohttp.ClientSession
    discovery: DiscoveryCache
    metrics: Metrics
    clock: Clock
    #: identifies this process in refresh leases
    instance_id: str
    #: in-process coalescing of refreshes: grant id -> the running refresh (an optimisation
    #: only; the database lease is what makes refresh single-flight across processes)
    inflight: dict[str, asyncio.Future[Any]] = field(default_factory=dict)
    #: the token read's own small asyncpg pool (PostgreSQL; opened on first use)
    hotpath: HotPath | None = None

    async def close(self) -> None:
        if self.hotpath is not None:
            await self.hotpath.close()
        await self.http.close()
        await self.engine.dispose()


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


async def open_runtime(
    settings: Settings, *, clock: Clock | None = None, engine: AsyncEngine | None = None
) -> Runtime:
    vault = Vault(load_keyring(settings))
    http = new_http_session(settings)
    eng = engine or create_engine(settings)
    return Runtime(
        settings=settings,
        engine=eng,
        vault=vault,
        catalog=load_catalog(),
        http=http,
        discovery=DiscoveryCache(
            http, allow_private=settings.allow_private_networks, timeout=settings.http_timeout
        ),
        metrics=Metrics(),
        clock=clock or SystemClock(),
        instance_id=f"{socket.gethostname()[:20]}-{secrets.token_hex(6)}",
        hotpath=HotPath.for_engine(eng, settings.db_pool_size)
        if eng.dialect.name == "postgresql"
        else None,
    )
