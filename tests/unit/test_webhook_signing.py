"""Hypothesis properties of webhook signatures (Standard Webhooks, SECURITY.md C14).

``signed_headers`` is what grantkeeper sends; receivers verify with the reference
``standardwebhooks`` library: a round trip verifies, and any change to the body, id,
timestamp, signature or secret fails, as does a timestamp outside the replay window.
"""

from __future__ import annotations

import base64
import json
import time

from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from grantkeeper.webhooks.signing import new_secret, signed_headers

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
# grantkeeper's deliveries are JSON objects (and the reference verifier parses the body)
bodies = st.dictionaries(st.text(max_size=10), json_values, max_size=6).map(json.dumps)
msg_ids = st.from_regex(r"msg_[A-Za-z0-9]{1,40}", fullmatch=True)
secrets_ = st.binary(min_size=24, max_size=64).map(lambda b: "whsec_" + base64.b64encode(b).decode())


def _verifies(secret: str, body: str, headers: dict[str, str]) -> bool:
    try:
        Webhook(secret).verify(body, {k.lower(): v for k, v in headers.items()})
    except WebhookVerificationError:
        return False
    except ValueError:  # a tampered body that no longer parses
        return False
    return True


def test_new_secrets_are_distinct_256_bit() -> None:
    seen = {new_secret() for _ in range(200)}
    assert len(seen) == 200
    for s in seen:
        assert s.startswith("whsec_") and len(base64.b64decode(s[6:])) == 32


@settings(max_examples=200, deadline=None)
@given(secret=secrets_, body=bodies, msg_id=msg_ids)
def test_round_trip(secret: str, body: str, msg_id: str) -> None:
    headers = signed_headers(secret, msg_id, body, time.time())
    assert headers["webhook-id"] == msg_id
    assert _verifies(secret, body, headers)


@settings(max_examples=200, deadline=None)
@given(secret=secrets_, body=bodies, msg_id=msg_ids, extra=st.text(min_size=1, max_size=20), pos=st.integers(0, 2000))
def test_any_body_change_fails(secret: str, body: str, msg_id: str, extra: str, pos: int) -> None:
    headers = signed_headers(secret, msg_id, body, time.time())
    i = min(pos, len(body))
    tampered = body[:i] + extra + body[i:]
    assert not _verifies(secret, tampered, headers)
    if body:
        assert not _verifies(secret, body[:-1], headers)


@settings(max_examples=100, deadline=None)
@given(secret=secrets_, body=bodies, msg_id=msg_ids, other=msg_ids)
def test_other_message_id_fails(secret: str, body: str, msg_id: str, other: str) -> None:
    headers = signed_headers(secret, msg_id, body, time.time())
    if other != msg_id:
        assert not _verifies(secret, body, dict(headers, **{"webhook-id": other}))


@settings(max_examples=100, deadline=None)
@given(secret=secrets_, other=secrets_, body=bodies, msg_id=msg_ids)
def test_other_secret_fails(secret: str, other: str, body: str, msg_id: str) -> None:
    headers = signed_headers(secret, msg_id, body, time.time())
    if other != secret:
        assert not _verifies(other, body, headers)


@settings(max_examples=100, deadline=None)
@given(secret=secrets_, body=bodies, msg_id=msg_ids, shift=st.integers(1, 10_000))
def test_changed_timestamp_fails(secret: str, body: str, msg_id: str, shift: int) -> None:
    now = int(time.time())
    headers = signed_headers(secret, msg_id, body, now)
    moved = dict(headers, **{"webhook-timestamp": str(now - shift)})
    assert not _verifies(secret, body, moved)


@settings(max_examples=100, deadline=None)
# from 310 s: the header's timestamp is whole seconds (truncated), and verifying runs a moment
# after signing; at 301 s a future timestamp fell back inside the window on a loaded machine
@given(secret=secrets_, body=bodies, msg_id=msg_ids, age=st.integers(310, 10**7))
def test_replay_outside_the_window_fails(secret: str, body: str, msg_id: str, age: int) -> None:
    """An old (replayed) delivery, correctly signed for its time, is rejected; so is one from
    the future."""
    now = time.time()
    assert not _verifies(secret, body, signed_headers(secret, msg_id, body, now - age))
    assert not _verifies(secret, body, signed_headers(secret, msg_id, body, now + age))


@settings(max_examples=200, deadline=None)
@given(secret=secrets_, body=bodies, msg_id=msg_ids, data=st.data())
def test_any_signature_change_fails(secret: str, body: str, msg_id: str, data: st.DataObject) -> None:
    headers = signed_headers(secret, msg_id, body, time.time())
    version, _, sig = headers["webhook-signature"].partition(",")
    raw = bytearray(base64.b64decode(sig))
    i = data.draw(st.integers(0, len(raw) - 1))
    bit = data.draw(st.integers(0, 7))
    raw[i] ^= 1 << bit
    forged = f"{version},{base64.b64encode(bytes(raw)).decode()}"
    assert not _verifies(secret, body, dict(headers, **{"webhook-signature": forged}))
    assert not _verifies(secret, body, dict(headers, **{"webhook-signature": ""}))
    assert not _verifies(secret, body, dict(headers, **{"webhook-signature": f"v2,{sig}"}))
