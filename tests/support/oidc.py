"""The real OpenID provider the test suite runs against (oidc-provider 9.13.3 on Node).

``OidcServer`` starts ``tests/oidc_server/server.mjs``, drives its test-only control
API and registers clients dynamically. ``authorize()`` is a browser-less user that
follows redirects through the provider's login/consent interaction.

Fault modes (switchable at runtime from tests and from the chaos harness, through
the server's ``/__control`` API; ``reset()`` clears them all):

- targets: ``token``, ``revocation``, ``discovery`` (``/.well-known/openid-configuration``),
  ``jwks`` and ``userinfo`` (``/me``);
- ``faults(token=[...], ...)`` queues faults: each request to that target pops one;
- ``fault_policy(token={...}, ...)`` sets a sticky fault applied to every request of that
  target while its queue is empty, with ``"probability"`` (0..1, default 1); ``None`` clears;
- ``release()`` lets every answer held back by ``hold`` (without ``ms``) go out.

Modes (``processed`` = the provider did the work, e.g. rotated the refresh token):

================  =========================================  ===========================
mode              options                                    effect
================  =========================================  ===========================
``status``        ``status`` (503), ``retry_after``,         not processed; that answer
                  ``error``, ``raw_body``, ``content_type``
``invalid_grant`` (token only)                               not processed; 400
``drop_after``                                               processed; socket destroyed
``delay``         ``ms`` (1000)                              processed; answer delayed
``split``         ``chunk`` bytes (16), ``pause_ms`` (20)    processed; body sent in small
                                                             pieces with pauses
``truncate``      ``bytes`` (half the body)                  processed; 2xx with the full
                                                             Content-Length, body cut short
``hold``          ``ms`` (absent: until ``release()``),      processed; answer held back,
                  ``then``: ``"answer"`` | ``"drop"``        then sent or never sent
``none``                                                     a pass-through queue slot
================  =========================================  ===========================

``stats()["faults"]`` counts the faults applied per target and mode.

Fixtures (register with ``pytest_plugins = ["tests.support.oidc"]`` in tests/conftest.py):

- ``oidc_server`` (session scope): one started server for the whole session.
- ``oidc`` (function scope): the same server after ``reset()``.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVER_DIR = REPO_ROOT / "tests" / "oidc_server"

DEFAULT_SCOPE = "openid offline_access api:read"

FAULT_MODES = frozenset(
    {"status", "drop_after", "delay", "split", "truncate", "hold", "invalid_grant", "none"}
)
FAULT_TARGETS = ("token", "revocation", "discovery", "jwks", "userinfo")
ID_TOKEN_DEFECTS = frozenset(
    {
        "wrong_nonce",
        "wrong_aud",
        "wrong_iss",
        "bad_signature",
        "alg_none",
        "expired",
        "missing_azp_multi_aud",
        "none",
    }
)
ISS_MODES = frozenset({"normal", "missing", "foreign", "trailing_slash"})

# Origins of every OidcServer started in this process; authorize() follows them.
_RUNNING_ORIGINS: set[str] = set()
_INSTALL_LOCK = threading.Lock()


class OidcServerError(RuntimeError):
    """The test OpenID provider could not be installed, started or controlled."""


# --------------------------------------------------------------------------- install


def _require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise OidcServerError(
            f"`{name}` was not found on PATH: the oidc tests need Node.js 20+ and npm "
            f"(they run a real oidc-provider from {SERVER_DIR})"
        )
    return path


def ensure_installed(server_dir: Path = SERVER_DIR, *, timeout: float = 600.0) -> None:
    """Run ``npm ci`` in ``server_dir`` once if node_modules is missing.

    Safe across parallel pytest processes: an flock on ``.npm-install.lock`` serialises
    the install, and the check is repeated under the lock.
    """
    marker = server_dir / "node_modules" / "oidc-provider" / "package.json"
    if marker.exists():
        return
    npm = _require_tool("npm")
    _require_tool("node")
    lock_path = server_dir / ".npm-install.lock"
    with _INSTALL_LOCK, open(lock_path, "a+") as lock_file:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
        try:
            if marker.exists():
                return
            result = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=server_dir,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
            if result.returncode != 0 or not marker.exists():
                raise OidcServerError(
                    f"`npm ci` in {server_dir} failed (exit {result.returncode}):\n"
                    f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
                )
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


# --------------------------------------------------------------------------- PKCE etc.


def pkce_pair() -> tuple[str, str]:
    """A fresh (code_verifier, S256 code_challenge) pair."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode()


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def decode_jwt_unverified(jwt: str) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    """(header, payload, signature) of a compact JWS, without verifying anything."""

    def _b64(segment: str) -> bytes:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))

    header, payload, signature = jwt.split(".")
    return json.loads(_b64(header)), json.loads(_b64(payload)), _b64(signature)


