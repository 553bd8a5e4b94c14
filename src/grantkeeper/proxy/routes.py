"""``{METHOD} /v1/proxy/{grant_id}/{path}``: call the provider's API with the grant's token.

One call, in order:

1. The API key (scope ``proxy``) and the grant, in one read transaction: another
   environment's grant, one outside the key's integrations, or a malformed id: 404.
2. The path and query, checked by ``paths`` (400 ``invalid_proxy_path``) and joined to
   the API base URL: the grant's own (Salesforce's ``instance_url``, ...), else the
   integration's, else the catalog's. Nothing else is ever called.
3. A token valid for the call (``ensure_fresh``: 409 ``grant_invalid`` /
   ``grant_revoked``, 503 ``provider_unavailable``).
4. The call, with the caller's body streamed or (up to 1 MiB) buffered. A 401 from the
   provider forces one refresh (at most once per ``refresh_min_interval`` per grant, so
   an API that always answers 401 cannot drive a refresh storm) and, when the body could
   be buffered, one replay with the new token.
5. The provider's status, headers and body back (``forward.UpstreamStream``); audited as
   ``proxy.request`` with method, path and status (never the query, bodies or tokens).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final
from urllib.parse import quote, unquote

import aiohttp
from fastapi import APIRouter, Request
from starlette.responses import Response
from yarl import URL

from grantkeeper import audit, ratelimit, tracing
from grantkeeper.api.deps import bearer, unauthenticated_request
from grantkeeper.apikeys import Principal, authenticate
from grantkeeper.credential_grants import is_code_kind, mints, stamp_for
from grantkeeper.errors import (
    GrantkeeperError,
    InvalidProxyPath,
    NotFound,
    ProviderUnavailable,
    ProxyNotConfigured,
    UpstreamResponseTooLarge,
)
from grantkeeper.grants import get_visible, open_token
from grantkeeper.kinds import KindConfig, Stamp, kind_for, render_stamp
from grantkeeper.kinds.config import kind_config
from grantkeeper.netguard import check_url
from grantkeeper.providers.catalog import StampSpec
from grantkeeper.proxy.forward import (
    RequestBody,
    UpstreamStream,
    open_upstream,
    read_request_body,
    request_headers,
    response_headers,
)
from grantkeeper.proxy.paths import join_url, normalise_path, normalise_query, with_query_param
from grantkeeper.refresh.engine import ensure_fresh, in_backoff, raise_for_status
from grantkeeper.runtime import Runtime
from grantkeeper.store import integrations as integration_store
from grantkeeper.store.db import reading
from grantkeeper.store.records import GrantRecord

__all__ = ["METHODS", "PATH", "router"]

log = logging.getLogger(__name__)

PATH: Final = "/v1/proxy/{grant_id}/{path:path}"
METHODS: Final = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
_PREFIX: Final = b"/v1/proxy/"
#: the token must outlive the call by this much, or it is refreshed first
_MIN_TTL: Final = 30.0


router = APIRouter(tags=["proxy"])


def _raw_target(request: Request, grant_id: str) -> tuple[str, str]:
    """The path below the grant id and the query string, exactly as the caller sent them."""
    raw: bytes | None = request.scope.get("raw_path")
    if raw is None:
        raw = quote(request.scope["path"]).encode()
    if not raw.startswith(_PREFIX):
        raise NotFound("no such grant")
    raw_id, _, rest = raw[len(_PREFIX) :].partition(b"/")
    if raw_id.decode("latin-1") != grant_id:
        # an encoded '/' or '.' in the grant id segment: it would shift the path
        raise NotFound("no such grant")
    query: bytes = request.scope.get("query_string", b"")
    return rest.decode("latin-1"), query.decode("latin-1")


def _base_url(rt: Runtime, base: str | None) -> str:
    if not base:
        raise ProxyNotConfigured("set api_base_url on the integration to use the proxy")
    return check_url(base, allow_private=rt.settings.allow_private_networks, what="api_base_url")


class _Upstream:
    """Where one call goes: the base URL, the checked path and query, the stamp."""

    def __init__(
        self, base: str, path: str, query: str, stamp: StampSpec, *, exact_root: bool = False
    ) -> None:
        self.base = URL(base)
        self.path = path
        self.query = query
        self.stamp = stamp
        self.host = self.base.host or ""
        #: an empty path is the base URL itself, not base + "/" (an MCP server_url)
        self.exact_root = exact_root

    def url(self, credential: str | Stamp | None = None) -> URL:
        """The upstream URL; an access token (``str``) or a kind's ``Stamp`` adds its query."""
        query = self.query
        if isinstance(credential, Stamp):
            query = credential.apply_query(query)
        elif credential is not None and self.stamp.location == "query":
            query = with_query_param(query, self.stamp.name, credential)
        if self.exact_root and not self.path:
            joined = str(self.base.with_query(None).with_fragment(None))
            base_query = self.base.raw_query_string
            q = "&".join(x for x in (base_query, query) if x)
            url = URL(f"{joined}?{q}" if q else joined, encoded=True)
        else:
            url = URL(join_url(str(self.base), self.path, query), encoded=True)
        # defence in depth: the same origin, under the base path, whatever the input was
        base_path = self.base.raw_path.rstrip("/") + "/"
        if (
            url.origin() != self.base.origin()
            or not (
                url.raw_path.startswith(base_path)
                or (self.exact_root and url.raw_path == self.base.raw_path)
            )
            or any(s in (".", "..") for s in unquote(url.raw_path).split("/"))
        ):
            raise InvalidProxyPath("the path leaves the API base URL")
        return url


