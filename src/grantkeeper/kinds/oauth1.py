"""``oauth1`` (RFC 5849, HMAC-SHA1): OAuth 1.0a tokens (Trello, Tumblr, Flickr, X's v1.1 API).

The integration holds the consumer key and secret (``client_id``/``client_secret``). A grant
stores ``oauth_token`` and ``oauth_token_secret`` (sealed), from ``POST /v1/grants`` or the
three-legged flow through the connect URL (RFC 5849 2: temporary credentials, the user's
authorization, the token request with ``oauth_verifier``). There is no access token to hand
out: ``/token`` answers 409 ``no_access_token``; the proxy signs every request (HMAC-SHA1,
``Authorization: OAuth ...``) over the exact upstream URL, form bodies included (RFC 5849
3.4.1.3.1). The signing is Authlib's (``authlib.oauth1.ClientAuth``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import parse_qsl

from authlib.oauth1 import ClientAuth

from grantkeeper.errors import CredentialsRejected, InvalidInput, ProviderUnavailable
from grantkeeper.kinds.base import (
    Credentials,
    Kind,
    KindConfig,
    KindContext,
    Stamp,
    check_fields,
    run_verify_request,
)
from grantkeeper.netguard import check_url

__all__ = ["OAuth1", "TemporaryCredentials", "signed_headers"]

FORM = "application/x-www-form-urlencoded"


def _consumer(cfg: KindConfig) -> tuple[str, str]:
    if cfg.client is None or not cfg.client.client_id or cfg.client.client_secret is None:
        raise InvalidInput("an oauth1 integration needs client_id and client_secret (consumer)")
    return cfg.client.client_id, cfg.client.client_secret


def signed_headers(
    cfg: KindConfig,
    method: str,
    url: str,
    *,
    token: str | None = None,
    token_secret: str | None = None,
    callback: str | None = None,
    verifier: str | None = None,
    body: bytes = b"",
    content_type: str | None = None,
) -> dict[str, str]:
    """The ``Authorization: OAuth ...`` header for one request (Authlib signs)."""
    key, secret = _consumer(cfg)
    auth = ClientAuth(
        key,
        secret,
        token=token,
        token_secret=token_secret,
        redirect_uri=callback,
        verifier=verifier,
    )
    headers = {"Content-Type": content_type} if content_type else {}
    _, signed, _ = auth.sign(method, url, headers, body if content_type == FORM else b"")
    return {"Authorization": signed["Authorization"]}


class TemporaryCredentials:
    """RFC 5849 2.1: the request token pair (the secret stays sealed in the connect session)."""

    def __init__(self, token: str, secret: str) -> None:
        self.token = token
        self.secret = secret

    def __repr__(self) -> str:
        return "TemporaryCredentials(...)"


async def _post_signed(ctx: KindContext, url: str, headers: dict[str, str]) -> dict[str, str]:
    import aiohttp

    check_url(url, allow_private=ctx.allow_private, what="OAuth 1.0a endpoint")
    try:
        async with ctx.http.post(
            url,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=ctx.timeout),
            allow_redirects=False,
        ) as resp:
            status = resp.status
            raw = await resp.content.read(65_536)
    except TimeoutError:
        raise ProviderUnavailable("the provider did not answer in time", retry_after=5) from None
    except (aiohttp.ClientError, OSError) as exc:
        raise ProviderUnavailable(
            f"could not reach the provider ({type(exc).__name__})", retry_after=5
        ) from None
    if status >= 500 or status == 429:
        raise ProviderUnavailable(f"the provider answered HTTP {status}", retry_after=5)
    if status != 200:
        raise CredentialsRejected(f"the provider refused the OAuth 1.0a request (HTTP {status})")
    return dict(parse_qsl(raw.decode("utf-8", "replace")))


class OAuth1(Kind):
    mode: ClassVar[str] = "oauth1"

    def parse(self, cfg: KindConfig, raw: Mapping[str, Any]) -> Credentials:
        _consumer(cfg)
        return Credentials(check_fields(cfg.fields, raw))

    def account_id(self, cfg: KindConfig, creds: Credentials) -> str:
        return creds.values.get("user_id", "")[:255]

    def stamp(
        self,
        cfg: KindConfig,
        creds: Credentials,
        access_token: str | None,
        *,
        method: str = "GET",
        url: str = "",
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Stamp:
        headers = signed_headers(
            cfg,
            method,
            url,
            token=creds.values["oauth_token"],
            token_secret=creds.values["oauth_token_secret"],
            body=body,
            content_type=content_type,
        )
        return Stamp(headers=headers, secrets=(creds.values["oauth_token_secret"],))

    async def verify(self, ctx: KindContext, cfg: KindConfig, creds: Credentials) -> None:
        vr = cfg.verify_request
        if vr is None or not cfg.api_base_url:
            return None
        url = cfg.api_base_url.rstrip("/") + "/" + vr.path.lstrip("/")
        await run_verify_request(ctx, cfg, self.stamp(cfg, creds, None, method=vr.method, url=url))
        return None

    def credentials_view(self, cfg: KindConfig, creds: Credentials) -> dict[str, Any]:
        key, _ = _consumer(cfg)
        return {
            "consumer_key": key,
            "oauth_token": creds.values["oauth_token"],
            "oauth_token_secret": creds.values["oauth_token_secret"],
        }

    async def request_token(
        self, ctx: KindContext, cfg: KindConfig, callback: str
    ) -> TemporaryCredentials:
        """RFC 5849 2.1 (``oauth_callback`` signed; ``oauth_callback_confirmed`` required)."""
        if not cfg.request_token_url:
            raise InvalidInput("the integration has no request_token_url")
        headers = signed_headers(cfg, "POST", cfg.request_token_url, callback=callback)
        body = await _post_signed(ctx, cfg.request_token_url, headers)
        if body.get("oauth_callback_confirmed") != "true" or not body.get("oauth_token"):
            raise CredentialsRejected("the provider did not confirm the callback (RFC 5849 2.1)")
        return TemporaryCredentials(body["oauth_token"], body.get("oauth_token_secret", ""))

    async def access_token(
        self, ctx: KindContext, cfg: KindConfig, temp: TemporaryCredentials, verifier: str
    ) -> Credentials:
        """RFC 5849 2.3: the token request; the answer's extras (``user_id`` ...) kept."""
        if not cfg.access_token_url:
            raise InvalidInput("the integration has no access_token_url")
        headers = signed_headers(
            cfg,
            "POST",
            cfg.access_token_url,
            token=temp.token,
            token_secret=temp.secret,
            verifier=verifier,
        )
        body = await _post_signed(ctx, cfg.access_token_url, headers)
        if not body.get("oauth_token") or not body.get("oauth_token_secret"):
            raise CredentialsRejected("the provider's token answer lacks oauth_token")
        values = {
            "oauth_token": body["oauth_token"],
            "oauth_token_secret": body["oauth_token_secret"],
        }
        for extra in ("user_id", "screen_name", "user_nsid", "username"):
            if isinstance(body.get(extra), str) and body[extra]:
                values[extra] = body[extra][:255]
        return Credentials(values)
