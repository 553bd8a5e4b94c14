"""When to retry a vault request, and how long to wait first.

Shared by the sync and async clients; it does no I/O itself.

* 429 is always retried: the server refused the request before doing anything.
* 503 is retried for idempotent requests (GET, PUT, DELETE and the token
  endpoint) and for any request answered ``provider_unavailable``.
* Network errors are retried for idempotent requests; errors that prove the
  request never left (connect failures, pool timeouts) are retried for all.
* Nothing else is retried: in particular no 4xx other than 429.

Waits follow ``Retry-After`` when the server sends it (a value above
``max_wait`` is not waited for: the error is raised at once so the caller can
decide), and otherwise exponential backoff with full jitter.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import httpx

from ._exceptions import problem_body
from ._models import parse_retry_after

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})

#: httpx errors raised before the request could reach the server.
_NEVER_SENT: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 3
    backoff_base: float = 0.25
    backoff_max: float = 8.0
    max_wait: float = 60.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if self.max_wait < 0:
            raise ValueError("max_retry_wait must be >= 0")

    def backoff(self, attempt: int) -> float:
        """Full-jitter exponential backoff for retry number ``attempt`` (0-based)."""
        ceiling = min(self.backoff_max, self.backoff_base * (2**attempt))
        return random.uniform(0, ceiling)

    def delay_for_response(
        self,
        response: httpx.Response,
        attempt: int,
        *,
        idempotent: bool,
        vault_problems_only: bool = False,
    ) -> float | None:
        """Seconds to wait before retrying after ``response``, or ``None``.

        ``vault_problems_only`` (proxy calls) retries only problems the vault
        itself raised, never a provider's own 429/503 passed through.
        """
        status = response.status_code
        if status not in (429, 503) or attempt >= self.max_retries:
            return None
        code = problem_body(response).get("code")
        if vault_problems_only and code not in ("provider_unavailable", "rate_limited"):
            return None
        if status == 503 and not idempotent and code != "provider_unavailable":
            return None
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        if retry_after is None:
            return self.backoff(attempt)
        if retry_after > self.max_wait:
            return None
        # A little jitter on top, so that clients told the same value spread out.
        return retry_after + random.uniform(0, min(1.0, 0.1 * max(retry_after, 0.1)))

    def delay_for_error(
        self, error: httpx.RequestError, attempt: int, *, idempotent: bool
    ) -> float | None:
        """Seconds to wait before retrying after a network ``error``, or ``None``."""
        if attempt >= self.max_retries or not isinstance(error, httpx.TransportError):
            return None
        if idempotent or isinstance(error, _NEVER_SENT):
            return self.backoff(attempt)
        return None
