"""Admin UI sessions: signed, expiring cookie tokens and CSRF synchronizer tokens.

The cookie never holds the API key. It holds the key's id, its environment, the
issue and expiry times and a random session nonce, signed with HMAC-SHA256 under
a key derived from the vault's primary key-encryption key (``Vault.derive_key``).
Every request still re-reads the API key row, so revoking the key (or taking
away its admin scope) ends the session at once; sign-out records the session's
nonce (hashed) in ``ui_sign_outs`` until the cookie would expire, so a kept copy
of the cookie stops working too.

CSRF tokens are derived from the session nonce (or, before sign-in, from a
short-lived pre-session cookie) and checked on every POST.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from grantkeeper.vault import Vault

__all__ = [
    "IDLE_SECONDS",
    "MAX_SECONDS",
    "CookiePolicy",
    "SessionToken",
    "UiKeys",
    "cookie_policy",
]

#: a session ends after this long without a request ...
IDLE_SECONDS = 2 * 3600
#: ... and at the latest this long after sign-in
MAX_SECONDS = 12 * 3600
#: re-issue the cookie (sliding expiry) when less than this is left of the idle window
_REISSUE_BELOW = IDLE_SECONDS - 300


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class SessionToken:
    key_id: str
    environment_id: str
    issued_at: float
    expires_at: float
    nonce: str

    def needs_reissue(self, now: float) -> bool:
        return self.expires_at - now < _REISSUE_BELOW and self.expires_at < self.max_expiry

    @property
    def max_expiry(self) -> float:
        return self.issued_at + MAX_SECONDS

    def renewed(self, now: float) -> SessionToken:
        return SessionToken(
            self.key_id,
            self.environment_id,
            self.issued_at,
            min(now + IDLE_SECONDS, self.max_expiry),
            self.nonce,
        )


class UiKeys:
    """Signing and CSRF keys, derived once per process from the vault."""

    __slots__ = ("_csrf", "_session")

    def __init__(self, vault: Vault) -> None:
        self._session = vault.derive_key(b"grantkeeper ui session v1")
        self._csrf = vault.derive_key(b"grantkeeper ui csrf v1")

    # -- session cookie -------------------------------------------------------------

    def new_session(self, key_id: str, environment_id: str, now: float) -> SessionToken:
        return SessionToken(
            key_id, environment_id, now, now + IDLE_SECONDS, secrets.token_urlsafe(18)
        )

    def sign(self, token: SessionToken) -> str:
        payload = _b64(
            json.dumps(
                {
                    "k": token.key_id,
                    "e": token.environment_id,
                    "i": int(token.issued_at),
                    "x": int(token.expires_at),
                    "n": token.nonce,
                },
                separators=(",", ":"),
            ).encode()
        )
        return f"{payload}.{self._mac(payload)}"

    def verify(self, value: str | None, now: float) -> SessionToken | None:
        """The token if the signature holds and it has not expired; every failure is ``None``."""
        if not value or len(value) > 1000:
            return None
        payload, sep, mac = value.partition(".")
        if not sep or not hmac.compare_digest(mac.encode(), self._mac(payload).encode()):
            return None
        try:
            data = json.loads(_unb64(payload))
            token = SessionToken(
                str(data["k"]), str(data["e"]), float(data["i"]), float(data["x"]), str(data["n"])
            )
        except (ValueError, KeyError, TypeError):
            return None
        if token.expires_at <= now or token.max_expiry <= now or token.issued_at > now + 60:
            return None
        return token

    def _mac(self, payload: str) -> str:
        msg = b"session|" + payload.encode()
        return _b64(hmac.new(self._session, msg, hashlib.sha256).digest())

    # -- CSRF -------------------------------------------------------------------------

    def csrf_token(self, binding: str) -> str:
        """The synchronizer token for a session nonce (or a pre-session cookie value)."""
        return _b64(hmac.new(self._csrf, b"csrf|" + binding.encode(), hashlib.sha256).digest())

    def csrf_ok(self, binding: str | None, presented: str | None) -> bool:
        if not binding or not presented or len(presented) > 200:
            return False
        return hmac.compare_digest(presented.encode(), self.csrf_token(binding).encode())


@dataclass(frozen=True, slots=True)
class CookiePolicy:
    """Cookie names and the Secure flag, from the public URL."""

    secure: bool

    @property
    def session_name(self) -> str:
        # __Host-: Secure, Path=/, no Domain: a sibling host cannot plant or overwrite it
        return "__Host-gk_ui" if self.secure else "gk_ui"

    @property
    def pre_name(self) -> str:
        return "__Host-gk_ui_pre" if self.secure else "gk_ui_pre"


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cookie_policy(public_url: str) -> CookiePolicy:
    """Secure cookies unless grantkeeper is reached over plain http on a loopback address."""
    parts = urlsplit(public_url)
    insecure_ok = parts.scheme == "http" and _is_loopback(parts.hostname or "")
    return CookiePolicy(secure=not insecure_ok)
