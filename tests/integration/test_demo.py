"""``./scripts/demo``: started, walked through as a newcomer would (link, curl), stopped.

The demo runs the test OpenID provider and a vault as real processes; the steps it
prints are run as printed (``curl`` itself), then Ctrl-C must stop everything.
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import IO

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "scripts" / "demo"

pytestmark = pytest.mark.oidc


def closed(url: str) -> bool:
    try:
        httpx.get(url + "/healthz", timeout=2)
    except httpx.ConnectError:
        return True
    return False


def read_until(stream: IO[str], pattern: str, seen: list[str], timeout: float = 120) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            raise AssertionError("the demo stopped:\n" + "".join(seen))
        seen.append(line)
        if m := re.search(pattern, line):
            return m
    raise AssertionError(f"no {pattern!r} within {timeout}s:\n" + "".join(seen))


def test_headless_demo_walks_the_whole_tour() -> None:
    r = subprocess.run([str(DEMO), "--headless", "--port", "0"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "demo complete" in out
    assert "the API saw account 'alice' at /api/echo/hello" in out
    assert '"provider_revocation": "succeeded"' in out and "409 grant_revoked" in out
    vault = re.search(r"vault\s+(http://127\.0\.0\.1:\d+)", out)
    provider = re.search(r"OpenID provider\s+(http://127\.0\.0\.1:\d+)", out)
    assert vault and provider
    assert closed(vault.group(1)) and closed(provider.group(1))


def test_demo_as_a_newcomer_uses_it() -> None:
    proc = subprocess.Popen([str(DEMO), "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    try:
        assert proc.stdout is not None
        vault = read_until(proc.stdout, r"vault\s+(http://127\.0\.0\.1:\d+)", seen).group(1)
        link = read_until(proc.stdout, r"^\s+(http://\S+/connect/\S+)$", seen).group(1)

        # the browser: the Connect page names the provider by the integration and says in plain
        # words what is asked; Continue goes through the provider and back
        with httpx.Client(timeout=30, follow_redirects=True) as browser:
            page = browser.get(link)
            assert page.status_code == 200
            assert "Connect your Acme ID account" in page.text
            assert "Generic OpenID Connect" not in page.text
            done = browser.get(link, params={"continue": "1"})
            assert any("status=success" in str(r.headers.get("location", "")) for r in done.history)

        token_cmd = read_until(proc.stdout, r"^\s+(curl -sS -X POST \S+/token .*)$", seen).group(1)
        proxy_cmd = read_until(proc.stdout, r"^\s+(curl -sS \S+/v1/proxy/.*)$", seen).group(1)
        delete_cmd = read_until(proc.stdout, r"^\s+(curl -sS -X DELETE .*)$", seen).group(1)
        token = json.loads(subprocess.run(shlex.split(token_cmd), capture_output=True, text=True, timeout=30, check=True).stdout)
        assert token["token_type"] == "Bearer" and token["access_token"]
        echoed = json.loads(subprocess.run(shlex.split(proxy_cmd), capture_output=True, text=True, timeout=30, check=True).stdout)
        assert echoed["account"] == "alice" and echoed["path"] == "/api/echo/hello"
        revoked = json.loads(subprocess.run(shlex.split(delete_cmd), capture_output=True, text=True, timeout=30, check=True).stdout)
        assert revoked["status"] == "revoked" and revoked["provider_revocation"] == "succeeded"

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert closed(vault)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