async def _record(
    rt: Runtime,
    principal: Principal,
    rec: GrantRecord,
    *,
    method: str,
    path: str | None,
    status: int,
    **detail: Any,
) -> None:
    async with rt.engine.begin() as conn:
        await audit.record(
            conn,
            environment_id=rec.environment_id,
            actor=principal.actor,
            action="proxy.request",
            now=rt.clock.now(),
            grant_id=rec.id,
            integration_id=rec.integration_id,
            method=method,
            path=path,
            status=status,
            **detail,
        )
    rt.metrics.proxy_requests.labels(rec.provider, f"{status // 100}xx").inc()


def _may_force_refresh(rt: Runtime, rec: GrantRecord) -> bool:
    if rec.refresh_token_ct is None and not mints(rt, rec):
        return False
    if in_backoff(rt, rec):
        # backing off after provider failures: the 401 goes back as it is
        return False
    last = rec.last_refreshed_at
    return last is None or rt.clock.now() - last >= rt.settings.refresh_min_interval


async def proxy(request: Request, grant_id: str, path: str) -> Response:
    """Forward the call to the integration's API base URL with the grant's access token.

    ``path`` is declared for the OpenAPI description only: the raw, still-encoded path
    from the request line is what gets checked and forwarded.
    """
    rt: Runtime = request.app.state.runtime
    raw_key = bearer(request)
    if raw_key is None:
        raise unauthenticated_request(request)
    async with reading(rt.engine) as conn:
        principal = await authenticate(conn, raw_key)
        principal.require("proxy")
        rec = await get_visible(conn, principal.environment_id, grant_id, principal.integration_ids)
        integ = await integration_store.get(conn, rec.environment_id, rec.integration_id)
    await ratelimit.enforce(rt, principal.key_id, "proxy")
    if integ is None:
        raise NotFound("no such grant")
    method = request.method
    rel: str | None = None
    try:
        raw_path, raw_query = _raw_target(request, grant_id)
        rel = normalise_path(raw_path)
        query = normalise_query(raw_query)
        spec = rt.catalog.get(integ.provider)
        base = rec.api_base_url or integ.api_base_url or spec.resolve(integ.settings).api_base_url
        stamp = StampSpec.model_validate(integ.stamp) if integ.stamp else spec.stamp
        upstream = _Upstream(
            _base_url(rt, base), rel, query, stamp, exact_root=integ.mcp is not None
        )
        # credential kinds stamp through their kind; the code flow keeps its lean path
        cfg = None if is_code_kind(rt, integ.provider) else kind_config(rt, integ)
        with tracing.span("grantkeeper.proxy", grant_id=rec.id, provider=integ.provider):
            response = await _forward(rt, request, principal, rec, upstream, f"/{rel}", cfg)
    except GrantkeeperError as exc:
        await _record(
            rt,
            principal,
            rec,
            method=method,
            path=None if rel is None else f"/{rel}"[:500],
            status=exc.status,
            error=exc.code,
        )
        raise
    return response