# --------------------------------------------------------------------------- server


def _check_fault(target: str, fault: Mapping[str, Any]) -> None:
    mode = fault.get("mode")
    if mode not in FAULT_MODES or (mode == "invalid_grant" and target != "token"):
        raise ValueError(f"unknown {target} fault {fault!r}")


class OidcServer:
    """A running ``tests/oidc_server/server.mjs`` with typed helpers for its control API."""

    def __init__(
        self,
        *,
        port: int = 0,
        log_path: Path | None = None,
        startup_timeout: float = 30.0,
        server_dir: Path = SERVER_DIR,
        extra_args: Sequence[str] = (),
    ) -> None:
        self._extra_args = tuple(extra_args)
        self._requested_port = port
        self._log_path = log_path
        self._startup_timeout = startup_timeout
        self._server_dir = server_dir
        self._proc: subprocess.Popen[bytes] | None = None
        self._issuer: str | None = None
        self._http: httpx.Client | None = None
        self._discovery: dict[str, Any] | None = None

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> Self:
        if self._proc is not None:
            return self
        ensure_installed(self._server_dir)
        node = _require_tool("node")
        if self._log_path is None:
            import tempfile

            fd, name = tempfile.mkstemp(prefix="oidc-server-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self._log_path, "ab")  # the child inherits it
        try:
            self._proc = subprocess.Popen(
                [
                    node,
                    "server.mjs",
                    "--port",
                    str(self._requested_port),
                    "--exit-on-stdin-close",
                    *self._extra_args,
                ],
                cwd=self._server_dir,
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        try:
            self._issuer = self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self._http = httpx.Client(base_url=self._issuer, timeout=15.0)
        _RUNNING_ORIGINS.add(origin_of(self._issuer))
        return self

    def _wait_ready(self) -> str:
        assert self._proc is not None and self._log_path is not None
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            text = self._log_path.read_text(encoding="utf-8", errors="replace")
            for line in text.splitlines():
                if line.startswith("READY "):
                    return line.split(" ", 1)[1].strip()
            if self._proc.poll() is not None:
                raise OidcServerError(
                    f"oidc server exited with {self._proc.returncode} before READY; "
                    f"log {self._log_path}:\n{text[-4000:]}"
                )
            time.sleep(0.05)
        raise OidcServerError(
            f"oidc server not READY within {self._startup_timeout}s; log: {self._log_path}"
        )

    def stop(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
        if self._issuer is not None:
            _RUNNING_ORIGINS.discard(origin_of(self._issuer))
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- addresses ------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        if self._issuer is None:
            raise OidcServerError("oidc server is not started")
        return self._issuer

    @property
    def port(self) -> int:
        port = urlsplit(self.issuer).port
        assert port is not None
        return port

    @property
    def origin(self) -> str:
        return origin_of(self.issuer)

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def api_base_url(self) -> str:
        """Base URL of the protected test API (``/api/echo/...`` etc.)."""
        return f"{self.issuer}/api"

    def discovery(self) -> dict[str, Any]:
        if self._discovery is None:
            self._discovery = self._get_json("/.well-known/openid-configuration")
        return self._discovery

    @property
    def authorization_endpoint(self) -> str:
        return str(self.discovery()["authorization_endpoint"])

    @property
    def token_endpoint(self) -> str:
        return str(self.discovery()["token_endpoint"])

    @property
    def revocation_endpoint(self) -> str:
        return str(self.discovery()["revocation_endpoint"])

    @property
    def userinfo_endpoint(self) -> str:
        return str(self.discovery()["userinfo_endpoint"])

    @property
    def introspection_endpoint(self) -> str:
        return str(self.discovery()["introspection_endpoint"])

    @property
    def registration_endpoint(self) -> str:
        return str(self.discovery()["registration_endpoint"])

    @property
    def jwks_uri(self) -> str:
        return str(self.discovery()["jwks_uri"])

    # -- control API ----------------------------------------------------------------

    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            raise OidcServerError("oidc server is not started")
        return self._http

    def _get_json(self, path: str) -> dict[str, Any]:
        response = self.http.get(path)
        return self._checked(response)

    def _post_json(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        response = self.http.post(path, json=dict(body))
        return self._checked(response)

    @staticmethod
    def _checked(response: httpx.Response) -> dict[str, Any]:
        if response.status_code >= 400:
            raise OidcServerError(
                f"{response.request.method} {response.request.url.path} -> "
                f"{response.status_code}: {response.text[:500]}"
            )
        data = response.json()
        assert isinstance(data, dict)
        return data

    def reset(self) -> None:
        """Clear stats, faults, defects, iss mode, deny, CORS origins; account back to alice; default TTLs.

        Registered clients, grants and tokens are kept.
        """
        self._post_json("/__control/reset", {})

    def stats(self) -> dict[str, Any]:
        """Counters: token{authorization_code,refresh_token,total}, token_requests,
        revocation, revocation_requests, userinfo, introspection, api."""
        return self._get_json("/__control/stats")

    def set_account(self, account: str, deny: bool = False) -> None:
        """Who the next interactions log in as, and whether they deny consent."""
        self._post_json("/__control/account", {"account": account, "deny": deny})

    def set_ttl(self, **ttls: int) -> None:
        """Token lifetimes in seconds: AccessToken, RefreshToken, IdToken."""
        self._post_json("/__control/ttl", ttls)

    def faults(
        self,
        token: Sequence[Mapping[str, Any]] | None = None,
        revocation: Sequence[Mapping[str, Any]] | None = None,
        *,
        discovery: Sequence[Mapping[str, Any]] | None = None,
        jwks: Sequence[Mapping[str, Any]] | None = None,
        userinfo: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        """Queue faults; each request to a target pops one (modes: see the module docstring).

        E.g. ``{"mode": "status", "status": 503, "retry_after": 2}`` (not processed),
        ``{"mode": "split", "chunk": 7, "pause_ms": 30}`` (processed, answer in pieces),
        ``{"mode": "hold", "ms": 3000}`` (processed, answer held back 3 s),
        ``{"mode": "hold", "then": "drop"}`` (processed, answer never sent).
        """
        given = {
            "token": token,
            "revocation": revocation,
            "discovery": discovery,
            "jwks": jwks,
            "userinfo": userinfo,
        }
        body: dict[str, Any] = {}
        for target, faults in given.items():
            if faults is None:
                continue
            for fault in faults:
                _check_fault(target, fault)
            body[target] = [dict(f) for f in faults]
        self._post_json("/__control/faults", body)

    def fault_policy(self, **targets: Mapping[str, Any] | None) -> None:
        """Sticky faults per target (``token={"mode": "status", "status": 503,
        "probability": 0.2}``), applied while the target's queue is empty; ``None`` clears."""
        body: dict[str, Any] = {}
        for target, fault in targets.items():
            if target not in FAULT_TARGETS:
                raise ValueError(f"unknown fault target {target!r}")
            if fault is not None:
                _check_fault(target, fault)
            body[target] = dict(fault) if fault is not None else None
        self._post_json("/__control/fault-policy", body)

    def release(self) -> int:
        """Send every answer held back by a ``hold`` fault without ``ms``; returns how many."""
        return int(self._post_json("/__control/release", {})["released"])

    def id_token_defect(self, kind: str) -> None:
        """The next token response carrying an id_token gets a defective one instead."""
        if kind not in ID_TOKEN_DEFECTS:
            raise ValueError(f"unknown id token defect {kind!r}")
        self._post_json("/__control/id-token-defect", {"kind": kind})

    def iss_mode(self, mode: str) -> None:
        """Rewrite ``iss`` in the next authorization response redirect back to a client."""
        if mode not in ISS_MODES:
            raise ValueError(f"unknown iss mode {mode!r}")
        self._post_json("/__control/iss-mode", {"mode": mode})

    def token_extras(self, **extras: Any) -> None:
        """Members merged into every successful token response from now on (until reset)."""
        self._post_json("/__control/token-extras", extras)

    def allow_cors(self, *origins: str) -> None:
        """Let browsers on ``origins`` call userinfo (CORS); ``reset()`` clears the list."""
        self._post_json("/__control/cors-origins", {"origins": list(origins)})

    def revoke_account_grants(self, account: str) -> int:
        """Revoke every grant (and its tokens) and session of ``account``; returns #grants."""
        data = self._post_json("/__control/revoke-account-grants", {"account": account})
        return int(data["grants_revoked"])

    # -- clients ----------------------------------------------------------------------

    def register_client_metadata(
        self,
        redirect_uris: Sequence[str],
        token_endpoint_auth_method: str = "client_secret_basic",
        grant_types: Iterable[str] = ("authorization_code", "refresh_token"),
        **extra: Any,
    ) -> dict[str, Any]:
        """Dynamic client registration (RFC 7591); returns the full registration response."""
        body: dict[str, Any] = {
            "redirect_uris": list(redirect_uris),
            "response_types": ["code"],
            "grant_types": list(grant_types),
            "token_endpoint_auth_method": token_endpoint_auth_method,
            **extra,
        }
        response = self.http.post("/reg", json=body)
        if response.status_code != 201:
            raise OidcServerError(
                f"client registration failed: {response.status_code} {response.text[:500]}"
            )
        data = response.json()
        assert isinstance(data, dict)
        return data

    def register_client(
        self,
        redirect_uris: list[str],
        token_endpoint_auth_method: str = "client_secret_basic",
        grant_types: Iterable[str] = ("authorization_code", "refresh_token"),
    ) -> tuple[str, str]:
        """Register a client; returns (client_id, client_secret).

        The secret always contains ``+/=%:`` so a client must form-urlencode it for HTTP
        Basic (RFC 6749 2.3.1). The server enforces the registered auth method: a
        ``client_secret_basic`` client that sends the secret in the body (or vice versa)
        gets 401 invalid_client. For ``none`` the secret is ``""``.
        """
        data = self.register_client_metadata(redirect_uris, token_endpoint_auth_method, grant_types)
        return str(data["client_id"]), str(data.get("client_secret", ""))

    def authorization_url(
        self,
        client_id: str,
        redirect_uri: str,
        *,
        code_challenge: str,
        scope: str = DEFAULT_SCOPE,
        state: str | None = None,
        nonce: str | None = None,
        prompt: str | None = "consent",
        **extra: str,
    ) -> str:
        """An authorization-code request URL (PKCE S256) at this provider."""
        params: dict[str, str] = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "scope": scope,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
        }
        if state is not None:
            params["state"] = state
        if nonce is not None:
            params["nonce"] = nonce
        if prompt is not None:
            params["prompt"] = prompt
        params.update(extra)
        return f"{self.authorization_endpoint}?{urlencode(params)}"

    def authorize(
        self, url: str, *, stop_origin: str | None = None, max_hops: int = 20
    ) -> AuthorizationOutcome:
        """``authorize()`` with this provider's origin followed."""
        return authorize(
            url, stop_origin=stop_origin, max_hops=max_hops, follow_origins=[self.origin]
        )


# --------------------------------------------------------------------------- user driver


@dataclass
class AuthorizationOutcome:
    """What the browser-less user saw.

    ``final_url`` is the first redirect target that was not followed (its query parsed
    into ``query``), or None when the chain ended on a non-redirect response (e.g. an
    HTML error page from the provider or a 400 from the callback): see ``last_response``.
    """

    final_url: str | None
    query: dict[str, str]
    responses: list[tuple[int, str]]
    last_response: httpx.Response
    cookies: httpx.Cookies = field(repr=False, default_factory=httpx.Cookies)

    @property
    def last_url(self) -> str:
        return str(self.last_response.url)

    @property
    def code(self) -> str | None:
        return self.query.get("code")

    @property
    def state(self) -> str | None:
        return self.query.get("state")

    @property
    def iss(self) -> str | None:
        return self.query.get("iss")

    @property
    def error(self) -> str | None:
        return self.query.get("error")


def authorize(
    url: str,
    *,
    stop_origin: str | None = None,
    max_hops: int = 20,
    follow_origins: Iterable[str] = (),
    cookies: httpx.Cookies | dict[str, str] | None = None,
    timeout: float = 15.0,
) -> AuthorizationOutcome:
    """Act as a user agent: GET ``url`` and follow redirects with a fresh cookie jar.

    Redirects are followed while they stay on the provider (every started OidcServer,
    plus ``follow_origins``) or on ``stop_origin`` (the grantkeeper server, so its
    ``/oauth/callback`` is visited). The first Location whose origin is none of these
    is returned unfollowed as ``final_url``. A non-redirect response (an HTML error page,
    a 400 from the callback, ...) ends the walk too.
    """
    followed = {origin_of(o) for o in follow_origins} | set(_RUNNING_ORIGINS)
    if stop_origin is not None:
        followed.add(origin_of(stop_origin))
    responses: list[tuple[int, str]] = []
    with httpx.Client(follow_redirects=False, timeout=timeout, cookies=cookies) as client:
        current = url
        for _ in range(max_hops):
            response = client.get(current)
            response.read()
            responses.append((response.status_code, current))
            location = response.headers.get("location")
            if not (300 <= response.status_code < 400 and location):
                return AuthorizationOutcome(None, {}, responses, response, client.cookies)
            target = urljoin(current, location)
            if origin_of(target) not in followed:
                query = dict(parse_qsl(urlsplit(target).query, keep_blank_values=True))
                return AuthorizationOutcome(target, query, responses, response, client.cookies)
            current = target
        raise OidcServerError(f"more than {max_hops} redirects: {responses}")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def oidc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcServer]:
    """One real OpenID provider for the whole session (log under the pytest tmp dir)."""
    log_dir = tmp_path_factory.mktemp("oidc_server")
    server = OidcServer(log_path=log_dir / "server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def oidc(oidc_server: OidcServer) -> OidcServer:
    """The session's OpenID provider, reset (stats, faults, account=alice, TTLs)."""
    oidc_server.reset()
    return oidc_server
