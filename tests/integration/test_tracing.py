"""Opt-in OpenTelemetry tracing (issue 18): spans for the token read, refresh, proxy,
connect and webhook delivery reach a real OTLP/HTTP receiver on loopback, continue the
caller's trace, carry ids only (never a token), and put the trace id in log lines; with
tracing off (the default) no OpenTelemetry SDK or exporter module is even imported."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.support.gk import Server, running_server
from tests.support.otlp import OtlpReceiver


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def traced(backend: str, tmp_path: Path, receiver: OtlpReceiver) -> Iterator[Server]:
    with running_server(
        backend,
        tmp_path,
        GRANTKEEPER_OTEL_ENABLED="1",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
        OTEL_BSP_SCHEDULE_DELAY="50",
        OTEL_SERVICE_NAME="gk-test",
    ) as server:
        yield server


def test_spans_reach_an_otlp_receiver_and_logs_carry_the_trace_id(
    traced: Server, receiver: OtlpReceiver
) -> None:
    with traced.client() as c:
        c.put(
            "/v1/integrations/plain",
            json={
                "provider": "oauth2",
                "client_id": "cid",
                "client_secret": "csecret",
                "return_urls": ["https://app.example/done"],
                # nothing listens there: a refresh fails (and is traced as failed)
                "endpoints": {"authorization_url": "http://127.0.0.1:9/authorize", "token_url": "http://127.0.0.1:9/token"},
                "api_base_url": receiver.url + "/api",
            },
        ).raise_for_status()
        hook = c.post("/v1/webhook-endpoints", json={"url": receiver.url + "/hook", "events": ["grant.created"]})
        assert hook.status_code == 201, hook.text

        def grant(user: str, expires: str) -> str:
            body = {"integration_id": "plain", "user_id": user, "refresh_token": "rt-" + user, "access_token": "at-secret-" + user, "expires_at": expires, "verify": False}
            r = c.post("/v1/grants", json=body)
            assert r.status_code == 201, r.text
            return str(r.json()["id"])

        good = grant("u-good", "2099-01-01T00:00:00Z")
        stale = grant("u-stale", "2020-01-01T00:00:00Z")

        # the token read continues the caller's trace
        trace_id = secrets.token_hex(16)
        parent = secrets.token_hex(8)
        r = c.post(f"/v1/grants/{good}/token", json={}, headers={"traceparent": f"00-{trace_id}-{parent}-01"})
        assert r.status_code == 200
        r = c.post(f"/v1/grants/{stale}/token", json={})
        assert r.status_code == 503
        assert c.get(f"/v1/proxy/{good}/anything").status_code == 404
        session = c.post("/v1/connect/sessions", json={"integration_id": "plain", "user_id": "u-new", "return_to": "https://app.example/done"})
        assert session.status_code == 201, session.text
    assert httpx.get(session.json()["connect_url"], follow_redirects=False).status_code == 302

    server_span = receiver.wait_for(lambda s: s.trace_id == trace_id and s.kind == 2)
    assert server_span and server_span[0].parent_span_id == parent
    assert server_span[0].attributes["http.response.status_code"] == 200
    read = receiver.wait_for(lambda s: s.trace_id == trace_id and s.name == "grantkeeper.token.read")
    assert read and read[0].attributes["grant_id"] == good
    assert read[0].parent_span_id == server_span[0].span_id

    refresh = receiver.wait_for(lambda s: s.name == "grantkeeper.refresh" and s.attributes.get("grant_id") == stale)
    assert refresh and refresh[0].status_code == 2  # ERROR, by type name only
    assert refresh[0].attributes["trigger"] == "on_demand"
    proxy = receiver.wait_for(lambda s: s.name == "grantkeeper.proxy")
    assert proxy and proxy[0].attributes["grant_id"] == good
    assert receiver.wait_for(lambda s: s.name == "grantkeeper.connect.begin")
    delivered = receiver.wait_for(lambda s: s.name == "grantkeeper.webhook.deliver", timeout=40)
    assert delivered and delivered[0].attributes["attempt"] == 1

    # ids only: no token, secret or client secret in anything exported
    exported = b"".join(receiver.raw)
    for secret in (b"at-secret-u-good", b"rt-u-good", b"csecret", traced.admin_key.encode()):
        assert secret not in exported

    # the access-log line of the traced read carries its trace id
    log = traced.log_text()
    lines = [ln for ln in log.splitlines() if f"POST /v1/grants/{good}/token 200" in ln]
    assert any(ln.endswith(f"trace_id={trace_id}") for ln in lines), lines[-3:]
    assert "at-secret-u-good" not in log

    # provider latency and refresh lag histograms are exported in /metrics
    with traced.client() as c:
        metrics = c.get("/metrics").text
    assert 'grantkeeper_provider_request_duration_seconds_count{operation="proxy",provider="oauth2"} 1.0' in metrics
    assert "grantkeeper_refresh_lag_seconds_bucket" in metrics


def test_tracing_is_off_by_default_and_imports_nothing(tmp_path: Path) -> None:
    """In a fresh interpreter: an app serving requests with default settings has not
    imported the OpenTelemetry SDK, its exporter or grantkeeper's tracing backend."""
    script = textwrap.dedent(
        f"""
        import asyncio, json, sys
        import httpx
        from grantkeeper.api.app import create_app
        from grantkeeper.bootstrap import initialize
        from grantkeeper.config import Settings
        from grantkeeper.runtime import open_runtime
        from grantkeeper.store.db import create_engine
        from grantkeeper import tracing

        async def main():
            settings = Settings(database_url="sqlite+aiosqlite:///{tmp_path}/gk.db",
                                master_keys="t:" + "A" * 43 + "=")
            engine = create_engine(settings)
            key = await initialize(settings, engine)
            await engine.dispose()
            rt = await open_runtime(settings)
            app = create_app(runtime=rt)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                gid = "00000000-0000-4000-8000-000000000000"
                a = await c.post(f"/v1/grants/{{gid}}/token", json={{}}, headers={{"Authorization": "Bearer " + key}})
                b = await c.get("/v1/providers", headers={{"Authorization": "Bearer " + key}})
            await rt.close()
            loaded = sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter", "grantkeeper._otel")))
            print(json.dumps({{"statuses": [a.status_code, b.status_code], "enabled": tracing.enabled(), "loaded": loaded}}))

        asyncio.run(main())
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRANTKEEPER_", "OTEL_"))}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"statuses": [404, 200], "enabled": False, "loaded": []}
