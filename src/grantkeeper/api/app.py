"""``create_app(settings)``: the ASGI application. Nothing happens at import."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from grantkeeper import tracing
from grantkeeper.access import routes as access_routes
from grantkeeper.access.cors import EndUserCors
from grantkeeper.api.errors import error_response, install_error_handlers
from grantkeeper.api.middleware import AccessLog, BodyGuard, TokenFastPath, flush_access_log
from grantkeeper.api.routes import (
    audit,
    client_metadata,
    connect,
    credentials,
    grants,
    health,
    integrations,
    provider_events,
    providers,
    token,
    webhooks,
)
from grantkeeper.config import Settings
from grantkeeper.errors import ProviderUnavailable
from grantkeeper.proxy import routes as proxy_routes
from grantkeeper.runtime import Runtime, open_runtime
from grantkeeper.web import admin, connect_pages, root
from grantkeeper.web.pages import STATIC_DIR

__all__ = ["GrantkeeperApp", "create_app"]


class GrantkeeperApp(FastAPI):
    """FastAPI, with the token read dispatched before any of its layers.

    ``POST /v1/grants/{id}/token`` is on the hot path of every API call an app makes;
    FastAPI's own per-request layers (its telemetry check, error and body-limit
    middleware) and the routing cost more than the read. ``TokenFastPath`` keeps exactly
    what shapes the answers (same answers, tested side by side).
    """

    fast_path: TokenFastPath | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._dispatch(scope, receive, send)
        except asyncio.CancelledError:
            # uvicorn cancels requests still running when the shutdown time is up (a token
            # call waiting for a refresh still at the provider). The refresh itself runs on,
            # shielded; the caller gets a clean "retry" instead of uvicorn's bare 500. (No
            # send wrapper to track whether the answer started: this is the hot path, and
            # the server refuses a second start anyway.)
            if scope["type"] != "http":
                raise
            busy = ProviderUnavailable(
                "this server stopped before the provider answered; retry", retry_after=1
            )
            try:
                await error_response(busy)(scope, receive, send)
            except RuntimeError:
                raise asyncio.CancelledError() from None  # the answer had started

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        fast = self.fast_path
        if fast is not None and fast.matches(scope):
            scope["app"] = self
            if tracing.enabled():
                await _traced(fast.fast, scope, receive, send)
            else:
                await fast.fast(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


async def _traced(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """The server span FastAPI would open (it is skipped here): joins the caller's trace."""
    with tracing.request_span("POST /v1/grants/{grant_id}/token", scope) as span:

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                span.set_attribute("http.response.status_code", message["status"])
            await send(message)

        await app(scope, receive, send_status)


def create_app(
    settings: Settings | None = None,
    *,
    runtime: Runtime | None = None,
    run_worker: bool = False,
) -> GrantkeeperApp:
    """Build the app. With ``runtime`` given the caller owns it (tests); else the lifespan opens one."""
    settings = settings or (runtime.settings if runtime is not None else Settings())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        rt = runtime or await open_runtime(settings)
        app.state.runtime = rt
        from grantkeeper.worker.shutdown import Shutdown

        shutdown = Shutdown(rt, settings.shutdown_timeout)
        stop = shutdown.stop
        loop = asyncio.get_running_loop()
        # called by the server's signal handler (cli/listen.py): stop taking work at once,
        # while the HTTP server finishes the requests in flight
        app.state.begin_shutdown = lambda: loop.call_soon_threadsafe(shutdown.begin)
        worker_task = None
        keys_task = None
        if rt.keys is not None:
            # re-check root keys, load new keyring keys, count the nonce budget
            keys_task = asyncio.create_task(rt.keys.run(rt.engine, stop), name="grantkeeper-keys")
        if run_worker:
            from grantkeeper.worker.runner import run_worker as worker_loop

            worker_task = asyncio.create_task(worker_loop(rt, stop), name="grantkeeper-worker")
        # everything built so far (modules, the app, the catalog) lives as long as the
        # process: keep it out of the collector's full passes, which otherwise walk it all
        # every few thousand requests (a pause in the token read's tail latency)
        gc.freeze()
        try:
            yield
        finally:
            # the worker's loops and every refresh in flight, up to the shutdown timeout
            await shutdown.finish(worker_task)
            if keys_task is not None:
                keys_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await keys_task
                if rt.keys is not None:
                    with contextlib.suppress(Exception):
                        await rt.keys.count_wraps(rt.engine)
            flush_access_log()
            if runtime is None:
                await rt.close()

    app = GrantkeeperApp(
        title="grantkeeper",
        version="1",
        summary="Self-hosted OAuth token vault and credential broker",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    if runtime is not None:
        app.state.runtime = runtime
    install_error_handlers(app)
    app.include_router(token.router)  # first: the hot path is matched before /v1/grants/{id}
    for module in (providers, integrations, connect, grants, credentials, webhooks, audit, health):
        app.include_router(module.router)
    app.include_router(access_routes.router)
    app.include_router(connect_pages.router)
    app.include_router(provider_events.router)
    app.include_router(client_metadata.router)
    app.include_router(proxy_routes.router)
    app.include_router(admin.router)
    app.include_router(root.router)
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    app.add_middleware(BodyGuard, max_body=settings.max_body_bytes)
    app.add_middleware(EndUserCors)
    app.add_middleware(AccessLog)
    if settings.token_fast_path:
        # ahead of the framework: the token read skips it (same answers, tested)
        app.fast_path = TokenFastPath(app.router, token.answer, settings.max_body_bytes)
    return app
