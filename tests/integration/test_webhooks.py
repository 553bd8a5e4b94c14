"""Webhook endpoints and deliveries (Standard Webhooks), C14 and adversarial case 31."""

from __future__ import annotations

import time
from pathlib import Path

from standardwebhooks.webhooks import Webhook
from tests.support.gk import Server, WebhookSink, running_server


def _grant(gk: Server, user: str = "u1") -> str:
    with gk.client() as c:
        c.put(
            "/v1/integrations/plain",
            json={
                "provider": "oauth2",
                "client_id": "cid",
                "client_secret": "csecret",
                "return_urls": ["https://app.example/done"],
                "endpoints": {"authorization_url": "https://auth.example/authorize", "token_url": "https://auth.example/token"},
            },
        ).raise_for_status()
        r = c.post(
            "/v1/grants",
            json={"integration_id": "plain", "user_id": user, "refresh_token": "rt-" + user, "access_token": "at-" + user, "verify": False},
        )
        assert r.status_code == 201, r.text
        return str(r.json()["id"])


def test_endpoint_crud_and_signed_delivery_with_retries(gk: Server, webhook_sink: WebhookSink) -> None:
    with gk.client() as c:
        created = c.post("/v1/webhook-endpoints", json={"url": webhook_sink.url, "events": ["grant.created", "grant.deleted"]})
        assert created.status_code == 201
        ep = created.json()
        assert ep["secret"].startswith("whsec_")
        assert "secret" not in c.get(f"/v1/webhook-endpoints/{ep['id']}").json()
        assert [e["id"] for e in c.get("/v1/webhook-endpoints").json()["data"]] == [ep["id"]]
    webhook_sink.fail_next = 2  # the first two attempts get a 503: retried with backoff
    gid = _grant(gk)
    got = webhook_sink.wait_for(lambda w: w.json()["type"] == "grant.created", timeout=40)
    w = got[0]
    payload = Webhook(ep["secret"]).verify(w.body, w.headers)
    assert payload["data"]["grant"]["id"] == gid
    assert w.headers["webhook-id"].startswith("msg_")
    assert abs(int(w.headers["webhook-timestamp"]) - time.time()) < 60
    body = w.body.decode()
    assert "rt-u1" not in body and "at-u1" not in body
    with gk.client() as c:
        detail = c.get(f"/v1/webhook-endpoints/{ep['id']}").json()
        d = detail["recent_deliveries"][0]
        assert d["status"] == "succeeded" and d["attempts"] == 3
        # events not subscribed to are not sent; deleted endpoints get nothing more
        assert c.delete(f"/v1/webhook-endpoints/{ep['id']}").status_code == 200
        assert c.get(f"/v1/webhook-endpoints/{ep['id']}").status_code == 404
        c.delete(f"/v1/grants/{gid}")
    time.sleep(1.5)
    assert not [x for x in webhook_sink.received if x.json()["type"] == "grant.deleted"]


def test_webhook_urls_are_guarded(backend: str, tmp_path: Path) -> None:
    with running_server(backend, tmp_path, GRANTKEEPER_ALLOW_PRIVATE_NETWORKS="0") as gk, gk.client() as c:
        for url in [
            "http://127.0.0.1:9/x",
            "https://127.0.0.1/x",
            "https://10.0.0.1/x",
            "https://169.254.169.254/latest",
            "https://[::1]/x",
            "https://localhost/x",
            "file:///etc/passwd",
            "http://example.com/x",
            "https://user:pw@example.com/x",
        ]:
            r = c.post("/v1/webhook-endpoints", json={"url": url, "events": ["grant.created"]})
            assert r.status_code == 422, (url, r.text)
        assert c.post("/v1/webhook-endpoints", json={"url": "https://hooks.example.com/x", "events": ["grant.created"]}).status_code == 201


def test_file_urls_refused_even_when_private_networks_allowed(gk: Server) -> None:
    with gk.client() as c:
        assert c.post("/v1/webhook-endpoints", json={"url": "file:///etc/passwd", "events": ["*"]}).status_code == 422
        assert c.post("/v1/webhook-endpoints", json={"url": "http://127.0.0.1:1/x", "events": ["*"]}).status_code == 201
        assert c.post("/v1/webhook-endpoints", json={"url": "https://h.example/x", "events": ["grant.nope"]}).status_code == 422
