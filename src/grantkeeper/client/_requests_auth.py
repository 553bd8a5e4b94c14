"""``requests`` adapter; imported lazily by ``Client.requests_auth``.

Only this module imports ``requests``, so the SDK works without it.
"""

from __future__ import annotations

from typing import Any

import requests
import requests.auth

from ._auth import GrantAuth

__all__ = ["GrantRequestsAuth"]


class GrantRequestsAuth(requests.auth.AuthBase):
    """``requests`` auth stamping a grant's access token, sharing ``GrantAuth``'s
    cache; on a 401 from the provider it refreshes once and resends."""

    def __init__(self, auth: GrantAuth) -> None:
        self._auth = auth

    @property
    def grant_id(self) -> str:
        return self._auth.grant_id

    def __repr__(self) -> str:
        return f"GrantRequestsAuth(grant_id={self.grant_id!r})"

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        token = self._auth.get_token()
        r.headers["Authorization"] = token.authorization
        position: int | None = None
        body: Any = r.body
        if body is not None and hasattr(body, "tell") and hasattr(body, "seek"):
            try:
                position = body.tell()
            except OSError:
                position = None
        stale = token.access_token

        def retry_on_401(response: requests.Response, **kwargs: Any) -> requests.Response:
            if response.status_code != 401:
                return response
            retry_body: Any = response.request.body
            if retry_body is not None and hasattr(retry_body, "read"):
                if position is None:
                    return response  # a stream we cannot rewind: give the 401 back
                retry_body.seek(position)
            fresh = self._auth.get_token(force_refresh=True, stale=stale)
            # Drain and release the 401 before reusing the connection.
            _ = response.content
            response.close()
            prepared = response.request.copy()
            prepared.headers["Authorization"] = fresh.authorization
            if response.connection is None:  # pragma: no cover - adapters always set it
                return response
            retried: requests.Response = response.connection.send(prepared, **kwargs)
            retried.history.append(response)
            retried.request = prepared
            return retried

        r.hooks.setdefault("response", []).append(retry_on_401)
        return r
