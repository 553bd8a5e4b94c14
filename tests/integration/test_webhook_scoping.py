"""A webhooks:write key limited to some integrations sees and receives only their events."""

from __future__ import annotations

import json
import time

from tests.support.gk import Server, WebhookSink


def _integration(c: object, iid: str) -> None:
    c.put(  # type: ignore[attr-defined]
        f"/v1/integrations/{iid}",
        json={
            "provider": "oauth2",
            "client_id": "cid",
            "client_secret": "csecret",
            "return_urls": ["https://app.example/done"],
            "endpoints": {"authorization_url": "https://auth.example/authorize", "token_url": "https://auth.example/token"},
        },
    ).raise_for_status()


def _key(gk: Server, *args: str) -> tuple[str, str]:
    out = json.loads(gk.cli("api-keys", "create", "--name", "limited", *args, "--json").stdout)
    return str(out["id"]), str(out["key"])


def test_limited_webhook_key_sees_and_receives_only_its_integrations(gk: Server, webhook_sink: WebhookSink) -> None:
    with gk.client() as admin:
        _integration(admin, "mine")
        _integration(admin, "theirs")
        everything = admin.post("/v1/webhook-endpoints", json={"url": webhook_sink.url + "/all", "events": ["*"]}).json()
    _, limited_key = _key(gk, "--scope", "webhooks:write", "--integration", "mine")
    with gk.client(limited_key) as lim:
        mine = lim.post("/v1/webhook-endpoints", json={"url": webhook_sink.url + "/mine", "events": ["*"]})
        assert mine.status_code == 201, mine.text
        ep = mine.json()
        # the key sees its own endpoint only, never the environment-wide one
        assert [e["id"] for e in lim.get("/v1/webhook-endpoints").json()["data"]] == [ep["id"]]
        assert lim.get(f"/v1/webhook-endpoints/{everything['id']}").status_code == 404
        assert lim.delete(f"/v1/webhook-endpoints/{everything['id']}").status_code == 404
    with gk.client() as admin:
        assert {e["id"] for e in admin.get("/v1/webhook-endpoints").json()["data"]} == {ep["id"], everything["id"]}
        gids = {}
        for iid in ("mine", "theirs"):
            r = admin.post(
                "/v1/grants",
                json={"integration_id": iid, "user_id": "u-" + iid, "refresh_token": "rt-" + iid, "verify": False},
            )
            assert r.status_code == 201, r.text
            gids[iid] = r.json()["id"]
    webhook_sink.wait_for(lambda w: w.path.endswith("/all") and w.json()["data"]["grant"]["id"] == gids["theirs"])
    webhook_sink.wait_for(lambda w: w.path.endswith("/mine") and w.json()["data"]["grant"]["id"] == gids["mine"])
    time.sleep(1.0)
    to_mine = [w.json()["data"]["grant"]["integration_id"] for w in webhook_sink.received if w.path.endswith("/mine")]
    assert to_mine == ["mine"], to_mine
    to_all = sorted(w.json()["data"]["grant"]["integration_id"] for w in webhook_sink.received if w.path.endswith("/all"))
    assert to_all == ["mine", "theirs"]
    with gk.client(limited_key) as lim:
        detail = lim.get(f"/v1/webhook-endpoints/{ep['id']}").json()
        assert [d["status"] for d in detail["recent_deliveries"]] == ["succeeded"]
