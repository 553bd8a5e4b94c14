"""Providers' own notification schemes: verify a delivery, say which accounts it revokes.

Pure protocol code (no database, no HTTP framework): each ``verify_*`` takes the raw body
and the request headers (lower-case names) and returns a ``Notice`` or raises
``SignalRejected`` with a short reason. The caller maps accounts to grants.

- Slack Events API: ``X-Slack-Signature: v0=hex(HMAC-SHA256(signing secret,
  "v0:{timestamp}:{body}"))``, ``X-Slack-Request-Timestamp`` within 5 minutes;
  ``url_verification`` answers the challenge; ``tokens_revoked`` names user ids of the
  workspace (``team_id``), ``app_uninstalled`` the whole workspace.
- GitHub webhooks: ``X-Hub-Signature-256: sha256=hex(HMAC-SHA256(secret, body))``;
  ``github_app_authorization`` (``revoked``) names the user (``sender.id``), and
  ``installation`` (``deleted``, ``suspend``) the installation.
- Security Event Tokens (RFC 8417, OpenID RISC / CAEP, e.g. Google's Cross-Account
  Protection): a JWT signed by a key of the issuer's JWKS, ``iss`` the issuer, ``aud``
  holding the client id, ``iat`` at most 5 minutes old, a fresh ``jti``; revocation-type
  events whose subject is ``iss_sub`` name the account by ``sub``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from grantkeeper.errors import SignalMalformed, SignalRejected
from grantkeeper.oauth.idtoken import ALLOWED_ALGS
from grantkeeper.oauth.jwsverify import JwsFailure, verify_jwt

__all__ = [
    "REVOKING_SET_EVENTS",
    "Notice",
    "Scheme",
    "verify_github",
    "verify_set",
    "verify_slack",
]

Scheme = Literal["slack", "github", "set"]

#: how old a signed delivery may be (Slack's window; the contract's for ``iat``)
MAX_AGE = 300.0
_LEEWAY = 30.0

#: RISC and CAEP event types after which the provider no longer honours the user's grant
REVOKING_SET_EVENTS = frozenset(
    {
        "https://schemas.openid.net/secevent/risc/event-type/tokens-revoked",
        "https://schemas.openid.net/secevent/risc/event-type/sessions-revoked",
        "https://schemas.openid.net/secevent/risc/event-type/account-disabled",
        "https://schemas.openid.net/secevent/risc/event-type/account-purged",
        "https://schemas.openid.net/secevent/caep/event-type/session-revoked",
    }
)


@dataclass(frozen=True, slots=True)
class Notice:
    """What a verified delivery says."""

    scheme: Scheme
    #: the delivery's own id, refused when seen again (replay)
    event_id: str | None = None
    #: exact provider account ids whose grants are revoked
    accounts: tuple[str, ...] = ()
    #: account-id prefixes (a whole Slack workspace) whose grants are revoked
    account_prefixes: tuple[str, ...] = ()
    #: what happened, for the grant's failure description and the audit trail
    reason: str = ""
    #: a body to answer with instead of the default (Slack's url_verification)
    reply: dict[str, Any] | None = None
    #: event types seen that change nothing here (audited, answered 2xx)
    ignored: tuple[str, ...] = field(default_factory=tuple)

    @property
    def revokes(self) -> bool:
        return bool(self.accounts or self.account_prefixes)


def _json(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise SignalMalformed("the body is not JSON") from None
    if not isinstance(doc, dict):
        raise SignalMalformed("the body is not a JSON object")
    return doc


def _hmac_hex(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _ids(values: Any) -> list[str]:
    if not isinstance(values, list):
        return []
    return [str(v) for v in values if isinstance(v, str | int) and str(v)]


def verify_slack(body: bytes, headers: Mapping[str, str], *, secret: str, now: float) -> Notice:
    ts = headers.get("x-slack-request-timestamp", "")
    sig = headers.get("x-slack-signature", "")
    if not ts or not sig:
        raise SignalRejected("missing X-Slack-Signature or X-Slack-Request-Timestamp")
    try:
        sent = float(int(ts))
    except ValueError:
        raise SignalRejected("bad X-Slack-Request-Timestamp") from None
    expected = "v0=" + _hmac_hex(secret, b"v0:" + ts.encode() + b":" + body)
    if not hmac.compare_digest(expected, sig):
        raise SignalRejected("the Slack signature does not verify")
    if abs(now - sent) > MAX_AGE:
        raise SignalRejected("the Slack request is too old (replay window is 5 minutes)")
    doc = _json(body)
    kind = doc.get("type")
    if kind == "url_verification":
        challenge = doc.get("challenge")
        if not isinstance(challenge, str):
            raise SignalMalformed("url_verification without a challenge")
        return Notice("slack", reply={"challenge": challenge}, ignored=("url_verification",))
    event_id = doc.get("event_id") if isinstance(doc.get("event_id"), str) else None
    event = _obj(doc.get("event"))
    etype = str(event.get("type", kind))
    team = doc.get("team_id") or (
        doc.get("enterprise_id") if doc.get("is_enterprise_install") else None
    )
    if kind != "event_callback" or not isinstance(team, str) or not team:
        return Notice("slack", event_id=event_id, ignored=(etype,))
    if etype == "app_uninstalled":
        # the grant's account id is "{team}/{user}", or the team alone (see the slack hook)
        return Notice(
            "slack",
            event_id=event_id,
            accounts=(team,),
            account_prefixes=(team + "/",),
            reason="slack: app_uninstalled",
        )
    if etype == "tokens_revoked":
        tokens = _obj(event.get("tokens"))
        users = _ids(tokens.get("oauth"))
        if _ids(tokens.get("bot")):
            # a bot token belongs to the installation: grants holding the team's bot token
            accounts = [team, *(f"{team}/{u}" for u in users)]
        else:
            accounts = [f"{team}/{u}" for u in users]
        return Notice(
            "slack",
            event_id=event_id,
            accounts=tuple(dict.fromkeys(accounts)),
            reason="slack: tokens_revoked",
        )
    return Notice("slack", event_id=event_id, ignored=(etype,))


def verify_github(body: bytes, headers: Mapping[str, str], *, secret: str) -> Notice:
    sig = headers.get("x-hub-signature-256", "")
    if not sig.startswith("sha256="):
        raise SignalRejected("missing X-Hub-Signature-256")
    if not hmac.compare_digest("sha256=" + _hmac_hex(secret, body), sig):
        raise SignalRejected("the GitHub signature does not verify")
    event = headers.get("x-github-event", "")
    delivery = headers.get("x-github-delivery") or None
    doc = _json(body)
    action = doc.get("action")
    if event == "github_app_authorization" and action == "revoked":
        sender = _obj(doc.get("sender"))
        user = sender.get("id")
        if isinstance(user, int | str) and str(user):
            return Notice(
                "github",
                event_id=delivery,
                accounts=(str(user),),
                reason="github: github_app_authorization revoked",
            )
    if event == "installation" and action in ("deleted", "suspend"):
        inst = _obj(doc.get("installation"))
        inst_id = inst.get("id")
        if isinstance(inst_id, int | str) and str(inst_id):
            # github_app grants carry the installation id as their provider account id
            return Notice(
                "github",
                event_id=delivery,
                accounts=(str(inst_id),),
                reason=f"github: installation {action}",
            )
    return Notice("github", event_id=delivery, ignored=(f"{event}.{action}" if action else event,))


def _subject_account(subject: Any, issuers: tuple[str, ...]) -> str | None:
    if not isinstance(subject, dict):
        return None
    fmt = subject.get("format", subject.get("subject_type"))
    if fmt != "iss_sub":
        return None
    if subject.get("iss") not in issuers:
        return None
    sub = subject.get("sub")
    return sub if isinstance(sub, str) and sub else None


async def verify_set(
    token: bytes,
    *,
    issuers: tuple[str, ...],
    client_id: str,
    jwks: Callable[[bool], Awaitable[dict[str, Any]]],
    now: float,
) -> Notice:
    """A Security Event Token (RFC 8417), checked as the contract says."""
    try:
        text = token.decode("ascii").strip()
    except UnicodeDecodeError:
        raise SignalMalformed("not a compact JWS") from None
    try:
        claims = await verify_jwt(text, jwks, algorithms=ALLOWED_ALGS)
    except JwsFailure as exc:
        if exc.malformed:
            raise SignalMalformed("not a compact JWS") from None
        if exc.algorithm:
            raise SignalRejected("the token is signed with a disallowed algorithm") from None
        raise SignalRejected("the token's signature does not verify") from None
    if claims.get("iss") not in issuers:
        raise SignalRejected("the token's issuer is not the integration's")
    aud = claims.get("aud")
    auds = aud if isinstance(aud, list) else [aud]
    if client_id not in auds:
        raise SignalRejected("the token is not addressed to this integration's client id")
    iat = claims.get("iat")
    if not isinstance(iat, int | float) or isinstance(iat, bool):
        raise SignalMalformed("the token has no iat")
    if iat > now + _LEEWAY or now - iat > MAX_AGE:
        raise SignalRejected("the token is stale (iat older than 5 minutes) or from the future")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti:
        raise SignalMalformed("the token has no jti")
    events = claims.get("events")
    if not isinstance(events, dict) or not events:
        raise SignalMalformed("the token carries no events")
    accounts: list[str] = []
    types: list[str] = []
    ignored: list[str] = []
    for etype, body in events.items():
        if etype not in REVOKING_SET_EVENTS:
            ignored.append(str(etype))
            continue
        body = body if isinstance(body, dict) else {}
        account = _subject_account(body.get("subject"), issuers) or _subject_account(
            claims.get("sub_id"), issuers
        )
        if account is None:
            ignored.append(str(etype))  # e.g. a token-hash subject: nothing to match safely
            continue
        accounts.append(account)
        types.append(str(etype).rsplit("/", 1)[-1])
    return Notice(
        "set",
        event_id=jti,
        accounts=tuple(dict.fromkeys(accounts)),
        reason="security event: " + ", ".join(dict.fromkeys(types)) if types else "",
        ignored=tuple(ignored),
    )
