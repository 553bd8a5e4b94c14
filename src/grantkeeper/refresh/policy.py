"""Pure refresh arithmetic: due times and backoff. No I/O."""

from __future__ import annotations

import random

__all__ = ["backoff", "due_at"]


def due_at(
    *,
    now: float,
    expires_at: float | None,
    has_refresh_token: bool,
    margin: float,
    jitter: float,
    idle_expiry: float | None = None,
    idle_fraction: float = 0.5,
    rng: random.Random | None = None,
) -> float | None:
    """When the proactive worker should refresh this grant next (None: never).

    Ahead of expiry by ``margin`` (at most half the remaining lifetime, so short
    tokens are refreshed mid-life), minus jitter so grants issued together do
    not all fall due at once; and, for refresh tokens that die when idle, a
    keep-alive at ``idle_fraction`` of the idle limit.
    """
    if not has_refresh_token:
        return None
    r = rng or random
    candidates: list[float] = []
    if expires_at is not None:
        remaining = max(expires_at - now, 0.0)
        m = min(margin, remaining / 2)
        j = r.uniform(0, min(jitter, remaining / 10))
        candidates.append(expires_at - m - j)
    if idle_expiry is not None:
        candidates.append(now + idle_expiry * idle_fraction)
    return min(candidates) if candidates else None


def backoff(
    attempt: int,
    *,
    base: float = 2.0,
    cap: float = 600.0,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Exponential backoff with full jitter in ``[d/2, d]``, ``d = min(cap, base * 2**(attempt-1))``.

    Bounded for any ``attempt`` (the exponent is clamped before the power, so a long
    outage never overflows a float), and a provider's ``Retry-After`` is honoured up
    to the cap.
    """
    r = rng or random
    exponent = min(max(attempt - 1, 0), 60)
    d = min(cap, base * (2.0**exponent))
    d = r.uniform(d / 2, d)
    if retry_after is not None and retry_after > 0:
        d = max(d, min(float(retry_after), cap))
    return d
