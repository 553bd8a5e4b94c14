from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from grantkeeper.refresh.policy import backoff, due_at


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


def test_backoff_grows_and_honours_retry_after() -> None:
    assert backoff(1, base=2) <= 2
    assert backoff(10, base=2, cap=600) <= 600
    assert backoff(1, retry_after=30) >= 30


@given(
    attempt=st.integers(min_value=-5, max_value=10**9),
    retry_after=st.one_of(st.none(), st.floats(min_value=0, max_value=10**12)),
    seed=st.integers(),
)
def test_backoff_is_bounded_for_any_number_of_failures(attempt: int, retry_after: float | None, seed: int) -> None:
    """Issue 12: after 1,024 failures ``2 ** attempt`` overflowed a float (every token call a 500)."""
    d = backoff(attempt, cap=600, retry_after=retry_after, rng=random.Random(seed))
    assert 0 < d <= 600


def test_backoff_after_a_long_outage() -> None:
    for attempt in (1024, 1025, 5000, 10**6):
        assert 300 <= backoff(attempt) <= 600
