"""``requests`` adapter; imported lazily by ``Client.requests_auth``.

Only this module imports ``requests``, so the SDK works without it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests
import requests.auth

from ._auth import GrantAuth, Stamped

__all__ = ["GrantRequestsAuth"]


class GrantRequestsAuth(requests.auth.AuthBase):
    """``requests`` auth stamping a grant's credential (any kind ``GrantAuth`` stamps),
    sharing ``GrantAuth``'s cache; on a 401 from the provider it renews once and resends."""

    def __init__(self, auth: GrantAuth) -> None:
        self._auth = auth

    @property
    def grant_id(self) -> str:
        return self._auth.grant_id

    def __repr__(self) -> str:
        return f"GrantRequestsAuth(grant_id={self.grant_id!r})"

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        first = self._auth.stamped()
        _apply(r, first)
        position: int | None = None
        body: Any = r.body
        if body is not None and hasattr(body, "tell") and hasattr(body, "seek"):
            try:
                position = body.tell()
            except OSError:
                position = None

        def retry_on_401(response: requests.Response, **kwargs: Any) -> requests.Response:
            if response.status_code != 401:
                return response
            retry_body: Any = response.request.body
            if retry_body is not None and hasattr(retry_body, "read"):
                if position is None:
                    return response  # a stream we cannot rewind: give the 401 back
                retry_body.seek(position)
            again = self._auth.stamped(renew=True, stale=first.key)
            if again.key == first.key:
                return response  # nothing new to try
            # Drain and release the 401 before reusing the connection.
            _ = response.content
            response.close()
            prepared = response.request.copy()
            if first.where == "query":
                prepared.prepare_url(_without_param(prepared.url, first.name), {})
            _apply(prepared, again)
            if response.connection is None:  # pragma: no cover - adapters always set it
                return response
            retried: requests.Response = response.connection.send(prepared, **kwargs)
            retried.history.append(response)
            retried.request = prepared
            return retried

        r.hooks.setdefault("response", []).append(retry_on_401)
        return r


def _without_param(url: str | None, name: str) -> str:
    parts = urlsplit(url or "")
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != name]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _apply(r: requests.PreparedRequest, stamped: Stamped) -> None:
    if stamped.where == "query":
        r.prepare_url(_without_param(r.url, stamped.name), {stamped.name: stamped.value})
    else:
        r.headers[stamped.name] = stamped.value
