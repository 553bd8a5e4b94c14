"""``./scripts/demo``: grantkeeper end to end in two minutes, nothing to register anywhere.

Starts the test suite's OpenID provider (``tests/oidc_server``, the real
``oidc-provider``; it signs you in as ``alice`` without a password) and a vault wired to
it on a throwaway SQLite database, creates an integration and a connect link, then
shows what to click and what to ``curl``: connect, token, proxy, revoke. Ctrl-C stops
both and deletes everything. ``--headless`` walks the whole tour itself and exits.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx

ROOT = Path(__file__).resolve().parents[1]
OIDC_DIR = ROOT / "tests" / "oidc_server"
INTEGRATION = "acme"
USER = "demo-user"


class DemoError(Exception):
    pass


def say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Demo:
    def __init__(self, tmp: Path, port: int) -> None:
        self.tmp = tmp
        self.port = port
        self.procs: list[subprocess.Popen[bytes]] = []
        self.issuer = ""
        self.base = f"http://127.0.0.1:{port}"
        self.admin_key = ""
        self.app_key = ""
        self.env: dict[str, str] = {}

    # -- processes --------------------------------------------------------------------

    def _wait_for_line(self, path: Path, pattern: str, proc: subprocess.Popen[bytes], what: str) -> str:
        # generous: a loaded machine (a CI box running a test suite) starts Node slowly
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            m = re.search(pattern, path.read_text(errors="replace"), re.M)
            if m:
                return m.group(1)
            if proc.poll() is not None:
                raise DemoError(f"{what} exited:\n{path.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)
        raise DemoError(f"{what} did not start within 150 s (log: {path})")

    def start_provider(self) -> None:
        log = self.tmp / "oidc-provider.log"
        node = shutil.which("node")
        if node is None:
            raise DemoError("the demo needs Node.js (node) for the test OpenID provider")
        with open(log, "wb") as out:
            proc = subprocess.Popen(  # noqa: S603 - fixed arguments
                [node, "server.mjs", "--port", "0", "--exit-on-stdin-close"],
                cwd=OIDC_DIR, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.procs.append(proc)
        self.issuer = self._wait_for_line(log, r"^READY (\S+)", proc, "the OpenID provider")

    def start_vault(self) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GRANTKEEPER_")}
        self.env.update(
            GRANTKEEPER_DATABASE_URL=f"sqlite+aiosqlite:///{self.tmp / 'grantkeeper.db'}",
            GRANTKEEPER_PUBLIC_URL=self.base,
            # the demo's provider runs on loopback, which a real deployment refuses
            GRANTKEEPER_ALLOW_PRIVATE_NETWORKS="1",
            GRANTKEEPER_LOG_LEVEL="WARNING",
            PYTHONUNBUFFERED="1",
        )
        out, err = self.tmp / "vault.out", self.tmp / "vault.log"
        with open(out, "wb") as o, open(err, "wb") as e:
            proc = subprocess.Popen(  # noqa: S603 - fixed arguments
                [sys.executable, "-m", "grantkeeper.cli", "serve", "--port", str(self.port)],
                env=self.env, stdout=o, stderr=e, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        self.procs.append(proc)
        self._wait_for_line(err, r"(listening on)", proc, "grantkeeper")
        self.admin_key = self._wait_for_line(out, r"^GRANTKEEPER_ADMIN_KEY=(\S+)", proc, "grantkeeper")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                if proc.stdin is not None:
                    proc.stdin.close()
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    # -- setup through the public interfaces --------------------------------------------

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {self.admin_key}"}, timeout=30)

    def set_up(self) -> dict[str, Any]:
        reg = httpx.post(
            self.issuer + "/reg",
            json={
                "redirect_uris": [self.base + "/oauth/callback"],
                "response_types": ["code"],
                "grant_types": ["authorization_code", "refresh_token"],
                "token_endpoint_auth_method": "client_secret_basic",
            },
            timeout=30,
        )
        if reg.status_code != 201:
            raise DemoError(f"client registration at the provider failed: {reg.status_code}")
        client = reg.json()
        with self.admin() as c:
            r = c.put(
                f"/v1/integrations/{INTEGRATION}",
                json={
                    "provider": "oidc",
                    "display_name": "Acme ID",
                    "issuer": self.issuer,
                    "client_id": client["client_id"],
                    "client_secret": client["client_secret"],
                    "scopes": ["openid", "email", "offline_access", "api:read"],
                    "return_urls": [self.base + "/ui/connected"],
                    "api_base_url": self.issuer + "/api",
                    "connect_page": True,
                },
            )
            if r.status_code not in (200, 201):
                raise DemoError(f"creating the integration failed: {r.status_code} {r.text}")
        created = subprocess.run(
            [sys.executable, "-m", "grantkeeper.cli", "api-keys", "create", "--name", "demo-app",
             "--scope", "connect", "--scope", "credentials:read", "--scope", "proxy",
             "--scope", "grants:read", "--scope", "grants:write", "--json"],
            env=self.env, capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        self.app_key = json.loads(created.stdout)["key"]
        with self.app() as c:
            r = c.post(
                "/v1/connect/sessions",
                json={"integration_id": INTEGRATION, "user_id": USER, "return_to": self.base + "/ui/connected"},
            )
            if r.status_code != 201:
                raise DemoError(f"creating the connect session failed: {r.status_code} {r.text}")
            session: dict[str, Any] = r.json()
        return session

    def app(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {self.app_key}"}, timeout=30)

    def curl(self, method: str, path: str) -> str:
        flag = f"-X {method} " if method != "GET" else ""
        return f"curl -sS {flag}{shlex.quote(self.base + path)} -H {shlex.quote('Authorization: Bearer ' + self.app_key)}"

    # -- the tour -------------------------------------------------------------------------

    def banner(self, session: dict[str, Any]) -> None:
        say("grantkeeper demo: a vault and a test OpenID provider are running (Ctrl-C stops both")
        say("and deletes everything).")
        say()
        say(f"  vault            {self.base}")
        say(f"  admin UI         {self.base}/ui   (sign in with the admin key)")
        say(f"  admin key        {self.admin_key}")
        say(f"  app key          {self.app_key}   (connect, credentials:read, proxy, grants)")
        say(f"  OpenID provider  {self.issuer}   (the test suite's; signs you in as 'alice')")
        say(f"  integration      {INTEGRATION}: provider oidc, display name 'Acme ID'")
        say()
        say(f"1. Connect: open this connect link (a session for user '{USER}') in your browser:")
        say()
        say(f"     {session['connect_url']}")
        say()

    def wait_connected(self, session_id: str) -> str:
        say("   Waiting for you to connect ...")
        with self.app() as c:
            while True:
                s = c.get(f"/v1/connect/sessions/{session_id}").json()
                if s["status"] == "completed":
                    return str(s["grant_id"])
                if s["status"] == "failed":
                    raise DemoError(f"the connect failed: {s.get('error')}")
                time.sleep(0.5)

    def next_steps(self, grant_id: str) -> None:
        say()
        say(f"   Connected: grant {grant_id} (your app keeps only this id).")
        say()
        say("2. A fresh access token, whenever your backend needs one:")
        say(f"     {self.curl('POST', f'/v1/grants/{grant_id}/token')}")
        say("3. Or let the vault call the provider's API with the token stamped in (the test API")
        say("   echoes what it received):")
        say(f"     {self.curl('GET', f'/v1/proxy/{grant_id}/echo/hello')}")
        say("4. Disconnect: revoke at the provider and destroy the tokens:")
        say(f"     {self.curl('DELETE', f'/v1/grants/{grant_id}')}")
        say()
        say(f"   The grant and its audit trail: {self.base}/ui/grants/{grant_id}")

    def browse(self, connect_url: str) -> str:
        """What a browser does with the connect link: the Connect page's Continue, the provider
        (which signs in 'alice' and consents by itself), back to the vault's callback."""
        with httpx.Client(timeout=30) as browser:
            r = browser.get(connect_url)
            if r.status_code == 200:  # the Connect page: its Continue button
                r = browser.get(connect_url, params={"continue": "1"})
            url = connect_url
            for _ in range(20):
                if r.status_code not in (301, 302, 303, 307, 308):
                    raise DemoError(f"the connect stopped at {url}: {r.status_code}")
                url = urljoin(url, r.headers["location"])
                if url.startswith(self.base + "/ui/connected"):
                    query = parse_qs(urlsplit(url).query)
                    if query.get("status") != ["success"]:
                        raise DemoError(f"the connect failed: {query}")
                    return query["grant_id"][0]
                r = browser.get(url)
        raise DemoError("too many redirects")

    def headless(self, session: dict[str, Any]) -> None:
        say("   (headless: following the link as a browser would)")
        grant_id = self.browse(session["connect_url"])
        self.next_steps(grant_id)
        say()
        with self.app() as c:
            token = c.post(f"/v1/grants/{grant_id}/token")
            if token.status_code != 200:
                raise DemoError(f"token: {token.status_code} {token.text}")
            t = token.json()
            say(f"2. token: {t['token_type']} {t['access_token'][:12]}... expires in {t['expires_in']} s, scopes {' '.join(t['scopes'])}")
            proxied = c.get(f"/v1/proxy/{grant_id}/echo/hello")
            if proxied.status_code != 200:
                raise DemoError(f"proxy: {proxied.status_code} {proxied.text}")
            p = proxied.json()
            say(f"3. proxy: {proxied.status_code}, the API saw account {p['account']!r} at {p['path']}")
            revoked = c.delete(f"/v1/grants/{grant_id}")
            if revoked.status_code != 200:
                raise DemoError(f"revoke: {revoked.status_code} {revoked.text}")
            say(f"4. revoke: {json.dumps(revoked.json())}")
            after = c.post(f"/v1/grants/{grant_id}/token")
            say(f"   a token for the revoked grant now: {after.status_code} {after.json()['code']}")
        say()
        say("demo complete")


