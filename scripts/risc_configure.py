#!/usr/bin/env python3
"""Configure Google's Cross-Account Protection (RISC) stream to push to grantkeeper.

Google's RISC management API authenticates with a JWT signed by a service account that
has the RISC Configuration Admin role (https://developers.google.com/identity/protocols/risc):
``iss`` = ``sub`` = the service account's e-mail, ``aud`` = the RISC management service,
one hour at most. This script builds that token from the service account's JSON key and

- ``--receiver URL``: sets push delivery to URL with the revocation event types grantkeeper
  acts on (``stream:update``);
- ``--status``: prints the current stream configuration;
- ``--verify``: asks Google to send a verification token to the receiver (``stream:verify``).

The key never leaves this process. ``--api`` points at another base URL (tests).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from joserfc import jwt
from joserfc.jwk import RSAKey

API = "https://risc.googleapis.com"
AUDIENCE = "https://risc.googleapis.com/google.identity.risc.v1beta.RiscManagementService"
PUSH = "https://schemas.openid.net/secevent/risc/delivery-method/push"
EVENTS = [
    "https://schemas.openid.net/secevent/risc/event-type/tokens-revoked",
    "https://schemas.openid.net/secevent/risc/event-type/sessions-revoked",
    "https://schemas.openid.net/secevent/risc/event-type/account-disabled",
    "https://schemas.openid.net/secevent/risc/event-type/account-purged",
    "https://schemas.openid.net/secevent/risc/event-type/verification",
]


def auth_token(service_account: dict[str, Any], now: float | None = None) -> str:
    issued = int(now if now is not None else time.time())
    key = RSAKey.import_key(service_account["private_key"])
    claims = {
        "iss": service_account["client_email"],
        "sub": service_account["client_email"],
        "aud": AUDIENCE,
        "iat": issued,
        "exp": issued + 3600,
    }
    header = {"alg": "RS256", "kid": service_account.get("private_key_id", ""), "typ": "JWT"}
    return jwt.encode(header, claims, key)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--service-account", required=True, type=Path, help="the JSON key file")
    action = p.add_mutually_exclusive_group(required=True)
    action.add_argument("--receiver", help="grantkeeper's /provider-events/{env}/{integration} URL")
    action.add_argument("--status", action="store_true")
    action.add_argument("--verify", action="store_true")
    p.add_argument("--api", default=API, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    account = json.loads(args.service_account.read_text())
    headers = {"Authorization": f"Bearer {auth_token(account)}"}
    with httpx.Client(base_url=args.api, headers=headers, timeout=30) as c:
        if args.receiver:
            if not args.receiver.startswith("https://") and args.api == API:
                print("the receiver must be an https:// URL Google can reach", file=sys.stderr)
                return 2
            body = {
                "delivery": {"delivery_method": PUSH, "url": args.receiver},
                "events_requested": EVENTS,
            }
            r = c.post("/v1beta/stream:update", json=body)
        elif args.status:
            r = c.get("/v1beta/stream")
        else:
            r = c.post("/v1beta/stream:verify", json={"state": f"grantkeeper-{int(time.time())}"})
    if r.status_code >= 400:
        print(f"RISC API answered {r.status_code}: {r.text[:500]}", file=sys.stderr)
        return 1
    print(r.text if r.content else "ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
