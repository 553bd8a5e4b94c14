"""``github_app``: a GitHub App installation (docs.github.com, "Authenticating as a GitHub App
installation").

The integration holds the app's ``app_id`` and private key (sealed, write-only). A grant is
one installation: ``installation_id``, from ``POST /v1/grants`` or the connect URL's
installation flow, checked against the app's installations (``GET /app/installations/{id}``
with an app JWT) before it is saved.

On the connect URL an ``installation_id`` is only a number on a URL anyone can type, so
belonging to the app is not enough: it must be an installation the connecting user can
access. GitHub's documented way ("About the setup URL"): the app requests user
authorization during installation, GitHub adds a ``code`` to the callback, the code becomes
a user-to-server token (the integration's ``client_id``/``client_secret`` at ``token_url``)
and ``GET /user/installations`` with it lists the app's installations that user can access
(:meth:`GitHubApp.user_can_access`). The user token is used for that one check and dropped. Installation tokens are minted with an app JWT
(``POST /app/installations/{id}/access_tokens``) and renewed before their hour is up, under
the refresh lease like any mint; a deleted grant's token is revoked
(``DELETE /installation/token``).

The app JWT: RS256, ``iss`` = app id, ``iat`` 60 s in the past (GitHub's advice against
clock drift), ``exp`` 9 minutes ahead (GitHub allows at most 10).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar

from joserfc import jwt

from grantkeeper.errors import CredentialsRejected, InvalidInput
from grantkeeper.kinds.base import (
    Credentials,
    Kind,
    KindConfig,
    KindContext,
    Outcome,
    check_fields,
    http_json,
)
from grantkeeper.kinds.jwt_bearer import load_private_key
from grantkeeper.oauth.tokens import (
    ClientCredentials,
    OAuthErrorResponse,
    TokenSet,
    token_request,
)

__all__ = ["GitHubApp", "app_jwt"]

#: ``GET /user/installations`` pages read at most (100 per page): a user who can reach more
#: installations of one app than that is refused rather than making us walk on
_MAX_PAGES = 10
_ACCEPT = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}


def app_jwt(cfg: KindConfig, now: float) -> str:
    if not cfg.app_id or not cfg.private_key:
        raise InvalidInput("the GitHub App integration has no app_id or private_key")
    key = load_private_key(cfg.private_key)
    iat = int(now) - 60
    claims = {"iss": cfg.app_id, "iat": iat, "exp": iat + 600 - 60}
    return jwt.encode({"alg": "RS256", "typ": "JWT"}, claims, key, algorithms=["RS256"])


def _api(cfg: KindConfig) -> str:
    if not cfg.api_base_url:
        raise InvalidInput("the GitHub App integration has no api_base_url")
    return cfg.api_base_url.rstrip("/")


class GitHubApp(Kind):
    mode: ClassVar[str] = "github_app"
    has_access_token: ClassVar[bool] = True
    mints: ClassVar[bool] = True

    def parse(self, cfg: KindConfig, raw: Mapping[str, Any]) -> Credentials:
        if isinstance(raw.get("installation_id"), int):
            raw = {**raw, "installation_id": str(raw["installation_id"])}
        return Credentials(check_fields(cfg.fields, raw))

    def account_id(self, cfg: KindConfig, creds: Credentials) -> str:
        return creds.values["installation_id"]

    def _headers(self, ctx: KindContext, cfg: KindConfig) -> dict[str, str]:
        return {**_ACCEPT, "Authorization": f"Bearer {app_jwt(cfg, ctx.now())}"}

    async def installation(
        self, ctx: KindContext, cfg: KindConfig, installation_id: str
    ) -> dict[str, Any]:
        """The installation as GitHub describes it; ``CredentialsRejected`` if it is not the app's."""
        url = f"{_api(cfg)}/app/installations/{installation_id}"
        status, body = await http_json(ctx, "GET", url, self._headers(ctx, cfg))
        if status != 200:
            raise CredentialsRejected(
                f"installation {installation_id} is not an installation of this app (HTTP {status})"
            )
        return body

    async def user_can_access(
        self, ctx: KindContext, cfg: KindConfig, code: str, installation_id: str
    ) -> None:
        """Raise ``CredentialsRejected`` unless the user who authorized ``code`` can access
        ``installation_id`` (GitHub: "Generating a user access token for a GitHub App",
        "List app installations accessible to the user access token")."""
        client = cfg.client
        if client is None or not client.client_secret or not cfg.token_url:
            raise CredentialsRejected(
                "the integration needs the app's client_id, client_secret and token_url to "
                "check who installed it"
            )
        try:
            user = await token_request(
                ctx.token_http,
                cfg.token_url,
                ClientCredentials(client.client_id, client.client_secret, "client_secret_post"),
                {"code": code},
                timeout=ctx.timeout,
            )
        except OAuthErrorResponse as exc:
            raise CredentialsRejected(
                f"GitHub refused the authorization code ({exc.error})"
            ) from None
        headers = {**_ACCEPT, "Authorization": f"Bearer {user.access_token}"}
        for page in range(1, _MAX_PAGES + 1):
            url = f"{_api(cfg)}/user/installations?per_page=100&page={page}"
            status, body = await http_json(ctx, "GET", url, headers)
            if status != 200:
                raise CredentialsRejected(
                    f"GitHub did not list the user's installations (HTTP {status})"
                )
            found = body.get("installations")
            if not isinstance(found, list):
                break
            if any(isinstance(i, dict) and str(i.get("id")) == installation_id for i in found):
                return
            if len(found) < 100:
                break
        raise CredentialsRejected(
            f"installation {installation_id} is not one the connecting user can access"
        )

    async def mint(self, ctx: KindContext, cfg: KindConfig, creds: Credentials) -> TokenSet:
        inst = creds.values["installation_id"]
        url = f"{_api(cfg)}/app/installations/{inst}/access_tokens"
        status, body = await http_json(ctx, "POST", url, self._headers(ctx, cfg))
        if status in (404, 410):
            # the app was uninstalled: this grant is over
            raise OAuthErrorResponse("invalid_grant", "the installation no longer exists", status)
        if status != 201 or not isinstance(body.get("token"), str):
            raise OAuthErrorResponse(
                "invalid_client", f"GitHub refused the app's JWT (HTTP {status})", status
            )
        expires_in: float | None = None
        if isinstance(body.get("expires_at"), str):
            try:
                exp = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
                expires_in = max(exp.timestamp() - ctx.now(), 0.0)
            except ValueError:
                expires_in = None
        return TokenSet(
            access_token=body["token"],
            token_type="Bearer",
            refresh_token=None,
            expires_in=expires_in if expires_in is not None else 3600.0,
            scope=None,
            id_token=None,
        )

    async def verify(
        self, ctx: KindContext, cfg: KindConfig, creds: Credentials
    ) -> TokenSet | None:
        await self.installation(ctx, cfg, creds.values["installation_id"])
        try:
            return await self.mint(ctx, cfg, creds)
        except OAuthErrorResponse as exc:
            raise CredentialsRejected(
                f"GitHub refused the installation token ({exc.error})"
            ) from None

    async def revoke(
        self, ctx: KindContext, cfg: KindConfig, creds: Credentials, access_token: str | None
    ) -> Outcome:
        if access_token is None:
            return "unsupported"
        headers = {**_ACCEPT, "Authorization": f"Bearer {access_token}"}
        status, _ = await http_json(ctx, "DELETE", f"{_api(cfg)}/installation/token", headers)
        # 401: the token had expired or was revoked already; nothing is left to revoke
        return "succeeded" if status in (204, 401) else "failed"