def main() -> int:
    ap = argparse.ArgumentParser(prog="scripts/demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=8080, help="the vault's port (0: any free one; default 8080)")
    ap.add_argument("--headless", action="store_true", help="walk the tour without a browser, print it and exit")
    args = ap.parse_args()
    port = args.port
    if port == 0 or not port_free(port):
        if port:
            say(f"port {port} is taken; using another one")
        port = free_port()

    def stop_on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop_on_signal)
    with tempfile.TemporaryDirectory(prefix="grantkeeper-demo-") as tmp:
        demo = Demo(Path(tmp), port)
        try:
            demo.start_provider()
            demo.start_vault()
            session = demo.set_up()
            demo.banner(session)
            if args.headless:
                demo.headless(session)
                return 0
            demo.next_steps(demo.wait_connected(session["id"]))
            say()
            say("Ctrl-C stops the demo.")
            while all(p.poll() is None for p in demo.procs):
                time.sleep(0.5)
            raise DemoError("a demo process stopped unexpectedly")
        except KeyboardInterrupt:
            say("\nstopping")
            return 0
        except (DemoError, subprocess.CalledProcessError, httpx.HTTPError) as exc:
            sys.stderr.write(f"demo failed: {exc}\n")
            return 1
        finally:
            demo.stop()


if __name__ == "__main__":
    sys.exit(main())
