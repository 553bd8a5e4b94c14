"""The first hour of a new user (issue 13): what used to trip them over, run as they would.

Real ``grantkeeper`` processes on SQLite in temporary directories, real ``git`` for
the ignore rules, the real test OpenID provider where a grant is needed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from tests.support.flows import connect_grant, setup_oidc_integration
from tests.support.gk import free_port, running_server
from tests.support.oidc import OidcServer

ROOT = Path(__file__).resolve().parents[2]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRANTKEEPER_")}
    env.pop("COLUMNS", None)
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


def cli(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "grantkeeper.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def wait_ready(base: str, proc: subprocess.Popen[bytes], err: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, err.read_text()
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("the server did not become ready")


def git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30)


# ---------------------------------------------------------------- 1. key file and .gitignore


def test_first_start_files_are_ignored_by_git(tmp_path: Path) -> None:
    """``./scripts/serve`` in a clone, then ``git add -A``: nothing the server made may be added."""
    repo = tmp_path / "clone"
    repo.mkdir()
    shutil.copy(ROOT / ".gitignore", repo / ".gitignore")
    assert git(repo, "init", "-q").returncode == 0
    port = free_port()
    with open(tmp_path / "out", "wb") as out, open(tmp_path / "err", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "grantkeeper.cli", "serve", "--port", str(port)],
            cwd=repo, env=clean_env(), stdout=out, stderr=err, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, tmp_path / "err")
        while_running = sorted(p.name for p in repo.iterdir())
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    created = set(while_running) | {p.name for p in repo.iterdir()}
    created -= {".git", ".gitignore"}
    assert "grantkeeper.db" in created
    [key_file] = [n for n in created if "key" in n]
    # the key file ends in .key whatever the database is called: the usual pattern catches it
    assert key_file == "grantkeeper.db.key"
    for name in sorted(created):
        assert git(repo, "check-ignore", "-q", name).returncode == 0, f"{name} is not ignored"
    status = git(repo, "status", "--porcelain", "--untracked-files=all").stdout.split()
    assert status == ["??", ".gitignore"], status


@pytest.mark.parametrize(
    "url",
    [
        "sqlite+aiosqlite:///./grantkeeper.db",
        "sqlite+aiosqlite:///data/vault.sqlite",
        "sqlite+aiosqlite:///./state/tokens.sqlite3",
        "sqlite+aiosqlite:///./my-vault",
    ],
)
def test_every_sqlite_companion_file_is_ignored(tmp_path: Path, url: str) -> None:
    """Whatever the database is called: it, its journal/WAL files and the key file."""
    from grantkeeper.config import Settings

    settings = Settings(database_url=url)
    db, key = settings.sqlite_path(), settings.resolved_key_file()
    assert db is not None and key is not None
    assert key.name.endswith(".key")
    repo = tmp_path / "clone"
    repo.mkdir()
    shutil.copy(ROOT / ".gitignore", repo / ".gitignore")
    git(repo, "init", "-q")
    names = [str(key)]
    if db.suffix:  # a database without a suffix cannot be told from any other file
        names += [str(db), f"{db}-wal", f"{db}-shm", f"{db}-journal"]
    for name in names:
        assert git(repo, "check-ignore", "-q", name).returncode == 0, f"{name} is not ignored"


# ---------------------------------------------------------------- 2. busy port


def test_serve_on_a_busy_port_exits_at_once(tmp_path: Path) -> None:
    # what merely starting the command costs on this machine right now (a loaded CI box
    # takes seconds to import anything); the refusal may take little more than that
    started = time.monotonic()
    assert cli(["--version"], tmp_path, clean_env()).returncode == 0
    baseline = time.monotonic() - started
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        r = cli(["serve", "--port", str(port)], tmp_path, clean_env(), timeout=30)
        elapsed = time.monotonic() - started
    assert r.returncode != 0
    assert elapsed < max(10.0, 3 * baseline), (elapsed, baseline)
    assert "listening" not in r.stdout + r.stderr
    assert f"port {port} is already in use" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    # it failed before touching anything
    assert not (tmp_path / "grantkeeper.db").exists()


def test_serve_announces_itself_only_once_it_answers(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "grantkeeper.cli", "serve", "--port", str(port)],
        cwd=tmp_path, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 30
        line = ""
        while time.monotonic() < deadline and "listening on" not in line:
            line = proc.stderr.readline()
            assert line or proc.poll() is None
        # one line, however narrow the terminal: the banner is not wrapped mid-line
        assert f"grantkeeper listening on http://127.0.0.1:{port} (public URL http://127.0.0.1:8080)" in line
        # the very moment it says so, it answers
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=15)


# ---------------------------------------------------------------- 3. no database


@pytest.mark.parametrize(
    "args",
    [
        ["api-keys", "list"],
        ["environments", "list"],
        ["grants", "list"],
        ["integrations", "list"],
        ["webhooks", "list"],
        ["audit", "tail"],
        ["audit", "verify"],
    ],
)
def test_read_commands_refuse_without_a_database(tmp_path: Path, args: list[str]) -> None:
    r = cli(args, tmp_path, clean_env())
    assert r.returncode != 0
    one_line = " ".join(r.stderr.split())
    assert f"no database at {tmp_path / 'grantkeeper.db'}; set GRANTKEEPER_DATABASE_URL" in one_line, r.stderr
    assert "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []  # neither a database nor a key file appeared


# ---------------------------------------------------------------- 4. API keys are audited


def test_api_key_create_and_revoke_are_audited(tmp_path: Path) -> None:
    with running_server("sqlite", tmp_path, worker=False) as gk:
        created = json.loads(gk.cli("api-keys", "create", "--name", "ci", "--scope", "grants:read", "--json").stdout)
        gk.cli("api-keys", "revoke", created["id"])
        with gk.client() as c:
            events = c.get("/v1/audit-events", params={"limit": 200}).json()["data"]
        by_action = {e["action"]: e for e in events}
        made = by_action["api_key.created"]
        assert made["actor"] == "key:cli"
        assert made["detail"] == {"api_key_id": created["id"], "name": "ci", "scopes": ["grants:read"], "integration_ids": None}
        gone = by_action["api_key.revoked"]
        assert gone["actor"] == "key:cli" and gone["detail"] == {"api_key_id": created["id"]}
        assert created["key"] not in json.dumps(events)
        assert gk.cli("audit", "verify").returncode == 0


# ---------------------------------------------------------------- 5. / and /favicon.ico


def test_root_redirects_to_the_admin_ui_and_there_is_a_favicon(tmp_path: Path) -> None:
    with running_server("sqlite", tmp_path, worker=False) as gk:
        r = httpx.get(gk.base_url + "/", follow_redirects=False)
        assert r.status_code in (302, 307, 308) and r.headers["location"] == "/ui"
        icon = httpx.get(gk.base_url + "/favicon.ico")
        assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/")
        assert len(icon.content) > 0


# ---------------------------------------------------------------- 9. the small ones


def test_version(tmp_path: Path) -> None:
    from importlib.metadata import version

    r = cli(["--version"], tmp_path, clean_env())
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"grantkeeper {version('grantkeeper')}"
    assert list(tmp_path.iterdir()) == []


def test_key_sent_the_wrong_way_gets_a_hint(tmp_path: Path) -> None:
    with running_server("sqlite", tmp_path, worker=False) as gk:
        key = gk.admin_key
        grant = "00000000-0000-4000-8000-000000000000"
        for path, method in (("/v1/grants", "GET"), (f"/v1/grants/{grant}/token", "POST"), (f"/v1/proxy/{grant}/x", "GET")):
            for headers in ({"Authorization": key}, {"X-API-Key": key}, {"Authorization": f"Token {key}"}):
                r = httpx.request(method, gk.base_url + path, headers=headers)
                assert r.status_code == 401, (path, headers, r.text)
                problem = r.json()
                assert problem["code"] == "unauthenticated"
                assert "Authorization: Bearer" in problem["detail"], (path, headers, problem)
                assert key not in r.text
            # a wrong key sent the right way: no hint, and wrong looks like unknown
            wrong = httpx.request(method, gk.base_url + path, headers={"Authorization": f"Bearer {key}x"}).json()
            unknown = httpx.request(method, gk.base_url + path, headers={"Authorization": "Bearer gk_nope_nope"}).json()
            assert wrong == unknown and "Authorization: Bearer" not in wrong["detail"]


def test_unknown_provider_suggests_the_closest_name(tmp_path: Path) -> None:
    with running_server("sqlite", tmp_path, worker=False) as gk, gk.client() as c:
        r = c.get("/v1/providers/gogle-mail")
        assert r.status_code == 404 and r.json()["code"] == "unknown_provider"
        assert "did you mean 'google-mail'?" in r.json()["detail"]
        r = c.put(
            "/v1/integrations/mail",
            json={"provider": "google-mai", "client_id": "c", "client_secret": "s", "scopes": [], "return_urls": ["https://app.example/x"]},
        )
        assert r.status_code == 404 and "did you mean 'google-mail'?" in r.json()["detail"], r.text
        r = c.get("/v1/providers/zzzzzzzzzz")
        assert "did you mean" not in r.json()["detail"]


@pytest.fixture
def sqlite_gk(tmp_path: Path):  # type: ignore[no-untyped-def]
    with running_server("sqlite", tmp_path, worker=False) as server:
        yield server


def test_token_query_parameters(sqlite_gk, oidc: OidcServer) -> None:  # type: ignore[no-untyped-def]
    gk = sqlite_gk
    oidc.set_ttl(AccessToken=8)  # min_ttl is capped at half a token's life: 4 s here
    setup_oidc_integration(gk, oidc)
    grant = connect_grant(gk, oidc, "acme", "u1")
    url = f"/v1/grants/{grant}/token"
    with gk.client() as c:
        first = c.post(url).json()["access_token"]
        time.sleep(4.5)  # the token has less than 4 s left
        r = c.post(url, params={"min_ttl": "0"})
        assert r.status_code == 200, r.text
        assert r.json()["access_token"] == first  # min_ttl=0 from the query: no refresh
        r = c.post(url, params={"min_ttl": "5"})
        assert r.status_code == 200, r.text
        second = r.json()["access_token"]
        assert second != first  # min_ttl=5 from the query: refreshed
        r = c.post(url, params={"force_refresh": "true"})
        assert r.status_code == 200 and r.json()["access_token"] not in (first, second)
        for params in ({"min_ttl": "soon"}, {"min_ttl": "-1"}, {"min_ttl": "86401"}, {"force_refresh": "maybe"}, {"ttl": "300"}):
            r = c.post(url, params=params)
            assert r.status_code == 422, (params, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
        r = c.post(url, params={"min_ttl": "60"}, json={"min_ttl": 60})
        assert r.status_code == 422 and "once" in r.json()["detail"]


def test_second_delete_says_already_revoked(sqlite_gk, oidc: OidcServer) -> None:  # type: ignore[no-untyped-def]
    gk = sqlite_gk
    setup_oidc_integration(gk, oidc)
    grant = connect_grant(gk, oidc, "acme", "u1")
    with gk.client() as c:
        first = c.delete(f"/v1/grants/{grant}").json()
        assert first == {"id": grant, "status": "revoked", "provider_revocation": "succeeded", "already_revoked": False}
        again = c.delete(f"/v1/grants/{grant}").json()
        # the contract's provider_revocation keeps what happened the first time
        assert again == {"id": grant, "status": "revoked", "provider_revocation": "succeeded", "already_revoked": True}


def test_cli_tables_are_not_cut_when_piped(sqlite_gk, oidc: OidcServer) -> None:  # type: ignore[no-untyped-def]
    gk = sqlite_gk
    setup_oidc_integration(gk, oidc, "a-rather-long-integration-name")
    user = "user-with-a-long-identifier@example.com"
    grant = connect_grant(gk, oidc, "a-rather-long-integration-name", user)
    env = {k: v for k, v in gk.env.items() if k != "COLUMNS"}
    r = subprocess.run([sys.executable, "-m", "grantkeeper.cli", "grants", "list"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    [row] = [line for line in r.stdout.splitlines() if grant in line]
    assert user in row and "a-rather-long-integration-name" in row
    assert "…" not in r.stdout
    r = subprocess.run([sys.executable, "-m", "grantkeeper.cli", "api-keys", "list"], env=env, capture_output=True, text=True, timeout=60)
    assert re.search(r"initial admin key", r.stdout) and "…" not in r.stdout


# ---------------------------------------------------------------- 8. noise


def test_cli_commands_do_not_print_migration_chatter(tmp_path: Path) -> None:
    r = cli(["api-keys", "create", "--name", "x", "--scope", "admin", "--json"], tmp_path, clean_env())
    assert r.returncode == 0, r.stderr
    assert "alembic" not in r.stderr and "Context impl" not in r.stderr, r.stderr
    # a write command may create the database (it works before the first start), and says so
    assert " ".join(r.stderr.split()).startswith(f"note: no database at {tmp_path / 'grantkeeper.db'} yet: creating it")
    r = cli(["api-keys", "list"], tmp_path, clean_env())
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_setup_script_does_not_probe_interpreters_once_set_up(tmp_path: Path) -> None:
    """pyenv shims for versions that are not installed complain on stderr when probed."""
    shims = tmp_path / "shims"
    shims.mkdir()
    for name in ("python3.13", "python3.12", "python3.11", "python3"):
        shim = shims / name
        shim.write_text(f"#!/bin/sh\necho 'pyenv: {name}: command not found' >&2\nexit 127\n")
        shim.chmod(0o755)
    clone = tmp_path / "clone"
    (clone / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup", clone / "scripts" / "setup")
    shutil.copy(ROOT / "pyproject.toml", clone / "pyproject.toml")
    (clone / ".venv" / "bin").mkdir(parents=True)
    (clone / ".venv" / "bin" / "python").symlink_to(sys.executable)
    (clone / ".venv" / ".installed").touch()
    env = {**clean_env(), "PATH": f"{shims}:{os.environ['PATH']}"}
    r = subprocess.run(["bash", str(clone / "scripts" / "setup")], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "" and r.stdout == ""


def test_license_is_an_spdx_expression() -> None:
    """The table form makes setuptools print a deprecation warning on every install."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    requires = project["build-system"]["requires"]
    assert any(re.fullmatch(r"setuptools>=(\d+).*", r) and int(re.fullmatch(r"setuptools>=(\d+).*", r).group(1)) >= 77 for r in requires)  # type: ignore[union-attr]


