"""The operator CLI (grants, integrations, webhooks, audit) against real databases.

Every command runs as ``python -m grantkeeper.cli ...`` in a subprocess with the
server's environment, while the server runs, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from tests.support.flows import connect_grant, setup_oidc_integration
from tests.support.gk import Server, WebhookSink
from tests.support.oidc import OidcServer, pkce_pair


def cli(gk: Server, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "grantkeeper.cli", *args],
        env={**gk.env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"grantkeeper {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def cli_json(gk: Server, *args: str) -> Any:
    return json.loads(cli(gk, *args, "--json").stdout)


def provider_refresh_token(gk: Server, oidc: OidcServer, client_id: str, secret: str, account: str) -> str:
    """A refresh token obtained from the provider directly (as another system would hold it)."""
    oidc.set_account(account)
    verifier, challenge = pkce_pair()
    redirect = gk.base_url + "/oauth/callback"
    outcome = oidc.authorize(oidc.authorization_url(client_id, redirect, code_challenge=challenge, state="s"))
    assert outcome.code, outcome.responses
    r = oidc.http.post(
        oidc.token_endpoint,
        data={"grant_type": "authorization_code", "code": outcome.code, "redirect_uri": redirect, "code_verifier": verifier},
        auth=httpx.BasicAuth(quote(client_id, safe=""), quote(secret, safe="")),
    )
    assert r.status_code == 200, r.text
    token: str = r.json()["refresh_token"]
    return token


def refresh_count(oidc: OidcServer) -> int:
    return int(oidc.stats()["token"]["refresh_token"])


# ---------------------------------------------------------------- without a provider


def test_empty_database_and_unknown_things(gk: Server) -> None:
    assert cli_json(gk, "grants", "list") == {"data": [], "limit": 50, "offset": 0, "next_offset": None}
    assert cli_json(gk, "integrations", "list") == []
    assert cli_json(gk, "webhooks", "list") == []
    r = cli(gk, "grants", "show", "00000000-0000-4000-8000-000000000000", check=False)
    assert r.returncode == 1 and "no grant" in r.stderr
    r = cli(gk, "grants", "show", "not-a-uuid", check=False)
    assert r.returncode == 1
    for action in (["refresh"], ["revoke", "--yes"]):
        r = cli(gk, "grants", *action, "00000000-0000-4000-8000-000000000000", check=False)
        assert r.returncode == 1 and "(not_found)" in r.stderr, r.stderr
    r = cli(gk, "integrations", "show", "nope", check=False)
    assert r.returncode == 1 and "no integration" in r.stderr
    r = cli(gk, "grants", "list", "--environment", "staging", check=False)
    assert r.returncode == 2 and "no environment named 'staging'" in r.stderr
    cli(gk, "environments", "create", "staging")
    assert cli_json(gk, "grants", "list", "-e", "staging")["data"] == []
    r = cli(gk, "grants", "list", "--status", "weird", check=False)
    assert r.returncode == 2


# ---------------------------------------------------------------- with the provider


@pytest.mark.oidc
def test_list_show_refresh_revoke_never_print_tokens(gk: Server, oidc: OidcServer) -> None:
    oidc.set_ttl(AccessToken=3600)  # no proactive refresh by the worker while we count
    setup_oidc_integration(gk, oidc)
    gid = connect_grant(gk, oidc, "acme", "user-1")
    with gk.client() as c:
        access_token = c.post(f"/v1/grants/{gid}/token", json={"min_ttl": 0}).json()["access_token"]
    outputs: list[str] = []

    listed = cli_json(gk, "grants", "list")
    assert [g["id"] for g in listed["data"]] == [gid]
    assert listed["data"][0]["status"] == "active" and listed["data"][0]["user_id"] == "user-1"
    assert cli_json(gk, "grants", "list", "--integration", "acme", "--user", "user-1")["data"][0]["id"] == gid
    assert cli_json(gk, "grants", "list", "--user", "someone-else")["data"] == []
    assert cli_json(gk, "grants", "list", "--status", "invalid")["data"] == []

    shown = cli_json(gk, "grants", "show", gid)
    with gk.client() as c:
        assert shown == c.get(f"/v1/grants/{gid}").json()  # the same view as the API

    table = cli(gk, "grants", "list")
    outputs.append(table.stdout)
    assert gid in table.stdout and "user-1" in table.stdout
    outputs.append(cli(gk, "grants", "show", gid).stdout)

    integrations = cli_json(gk, "integrations", "list")
    assert [i["id"] for i in integrations] == ["acme"]
    assert integrations[0]["grants"] == {"active": 1}
    assert integrations[0]["client_secret_set"] is True and "client_secret" not in integrations[0]
    one = cli_json(gk, "integrations", "show", "acme")
    assert one["provider"] == "oidc" and one["callback_url"] == gk.base_url + "/oauth/callback"
    outputs.append(cli(gk, "integrations", "show", "acme").stdout)
    outputs.append(cli(gk, "integrations", "list").stdout)

    # a forced refresh goes to the provider once and stores the new generation
    before = refresh_count(oidc)
    refreshed = cli(gk, "grants", "refresh", gid, "--json")
    outputs.append(refreshed.stdout + refreshed.stderr)
    g = json.loads(refreshed.stdout)
    assert g["id"] == gid and g["status"] == "active"
    assert refresh_count(oidc) == before + 1
    with gk.client() as c:
        new_token = c.post(f"/v1/grants/{gid}/token", json={"min_ttl": 0}).json()["access_token"]
    assert new_token != access_token
    human = cli(gk, "grants", "refresh", gid)
    outputs.append(human.stdout + human.stderr)
    assert "refreshed " + gid in human.stdout
    assert refresh_count(oidc) == before + 2

    events = [json.loads(line) for line in cli(gk, "audit", "tail", "--json", "-n", "50").stdout.splitlines()]
    actions = [(e["action"], e["actor"]) for e in events if e["grant_id"] == gid]
    assert ("grant.refresh_requested", "key:cli") in actions
    assert any(a == "grant.refreshed" and e["detail"].get("trigger") == "cli" for e in events for a in [e["action"]])
    ids = [e["id"] for e in events]
    assert ids == sorted(ids)  # oldest first, like tail(1)
    outputs.append(cli(gk, "audit", "tail").stdout)

    # revoke: at the provider, then the grant stays readable as revoked
    revoked = cli_json(gk, "grants", "revoke", gid, "--yes")
    assert revoked == {"id": gid, "status": "revoked", "provider_revocation": "succeeded", "already_revoked": False}
    with gk.client() as c:
        assert c.get(f"/v1/grants/{gid}").json()["status"] == "revoked"
        assert c.post(f"/v1/grants/{gid}/token").json()["code"] == "grant_revoked"
    r = cli(gk, "grants", "refresh", gid, check=False)
    assert r.returncode != 0 and "grant_revoked" in r.stderr
    assert cli_json(gk, "grants", "list", "--status", "revoked")["data"][0]["id"] == gid
    assert cli_json(gk, "integrations", "show", "acme")["grants"] == {"revoked": 1}
    assert "grant.deleted" in cli(gk, "audit", "tail", "--grant", gid, "--json").stdout

    for text in outputs:
        assert access_token not in text and new_token not in text


@pytest.mark.oidc
def test_import_dry_run_then_real_import(gk: Server, oidc: OidcServer, tmp_path: Path) -> None:
    oidc.set_ttl(AccessToken=3600)
    integ = setup_oidc_integration(gk, oidc)
    tokens = [provider_refresh_token(gk, oidc, integ.client_id, integ.client_secret, a) for a in ("alice", "bob")]
    csv_file = tmp_path / "grants.csv"
    csv_file.write_text(
        "integration_id,user_id,refresh_token,scopes,provider_account_id\n"
        f"acme,u-alice,{tokens[0]},openid offline_access api:read,alice\n"
        f"acme,u-bob,{tokens[1]},,\n"
        f"acme,,{'x' * 20},,\n"  # no user_id
        f"nope,u-3,{'y' * 20},,\n"  # unknown integration
        f"acme,u-alice-again,{tokens[0]},,\n"  # the same refresh token twice
    )

    before = refresh_count(oidc)
    dry = cli(gk, "grants", "import", str(csv_file), "--dry-run", "--json", check=False)
    assert dry.returncode == 1, dry.stderr
    report = json.loads(dry.stdout)
    assert report["dry_run"] is True and report["total"] == 5
    assert report["valid"] == 2 and report["failed"] == 3
    by_line = {r["line"]: r for r in report["results"]}
    assert by_line[2]["status"] == "valid" and by_line[3]["status"] == "valid"
    assert by_line[4]["error"]["code"] == "invalid_row" and "user_id" in by_line[4]["error"]["detail"]
    assert by_line[5]["error"]["code"] == "not_found"
    assert by_line[6]["error"] == {"code": "duplicate_refresh_token", "detail": "the same refresh token as line 2"}
    assert refresh_count(oidc) == before  # a dry run never uses a token
    human_dry = cli(gk, "grants", "import", str(csv_file), "--dry-run", check=False)
    assert "dry run: 2 of 5 rows would be imported" in " ".join(human_dry.stdout.split())
    with gk.client() as c:
        assert c.get("/v1/grants").json()["data"] == []

    # the real thing, with only the good rows, as JSON lines
    jsonl = tmp_path / "grants.jsonl"
    jsonl.write_text(
        json.dumps({"integration_id": "acme", "user_id": "u-alice", "refresh_token": tokens[0], "provider_account_id": "alice"})
        + "\n\n"
        + json.dumps({"integration_id": "acme", "user_id": "u-bob", "refresh_token": tokens[1], "scopes": "openid offline_access api:read"})
        + "\n"
        + json.dumps({"integration_id": "acme", "user_id": "u-bad", "refresh_token": "not-a-real-token"})
        + "\n"
    )
    real = cli(gk, "grants", "import", str(jsonl), "--json", check=False)
    assert real.returncode == 1, real.stderr  # one row failed
    report = json.loads(real.stdout)
    assert report["imported"] == 2 and report["failed"] == 1
    results = {r["user_id"]: r for r in report["results"]}
    assert results["u-bad"]["error"]["code"] == "refresh_token_rejected"
    assert refresh_count(oidc) == before + 3  # each token was used once
    for text in (dry.stdout, dry.stderr, human_dry.stdout, real.stdout, real.stderr):
        for t in tokens:
            assert t not in text
    with gk.client() as c:
        for user, account in (("u-alice", "alice"), ("u-bob", "bob")):
            gid = results[user]["grant_id"]
            g = c.get(f"/v1/grants/{gid}").json()
            assert g["status"] == "active" and g["has_refresh_token"] and g["user_id"] == user
            # the stored (rotated) tokens work: the vault refreshes and the provider accepts them
            tok = c.post(f"/v1/grants/{gid}/token", json={"force_refresh": True})
            assert tok.status_code == 200, tok.text
            echo = oidc.http.get(oidc.api_base_url + "/echo/x", headers={"Authorization": "Bearer " + tok.json()["access_token"]})
            assert echo.json()["account"] == account


@pytest.mark.oidc
def test_import_without_verification_and_from_stdin(gk: Server, oidc: OidcServer) -> None:
    oidc.set_ttl(AccessToken=3600)
    integ = setup_oidc_integration(gk, oidc)
    token = provider_refresh_token(gk, oidc, integ.client_id, integ.client_secret, "alice")
    before = refresh_count(oidc)
    data = f"integration_id,user_id,refresh_token,expires_at\nacme,u-1,{token},2020-01-01T00:00:00Z\n"
    r = subprocess.run(
        [sys.executable, "-m", "grantkeeper.cli", "grants", "import", "-", "--format", "csv", "--no-verify", "--json"],
        input=data,
        env=gk.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["imported"] == 1 and report["verify"] is False
    gid = report["results"][0]["grant_id"]
    with gk.client() as c:
        assert c.get(f"/v1/grants/{gid}").json()["created_at"]
        # no access token stored: the worker or the first token request refreshes it
        tok = c.post(f"/v1/grants/{gid}/token")
        assert tok.status_code == 200, tok.text
    assert refresh_count(oidc) == before + 1


def test_import_rejects_bad_files(gk: Server, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("integration_id,user,refresh_token\nacme,u,t\n")
    r = cli(gk, "grants", "import", str(bad), "--dry-run", check=False)
    assert r.returncode == 2 and "unknown column" in r.stderr
    r = cli(gk, "grants", "import", str(tmp_path / "missing.csv"), check=False)
    assert r.returncode == 2 and "cannot read" in r.stderr
    lines = tmp_path / "x.jsonl"
    lines.write_text('{"integration_id": "acme", "user_id": "u", "refresh_token": "secret-value-123", "extra": 1}\nnot json\n[1]\n')
    r = cli(gk, "grants", "import", str(lines), "--dry-run", "--json", check=False)
    assert r.returncode == 1
    report = json.loads(r.stdout)
    assert [x["error"]["code"] for x in report["results"]] == ["invalid_row", "invalid_json", "invalid_row"]
    assert "secret-value-123" not in r.stdout + r.stderr


@pytest.mark.oidc
def test_webhooks_list_shows_recent_deliveries(gk: Server, oidc: OidcServer, webhook_sink: WebhookSink) -> None:
    setup_oidc_integration(gk, oidc)
    with gk.client() as c:
        ep = c.post("/v1/webhook-endpoints", json={"url": webhook_sink.url, "events": ["grant.created"]}).json()
    webhook_sink.fail_next = 1  # the first attempt fails, the retry succeeds
    connect_grant(gk, oidc, "acme", "user-1")
    webhook_sink.wait_for(lambda w: w.json()["type"] == "grant.created", timeout=30)
    deadline = time.monotonic() + 15
    while True:
        endpoints = cli_json(gk, "webhooks", "list")
        d = endpoints[0]["recent_deliveries"]
        if d and d[0]["status"] == "succeeded" or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert endpoints[0]["id"] == ep["id"] and endpoints[0]["url"] == webhook_sink.url
    assert "secret" not in endpoints[0]
    assert d[0]["type"] == "grant.created" and d[0]["status"] == "succeeded" and d[0]["attempts"] == 2
    assert ep["secret"] not in cli(gk, "webhooks", "list").stdout
    assert cli_json(gk, "webhooks", "list", "--deliveries", "0")[0]["recent_deliveries"] == []


def test_audit_tail_follow(gk: Server) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "grantkeeper.cli", "audit", "tail", "--follow", "--json", "--interval", "0.2", "-n", "1"],
        env=gk.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(3)  # let it print the backlog and start polling
        with gk.client() as c:
            r = c.post("/v1/webhook-endpoints", json={"url": "http://127.0.0.1:9/hook", "events": ["*"]})
            assert r.status_code == 201, r.text
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + 20
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(json.loads(line))
            if seen[-1]["action"] == "webhook_endpoint.created":
                break
        assert seen and seen[-1]["action"] == "webhook_endpoint.created", seen
        assert seen[-1]["detail"]["endpoint_id"] == r.json()["id"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
