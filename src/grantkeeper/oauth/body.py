"""Reading a provider's answer whole, with a size cap.

``StreamReader.read(n)`` returns whatever is buffered (one TCP segment, perhaps): a
token response that arrives in two pieces is cut short by it, and with refresh-token
rotation that drops the only copy of the new refresh token. Every provider response
(token, discovery, JWKS, userinfo, revocation) is read through ``read_body``.
"""

from __future__ import annotations

import aiohttp

__all__ = ["MAX_PROVIDER_BODY", "BodyTooLarge", "read_body"]

#: the most any provider document may hold (token responses are a few KB)
MAX_PROVIDER_BODY = 1_048_576


class BodyTooLarge(Exception):
    """The provider's answer exceeds the cap (it is not read further)."""


async def read_body(resp: aiohttp.ClientResponse, limit: int = MAX_PROVIDER_BODY) -> bytes:
    """The whole body, until EOF; ``BodyTooLarge`` past ``limit`` bytes.

    Transport errors while reading (``aiohttp.ClientPayloadError``, a reset,
    ``TimeoutError``) propagate: the caller knows whether a partial answer matters.
    """
    declared = resp.content_length
    if declared is not None and declared > limit:
        raise BodyTooLarge(f"the provider announced {declared} bytes (cap {limit})")
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await resp.content.read(65_536)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the provider's answer exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
