"""UserInfo (OpenID Connect Core 5.3) or a provider's "who am I" endpoint."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from grantkeeper.errors import ProviderUnavailable
from grantkeeper.netguard import check_url
from grantkeeper.oauth.body import BodyTooLarge, read_body
from grantkeeper.runtime import Runtime

__all__ = ["fetch_userinfo"]


async def fetch_userinfo(rt: Runtime, url: str, access_token: str) -> dict[str, Any] | None:
    """The JSON document, or None when the provider answers anything but a JSON object."""
    check_url(url, allow_private=rt.settings.allow_private_networks, what="userinfo URL")
    try:
        async with rt.http.get(
            url,
            headers={"Authorization": f"Bearer {access_token}", "Accept": "application/json"},
            timeout=aiohttp.ClientTimeout(total=rt.settings.http_timeout),
            allow_redirects=False,
        ) as resp:
            if resp.status != 200:
                return None
            data = orjson.loads(await read_body(resp))
    except (TimeoutError, aiohttp.ClientError, OSError, BodyTooLarge):
        raise ProviderUnavailable("could not reach the provider's userinfo endpoint") from None
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None