# ---------------------------------------------------------------- 7. the Connect page


def test_connect_page_speaks_plainly(sqlite_gk, oidc: OidcServer) -> None:  # type: ignore[no-untyped-def]
    import html

    from grantkeeper.providers import load_catalog

    gk = sqlite_gk
    gmail = "https://www.googleapis.com/auth/gmail.readonly"
    spec = load_catalog().get("google-mail")
    with gk.client() as c:
        r = c.put("/v1/integrations/mail", json={
            "provider": "google-mail", "client_id": "c", "client_secret": "s", "display_name": "Acme CRM",
            "scopes": ["openid", "email", gmail], "return_urls": ["https://app.example/x"], "connect_page": True,
        })  # fmt: skip
        assert r.status_code == 201, r.text
        link = c.post("/v1/connect/sessions", json={"integration_id": "mail", "user_id": "u", "return_to": "https://app.example/x"}).json()["connect_url"]
    page = html.unescape(httpx.get(link).text)
    assert f"Connect your {spec.display_name} account" in page
    assert "Acme CRM</strong> asks for access" in page
    for scope in ("openid", "email", gmail):
        described = spec.describe_scope(scope)
        assert described and described in page, scope

    setup_oidc_integration(gk, oidc, "acme", display_name="Acme ID", connect_page=True, scopes=("openid", "email", "offline_access", "api:read"))
    with gk.client() as c:
        link = c.post("/v1/connect/sessions", json={"integration_id": "acme", "user_id": "u", "return_to": "http://127.0.0.1:9/app/done/x"}).json()["connect_url"]
    page = html.unescape(httpx.get(link).text)
    assert "Connect your Acme ID account" in page and "Generic OpenID Connect" not in page
    assert "See your email address" in page and "<code>api:read</code>" in page  # undescribed: as is
