"""Configuration shared by ``Client`` and ``AsyncClient``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from importlib import metadata
from typing import Any

import httpx

from ._retry import RetryPolicy

logger = logging.getLogger("grantkeeper.client")


def _version() -> str:
    try:
        return metadata.version("grantkeeper")
    except metadata.PackageNotFoundError:  # pragma: no cover - source checkout
        return "0"


USER_AGENT = f"grantkeeper-python/{_version()}"


class Secret:
    """Holds a string that must not show up in reprs, tracebacks or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("a Secret cannot be pickled")


class ClientConfig:
    """Validated constructor arguments; builds URLs and headers for each call."""

    __slots__ = ("base_url", "_api_key", "policy", "timeout")

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float,
        max_retries: int,
        max_retry_wait: float,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must be an http:// or https:// URL")
        if not isinstance(api_key, str) or not api_key:
            raise ValueError("api_key must be a non-empty string")
        if any(ch in api_key for ch in "\r\n"):
            raise ValueError("api_key must not contain line breaks")
        self.base_url = base_url.rstrip("/")
        self._api_key = Secret(api_key)
        self.timeout = timeout
        self.policy = RetryPolicy(max_retries=max_retries, max_wait=max_retry_wait)

    def url(self, path: str) -> str:
        return self.base_url + path

    def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers: dict[str, str] = {"accept": "application/json", "user-agent": USER_AGENT}
        if extra:
            # Caller headers go first so that they can never replace the API key.
            headers.update({k.lower(): v for k, v in extra.items()})
        headers["authorization"] = f"Bearer {self._api_key.reveal()}"
        return headers

    def repr_for(self, kind: str) -> str:
        return f"{kind}(base_url={self.base_url!r}, api_key='**********')"


def describe(response: httpx.Response) -> str:
    request = response.request
    return f"{request.method} {request.url.path} -> {response.status_code}"
