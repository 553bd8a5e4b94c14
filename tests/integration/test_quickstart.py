"""docs/quickstart.md, run as written.

The command blocks marked ``<!-- quickstart:NAME -->`` are extracted from the
document, so this test fails when the document changes in a way that no longer
works. What needs Google is replaced by the equivalent against the test OpenID
provider, and said so where it happens:

- the ``google-mail`` integration is created exactly as written (that needs no
  network), and its connect link must lead to Google's authorization endpoint;
- the dance itself runs on a second integration, ``acme``, made the same way
  for the test provider (provider ``oidc``), and the connect, token, proxy and
  SDK steps then run as written with ``google-mail`` replaced by ``acme``;
- the Gmail API (``https://gmail.googleapis.com`` and its
  ``/gmail/v1/users/me/profile``) becomes the test provider's echo API.

``http://127.0.0.1:8080`` becomes the test server's address, ``grantkeeper``
becomes ``python -m grantkeeper.cli``, and the server runs in a temporary
directory (the relative SQLite path of the document lands there).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from tests.support.gk import free_port
from tests.support.oidc import OidcServer

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "docs" / "quickstart.md"
README = ROOT / "README.md"
DOC_BASE = "http://127.0.0.1:8080"

pytestmark = pytest.mark.oidc


def blocks(doc: Path = QUICKSTART) -> dict[str, tuple[str, str]]:
    """``{name: (language, code)}`` for every ``<!-- quickstart:NAME -->`` block."""
    text = doc.read_text(encoding="utf-8")
    found = re.findall(r"<!-- quickstart:([a-z-]+) -->\s*\n```(\w+)\n(.*?)\n```", text, re.S)
    return {name: (lang, code) for name, lang, code in found}


def shell_lines(code: str) -> list[list[str]]:
    """Commands of a shell block, split like sh: continuation lines joined, comments dropped,
    a quoted string may span lines (as the README's JSON bodies do)."""
    commands: list[list[str]] = []
    pending = ""
    for line in code.replace("\\\n", " ").splitlines():
        pending = f"{pending}\n{line}" if pending else line
        try:
            argv = shlex.split(pending, comments=True)
        except ValueError:  # an open quote: the command goes on
            continue
        pending = ""
        if argv:
            commands.append(argv)
    assert not pending, f"unterminated command: {pending!r}"
    return commands


def expand(arg: str, env: dict[str, str]) -> str:
    return re.sub(r"\$(\w+)", lambda m: env[m.group(1)], arg)


def curl(argv: list[str], env: dict[str, str], base: str) -> httpx.Response:
    """Run a ``curl`` command line from the document with httpx (the options it uses)."""
    assert argv[0] == "curl"
    method, url, headers, data = "GET", None, {}, None
    args = iter(argv[1:])
    for arg in args:
        if arg == "-sS":
            continue
        if arg == "-X":
            method = next(args)
        elif arg == "-H":
            name, _, value = expand(next(args), env).partition(":")
            headers[name.strip()] = value.strip()
        elif arg == "-d":
            data = next(args)
            method = "POST" if method == "GET" else method
        elif arg.startswith("http"):
            url = expand(arg, env).replace(DOC_BASE, base)
        else:
            raise AssertionError(f"the test does not know curl option {arg!r}")
    assert url is not None
    return httpx.request(method, url, headers=headers, content=data, timeout=30)


def cli_argv(argv: list[str]) -> list[str]:
    assert argv[0] == "grantkeeper"
    return [sys.executable, "-m", "grantkeeper.cli", *argv[1:]]


@pytest.fixture
def quickstart_server(tmp_path: Path) -> Iterator[tuple[str, dict[str, str], subprocess.Popen[bytes], Path]]:
    lang, code = blocks()["serve"]
    assert lang == "sh"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRANTKEEPER_")}
    commands = shell_lines(code)
    serve = None
    for argv in commands:
        if argv[0] == "export":
            key, _, value = argv[1].partition("=")
            env[key] = value.replace(DOC_BASE, base)
        else:
            serve = argv
    assert serve == ["grantkeeper", "serve"], serve
    assert env["GRANTKEEPER_DATABASE_URL"] == "sqlite+aiosqlite:///./grantkeeper.db"
    # the test provider runs on loopback, which production settings refuse
    env["GRANTKEEPER_ALLOW_PRIVATE_NETWORKS"] = "1"
    out = tmp_path / "serve.out"
    with open(out, "wb") as stdout, open(tmp_path / "serve.err", "wb") as stderr:
        proc = subprocess.Popen([*cli_argv(serve), "--port", str(port)], cwd=tmp_path, env=env, stdout=stdout, stderr=stderr)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "serve.err").read_text()
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            raise AssertionError("the quickstart server did not become ready")
        yield base, env, proc, tmp_path
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_quickstart_as_written(quickstart_server: tuple[str, dict[str, str], subprocess.Popen[bytes], Path], oidc: OidcServer) -> None:
    base, env, _, cwd = quickstart_server
    docs = blocks()
    assert set(docs) >= {"serve", "api-key", "integration", "connect", "token", "proxy", "sdk"}

    # 1. the install block names what a checkout has (running it is what ./scripts/test does first)
    assert shell_lines(docs["install"][1]) == [["./scripts/setup"], [".", ".venv/bin/activate"]]
    assert os.access(ROOT / "scripts" / "setup", os.X_OK) and (ROOT / ".venv" / "bin" / "grantkeeper").exists()
    # the server made the database and the key file where the document says, and printed a key
    assert (cwd / "grantkeeper.db").exists() and (cwd / "grantkeeper.db.key").exists()
    m = re.search(r"GRANTKEEPER_ADMIN_KEY=(\S+)", (cwd / "serve.out").read_text())
    assert m is not None
    shell = {**env, "GRANTKEEPER_ADMIN_KEY": m.group(1)}

    # 3. an API key for the app, with the command as written
    [argv] = shell_lines(docs["api-key"][1])
    created = subprocess.run(cli_argv(argv), env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=True)
    key = json.loads(created.stdout)
    assert set(key) == {"id", "key"}
    shell["APP_KEY"] = key["key"]

    # 4. the google-mail integration exactly as written
    [put] = shell_lines(docs["integration"][1])
    r = curl(put, shell, base)
    assert r.status_code == 201, r.text
    integ = r.json()
    assert integ["client_secret_set"] is True and "client_secret" not in integ
    assert integ["callback_url"] == base + "/oauth/callback"  # what the reader registers at Google

    # 5. a connect session as written: its link leads to Google with state, PKCE and a nonce
    [post] = shell_lines(docs["connect"][1])
    r = curl(post, shell, base)
    assert r.status_code == 201, r.text
    link = httpx.get(r.json()["connect_url"], follow_redirects=False)
    assert link.status_code == 302
    to_google = urlsplit(link.headers["location"])
    assert to_google.netloc == "accounts.google.com"
    q = parse_qs(to_google.query)
    assert q["redirect_uri"] == [base + "/oauth/callback"] and q["code_challenge_method"] == ["S256"]
    assert q["access_type"] == ["offline"] and "state" in q and "nonce" in q

    # the same integration for the test provider (Google's part of the walkthrough)
    body = json.loads(put[put.index("-d") + 1])
    client_id, secret = oidc.register_client([base + "/oauth/callback"])
    body.update(provider="oidc", issuer=oidc.issuer, client_id=client_id, client_secret=secret,
                scopes=["openid", "offline_access", "api:read"], api_base_url=oidc.api_base_url)
    r = httpx.put(base + "/v1/integrations/acme", json=body, headers={"Authorization": f"Bearer {shell['GRANTKEEPER_ADMIN_KEY']}"})
    assert r.status_code == 201, r.text

    def for_test_provider(argv: list[str]) -> list[str]:
        return [a.replace("google-mail", "acme").replace("gmail/v1/users/me/profile", "echo/profile") for a in argv]

    r = curl(for_test_provider(post), shell, base)
    assert r.status_code == 201, r.text
    outcome = oidc.authorize(r.json()["connect_url"], stop_origin=base)
    assert outcome.final_url is not None and outcome.final_url.startswith(body["return_urls"][0] + "?")
    assert outcome.query["status"] == "success"
    shell["GRANT_ID"] = outcome.query["grant_id"]

    # 6. a token, as written
    [token_cmd] = shell_lines(docs["token"][1])
    r = curl(token_cmd, shell, base)
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    token = r.json()
    assert set(token) == {"access_token", "token_type", "expires_at", "expires_in", "scopes", "grant_id"}

    # 7. the proxy, as written (the Gmail path becomes the echo API)
    [proxy_cmd] = shell_lines(docs["proxy"][1])
    r = curl(for_test_provider(proxy_cmd), shell, base)
    assert r.status_code == 200, r.text
    assert r.json()["account"] == "alice" and r.json()["path"] == "/api/echo/profile"

    # 8. the SDK snippet, as written (Gmail becomes the echo API)
    lang, code = docs["sdk"]
    assert lang == "python"
    code = code.replace(DOC_BASE, base).replace("https://gmail.googleapis.com", oidc.api_base_url)
    code = code.replace("/gmail/v1/users/me/profile", "/echo/profile")
    script = cwd / "snippet.py"
    script.write_text(code)
    run = subprocess.run([sys.executable, str(script)], env=shell, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == 3
    for line in lines[1:]:
        echoed: dict[str, Any] = eval(line, {})  # noqa: S307 - the snippet prints dicts
        assert echoed["account"] == "alice" and echoed["path"] == "/api/echo/profile"
    assert token["access_token"] not in lines[0]  # the echo API echoes the header; the SDK does not

    # the README's five calls, as written, on the same server: the admin key has the name the
    # first start prints, google-mail asks for openid (the account id comes from the ID token)
    readme = shell_lines(blocks(README)["readme"][1])
    assert [a[0] for a in readme] == ["export", "curl", "curl", "curl", "curl"]
    name, _, _ = readme[0][1].partition("=")
    assert name == "GRANTKEEPER_ADMIN_KEY" and name in shell
    r = curl(readme[1], shell, base)
    assert r.status_code in (200, 201), r.text
    assert "openid" in r.json()["scopes"]
    r = curl(readme[2], shell, base)
    assert r.status_code == 201, r.text
    link = httpx.get(r.json()["connect_url"], follow_redirects=False)
    assert urlsplit(link.headers["location"]).netloc == "accounts.google.com"
    assert "openid" in parse_qs(urlsplit(link.headers["location"]).query)["scope"][0].split()
    shell["GRANT"] = shell["GRANT_ID"]
    r = curl(for_test_provider(readme[3]), shell, base)
    assert r.status_code == 200 and r.json()["grant_id"] == shell["GRANT"], r.text
    r = curl(for_test_provider(readme[4]), shell, base)
    assert r.status_code == 200 and r.json()["path"] == "/api/echo/profile", r.text
    # the grant made through the documented integration carries the provider account
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {shell['GRANTKEEPER_ADMIN_KEY']}"}) as c:
        assert c.get(f"/v1/grants/{shell['GRANT']}").json()["provider_account_id"] == "alice"