async def _forward(
    rt: Runtime,
    request: Request,
    principal: Principal,
    rec: GrantRecord,
    upstream: _Upstream,
    audit_path: str,
    cfg: KindConfig | None = None,
) -> Response:
    s = rt.settings
    method = request.method
    token: str | None = None
    if cfg is None or kind_for(cfg.mode).has_access_token:
        rec = await ensure_fresh(rt, rec, min_ttl=_MIN_TTL, force=False)
        token = open_token(rt.vault, rec, "access_token")
        if token is None:
            raise ProviderUnavailable("no access token is available for this grant")
    else:
        raise_for_status(rec)
    body: RequestBody = await read_request_body(request, max_bytes=s.proxy_max_request_bytes)

    def stamp_of(access_token: str | None, grant: GrantRecord) -> Stamp:
        if cfg is None:
            return render_stamp(upstream.stamp, "oauth2", {"access_token": access_token or ""})
        # signing kinds (OAuth 1.0a) sign the exact upstream URL and a buffered form body
        ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        return stamp_for(
            rt,
            grant,
            cfg,
            access_token,
            method=method,
            url=str(upstream.url(None)),
            body=body.data or b"",
            content_type=ctype or None,
        )

    stamp = stamp_of(token, rec)
    url = upstream.url(stamp)

    async def send(current: Stamp, target: URL) -> aiohttp.ClientResponse:
        headers = request_headers(request.headers.raw, current)
        started = time.monotonic()
        try:
            return await open_upstream(
                rt.http, method, target, headers, body, timeout=s.proxy_timeout
            )
        finally:
            # until the response headers: the provider's latency, not the body's size
            rt.metrics.provider_latency.labels(rec.provider, "proxy").observe(
                time.monotonic() - started
            )

    resp = await send(stamp, url)
    retried = False
    if resp.status == 401 and _may_force_refresh(rt, rec):
        try:
            fresh = await ensure_fresh(rt, rec, min_ttl=_MIN_TTL, force=True)
            new_token = open_token(rt.vault, fresh, "access_token")
        except BaseException:
            resp.close()
            raise
        if fresh.version != rec.version and new_token is not None and body.replayable:
            resp.close()
            rec, token = fresh, new_token
            stamp = stamp_of(token, rec)
            resp = await send(stamp, upstream.url(stamp))
            retried = True
    status: int = resp.status
    has_body = method != "HEAD" and status not in (204, 304) and status >= 200
    length = resp.headers.get("Content-Length", "")
    if has_body and length.isdigit() and int(length) > s.proxy_max_response_bytes:
        resp.close()
        raise UpstreamResponseTooLarge(
            f"the response has {length} bytes; the limit is {s.proxy_max_response_bytes}"
        )
    headers = response_headers(resp.raw_headers, [*stamp.secrets, *([token] if token else [])])
    try:
        extra = {"retried": True} if retried else {}
        await _record(
            rt,
            principal,
            rec,
            method=method,
            path=audit_path[:500],
            status=status,
            host=upstream.host,
            **extra,
        )
    except BaseException:
        resp.close()
        raise
    log.debug("proxy %s %s%s -> %d", method, upstream.host, audit_path[:200], status)
    return UpstreamStream(
        resp,
        headers,
        max_bytes=s.proxy_max_response_bytes,
        has_body=has_body,
        request_done=body.done,
    )


_OPENAPI: dict[str, Any] = {
    "description": (
        "Forwards the call to the integration's API base URL + `/{path}` with the query "
        "string and body, the provider access token stamped as the catalog says "
        "(`Authorization: Bearer` by default), and returns the provider's status, headers "
        "and body. Redirects are returned, never followed."
    ),
}

for _method in METHODS:
    router.add_api_route(
        PATH,
        proxy,
        methods=[_method],
        operation_id=f"proxy_{_method.lower()}",
        summary=f"Proxy a {_method} call to the provider's API",
        response_class=Response,
        openapi_extra=_OPENAPI,
    )
