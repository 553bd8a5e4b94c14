from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from grantkeeper.refresh.policy import backoff, due_at, effective_min_ttl


def test_no_refresh_token_means_never_due() -> None:
    assert due_at(now=0, expires_at=100, has_refresh_token=False, margin=300, jitter=30) is None


def test_unknown_expiry_without_idle_limit_is_not_refreshed_blindly() -> None:
    assert due_at(now=0, expires_at=None, has_refresh_token=True, margin=300, jitter=30) is None


def test_idle_expiry_keepalive() -> None:
    d = due_at(now=0, expires_at=None, has_refresh_token=True, margin=300, jitter=0, idle_expiry=90 * 86400)
    assert d == 45 * 86400


@given(
    lifetime=st.floats(min_value=1, max_value=86400),
    margin=st.floats(min_value=0, max_value=3600),
    jitter=st.floats(min_value=0, max_value=600),
    seed=st.integers(),
)
def test_due_is_always_before_expiry_and_not_before_now(lifetime: float, margin: float, jitter: float, seed: int) -> None:
    now = 1000.0
    d = due_at(
        now=now, expires_at=now + lifetime, has_refresh_token=True, margin=margin, jitter=jitter, rng=random.Random(seed)
    )
    assert d is not None
    assert now <= d <= now + lifetime
    # short tokens are refreshed no earlier than mid-life minus a tenth of jitter room
    assert d >= now + lifetime / 2 - lifetime / 10 - 1e-6


def test_effective_min_ttl_is_capped_at_half_the_lifetime() -> None:
    assert effective_min_ttl(300, expires_at=160, issued_at=100) == 30
    assert effective_min_ttl(300, expires_at=None, issued_at=100) == 300
    assert effective_min_ttl(10, expires_at=3700, issued_at=100) == 10


def test_backoff_grows_and_honours_retry_after() -> None:
    assert backoff(1, base=2) <= 2
    assert backoff(10, base=2, cap=600) <= 600
    assert backoff(1, retry_after=30) >= 30
