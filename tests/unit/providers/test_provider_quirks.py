"""One test per distinctive quirk of the most used providers.

Response bodies are shaped like the examples in each provider's own documentation (linked from
the quirk in the catalog). Token requests go through a fake token endpoint (httpx.MockTransport)
built from the catalog data, so what is tested is exactly data + named hooks.
"""

from __future__ import annotations

from typing import Any

import pytest
from provider_fakes import (
    CLIENT_ID,
    CLIENT_SECRET,
    FakeTokenEndpoint,
    exchange_code,
    refresh,
)

from grantkeeper.providers import ProviderSpec, load_catalog
from grantkeeper.providers.quirks import (
    apply_refresh_request,
    apply_token_response,
    dotted_get,
    get_hook,
    register_hook,
    resolve_account_id,
    resolve_api_base_url,
)

CATALOG = load_catalog()
DAY = 86400


def spec(name: str) -> ProviderSpec:
    return CATALOG.get(name)


def quirk_ids(name: str) -> set[str]:
    return {q.id for q in spec(name).quirks}


# -- Google ------------------------------------------------------------------------------------


def test_google_refresh_token_only_on_consent_is_documented_and_wired() -> None:
    google = spec("google")
    assert "refresh-token-only-on-consent" in quirk_ids("google")
    assert google.authorization_params["access_type"] == "offline"
    assert google.consent_params == {"prompt": "consent"}
    assert google.authorization_extra_params(consent=False).get("prompt") is None


def test_google_refresh_tokens_never_rotate_and_die_after_six_months_idle() -> None:
    refresh_spec = spec("google").refresh
    assert refresh_spec.rotation == "never"
    assert refresh_spec.idle_expiry == 180 * DAY


def test_google_code_exchange_posts_client_credentials_in_the_body() -> None:
    fake = FakeTokenEndpoint(
        {
            "access_token": "ya29.a0",
            "expires_in": 3599,
            "refresh_token": "1//0g",
            "scope": "openid https://www.googleapis.com/auth/gmail.readonly",
            "token_type": "Bearer",
            "id_token": "eyJ...",
        }
    )
    body = exchange_code(spec("google-mail"), fake)
    form = fake.form()
    assert form["client_secret"] == [CLIENT_SECRET]
    assert fake.basic_credentials() is None
    assert body["refresh_token"] == "1//0g"
    assert fake.last.url == "https://oauth2.googleapis.com/token"


# -- Microsoft ----------------------------------------------------------------------------------


def test_microsoft_refresh_tokens_rotate_and_die_after_90_idle_days() -> None:
    ms = spec("microsoft")
    assert ms.offline_scope == "offline_access"
    assert ms.refresh.rotation == "always"
    assert ms.refresh.idle_expiry == 90 * DAY


def test_microsoft_account_id_is_the_userinfo_sub() -> None:
    userinfo = {"sub": "OLu859SGc2Sr9ZsqbkG-QbeLgJlb41KcdiPoLYNpSFA", "name": "Megan"}
    assert resolve_account_id(spec("microsoft"), {}, None, userinfo) == userinfo["sub"]


def test_microsoft_refresh_uses_the_tenant_token_endpoint() -> None:
    fake = FakeTokenEndpoint(
        {"access_token": "eyJ0", "refresh_token": "new-rt", "expires_in": 3599, "scope": "x"}
    )
    body = refresh(spec("microsoft"), fake, settings={"tenant": "organizations"})
    assert str(fake.last.url) == "https://login.microsoftonline.com/organizations/oauth2/v2.0/token"
    assert body["refresh_token"] == "new-rt"


# -- GitHub ----------------------------------------------------------------------------------------


def test_github_errors_with_http_200_become_rfc_errors() -> None:
    fake = FakeTokenEndpoint(
        {
            "error": "bad_verification_code",
            "error_description": "The code passed is incorrect or expired.",
            "error_uri": "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors/#bad-verification-code",
        }
    )
    body = exchange_code(spec("github"), fake)
    assert body["error"] == "invalid_grant"
    assert body["provider_error"] == "bad_verification_code"
    assert body["error_description"] == "The code passed is incorrect or expired."


def test_github_comma_separated_scope_is_normalised() -> None:
    fake = FakeTokenEndpoint(
        {
            "access_token": "gho_16C7e42F292c6912E7710c838347Ae178B4a",
            "scope": "repo,gist",
            "token_type": "bearer",
        }
    )
    assert exchange_code(spec("github"), fake)["scope"] == "repo gist"


def test_github_oauth_app_tokens_never_expire() -> None:
    gh = spec("github")
    assert gh.refresh.supported is False
    assert gh.refresh.access_tokens_expire is False
    assert gh.revocation_url is None  # not RFC 7009


def test_github_app_tokens_expire_after_eight_hours_and_rotate() -> None:
    app = spec("github-app")
    assert app.refresh.default_access_token_lifetime == 8 * 3600
    assert app.refresh.rotation == "always"
    fake = FakeTokenEndpoint(
        {
            "error": "bad_refresh_token",
            "error_description": "The refresh token passed is incorrect or expired.",
        }
    )
    assert refresh(app, fake)["error"] == "invalid_grant"


def test_github_account_id_is_the_numeric_user_id() -> None:
    assert resolve_account_id(spec("github"), {}, None, {"login": "octocat", "id": 1}) == "1"


# -- GitLab, Bitbucket --------------------------------------------------------------------------------


def test_gitlab_self_managed_host_and_rotation() -> None:
    gl = spec("gitlab")
    endpoints = gl.resolve({"host": "gitlab.example.org"})
    assert endpoints.token_url == "https://gitlab.example.org/oauth/token"
    assert endpoints.issuer == "https://gitlab.example.org"
    assert gl.resolve({}).api_base_url == "https://gitlab.com/api/v4"
    assert gl.refresh.rotation == "always"
    assert gl.refresh.default_access_token_lifetime == 7200


def test_bitbucket_uses_http_basic_and_two_hour_tokens() -> None:
    fake = FakeTokenEndpoint(
        {
            "access_token": "a",
            "refresh_token": "r",
            "expires_in": 7200,
            "scopes": "account",
            "token_type": "bearer",
        }
    )
    refresh(spec("bitbucket"), fake)
    assert fake.basic_credentials() == (CLIENT_ID, CLIENT_SECRET)
    assert "client_secret" not in fake.form()
    assert spec("bitbucket").refresh.default_access_token_lifetime == 7200


# -- Slack --------------------------------------------------------------------------------------------

SLACK_V2 = {
    "ok": True,
    "access_token": "xoxb-17653672481-19874698323-pdFZKVeTuE8sk7oOcBrzbqgy",
    "token_type": "bot",
    "scope": "commands,incoming-webhook",
    "bot_user_id": "U0KRQLJ9H",
    "app_id": "A0KRD7HC3",
    "team": {"name": "Slack Softball Team", "id": "T9TK3CUKW"},
    "enterprise": {"name": "slack-sports", "id": "E12345678"},
    "authed_user": {
        "id": "U1234",
        "scope": "chat:write",
        "access_token": "xoxp-1234",
        "token_type": "user",
    },
}


def test_slack_bot_token_stays_and_scope_becomes_space_separated() -> None:
    body = apply_token_response(spec("slack"), SLACK_V2)
    assert body["access_token"].startswith("xoxb-")
    assert body["scope"] == "commands incoming-webhook"
    assert body["token_type"] == "Bearer"
    assert SLACK_V2["scope"] == "commands,incoming-webhook"  # input untouched


def test_slack_user_token_is_lifted_from_authed_user() -> None:
    user_only = {
        "ok": True,
        "app_id": "A0KRD7HC3",
        "authed_user": {
            "id": "U1234",
            "scope": "chat:write,users:read",
            "access_token": "xoxe.xoxp-1-abc",
            "token_type": "user",
            "refresh_token": "xoxe-1-def",
            "expires_in": 43200,
        },
        "team": {"id": "T9TK3CUKW"},
    }
    body = apply_token_response(spec("slack"), user_only)
    assert body["access_token"] == "xoxe.xoxp-1-abc"
    assert body["refresh_token"] == "xoxe-1-def"
    assert body["expires_in"] == 43200
    assert body["scope"] == "chat:write users:read"
    assert body["token_type"] == "Bearer"


def test_slack_errors_with_http_200_become_rfc_errors() -> None:
    fake = FakeTokenEndpoint({"ok": False, "error": "invalid_refresh_token"})
    body = refresh(spec("slack"), fake)
    assert body["error"] == "invalid_grant"
    assert body["provider_error"] == "invalid_refresh_token"
    assert fake.form()["client_id"] == [CLIENT_ID]


def test_slack_unknown_error_is_kept() -> None:
    body = apply_token_response(spec("slack"), {"ok": False, "error": "ratelimited"})
    assert body["error"] == "ratelimited"


def test_slack_rotation_is_opt_in_and_tokens_without_expiry_do_not_expire() -> None:
    slack = spec("slack")
    assert slack.refresh.rotation == "optional"
    assert slack.refresh.access_tokens_expire is False
    assert "opt-in-rotation-single-use" in quirk_ids("slack")


def test_slack_account_id_is_team_and_user() -> None:
    assert resolve_account_id(spec("slack"), SLACK_V2, None, None) == "T9TK3CUKW/U1234"
    assert resolve_account_id(spec("slack"), {"team": {"id": "T1"}}, None, None) == "T1"
    assert resolve_account_id(spec("slack"), {}, None, None) is None


# -- Discord, Zoom, Box, Spotify ------------------------------------------------------------------


def test_discord_refresh_returns_a_new_refresh_token() -> None:
    fake = FakeTokenEndpoint(
        {
            "access_token": "6qrZcUqja7812RVdnEKjpzOL4CvHBFG",
            "token_type": "Bearer",
            "expires_in": 604800,
            "refresh_token": "D43f5y0ahjqew82jZ4NViEr2YafMKhue",
            "scope": "identify",
        }
    )
    body = refresh(spec("discord"), fake)
    assert body["refresh_token"] == "D43f5y0ahjqew82jZ4NViEr2YafMKhue"
    assert spec("discord").refresh.rotation == "always"
    assert fake.basic_credentials() == (CLIENT_ID, CLIENT_SECRET)


def test_zoom_basic_auth_and_latest_refresh_token_only() -> None:
    fake = FakeTokenEndpoint(
        {
            "access_token": "eyJ",
            "token_type": "bearer",
            "refresh_token": "eyJr",
            "expires_in": 3599,
            "scope": "user:read",
        }
    )
    refresh(spec("zoom"), fake)
    assert fake.basic_credentials() == (CLIENT_ID, CLIENT_SECRET)
    assert spec("zoom").refresh.rotation == "always"
    assert spec("zoom").refresh.default_access_token_lifetime == 3600


def test_box_single_use_refresh_tokens() -> None:
    box = spec("box")
    assert box.refresh.rotation == "always"
    assert box.refresh.refresh_token_lifetime == 60 * DAY
    fake = FakeTokenEndpoint(
        {
            "access_token": "c3FIOG9vSGV4VHpm",
            "expires_in": 3600,
            "refresh_token": "c3FIOG9vSGV4VHpm2",
            "token_type": "bearer",
            "restricted_to": [],
        }
    )
    refresh(box, fake)
    assert fake.form()["client_secret"] == [CLIENT_SECRET]


def test_spotify_refresh_may_omit_the_refresh_token() -> None:
    sp = spec("spotify")
    assert sp.refresh.rotation == "optional"
    fake = FakeTokenEndpoint(
        {
            "access_token": "NgA6ZcYI",
            "token_type": "Bearer",
            "scope": "user-read-private",
            "expires_in": 3600,
        }
    )
    body = refresh(sp, fake)
    assert "refresh_token" not in body  # the engine keeps the old one (RFC 6749 section 6)
    assert fake.basic_credentials() == (CLIENT_ID, CLIENT_SECRET)


# -- Salesforce ----------------------------------------------------------------------------------------

SALESFORCE = {
    "access_token": "00Dxx0000000123!AR8AQJ",
    "refresh_token": "5Aep861",
    "signature": "abc123XYZ=",
    "scope": "refresh_token api",
    "instance_url": "https://yourInstance.my.salesforce.com",
    "id": "https://login.salesforce.com/id/00Dx0000000BV7z/005x00000012Q9P",
    "token_type": "Bearer",
    "issued_at": "1278448101416",
}


def test_salesforce_api_calls_go_to_instance_url() -> None:
    sf = spec("salesforce")
    assert resolve_api_base_url(sf, SALESFORCE, None) == (
        "https://yourinstance.my.salesforce.com/services/data"
    )


@pytest.mark.parametrize(
    "instance",
    [
        "https://evil.example.com",
        "http://na1.salesforce.com",
        "https://na1.salesforce.com.evil.com",
        "https://user@na1.salesforce.com",
        "https://na1.salesforce.com:8443",
        "https://na1.salesforce.com/services?x=1",
        "https://[na1.salesforce.com",
        "na1.salesforce.com",
        None,
        42,
    ],
)
def test_salesforce_foreign_instance_url_is_ignored(instance: Any) -> None:
    body = {**SALESFORCE, "instance_url": instance}
    assert resolve_api_base_url(spec("salesforce"), body, "https://fallback.salesforce.com") == (
        "https://fallback.salesforce.com"
    )


def test_salesforce_account_id_from_identity_url() -> None:
    assert resolve_account_id(spec("salesforce"), SALESFORCE, None, None) == (
        "00Dx0000000BV7z/005x00000012Q9P"
    )
    assert resolve_account_id(spec("salesforce"), {"id": "https://[x/id/a/b"}, None, None) is None
    claims = {"organization_id": "00Dx", "user_id": "005x"}
    assert resolve_account_id(spec("salesforce"), {}, claims, None) == "00Dx/005x"


def test_salesforce_sends_no_expires_in_so_two_hours_are_assumed() -> None:
    sf = spec("salesforce")
    assert "expires_in" not in SALESFORCE
    assert sf.refresh.default_access_token_lifetime == 7200
    assert sf.offline_scope == "refresh_token"


# -- HubSpot, Pipedrive, Zendesk, Intercom -------------------------------------------------------------


def test_hubspot_refresh_token_is_reused() -> None:
    hs = spec("hubspot")
    assert hs.refresh.rotation == "never"
    fake = FakeTokenEndpoint(
        {
            "token_type": "bearer",
            "refresh_token": "6f18f21e",
            "access_token": "CN2zlYnmLBI",
            "expires_in": 1800,
        }
    )
    refresh(hs, fake)
    assert fake.form()["client_secret"] == [CLIENT_SECRET]


def test_pipedrive_api_domain_from_token_response() -> None:
    pd = spec("pipedrive")
    body = {
        "access_token": "53:179:63",
        "token_type": "Bearer",
        "expires_in": 3599,
        "refresh_token": "53:179:5d",
        "scope": "base,deals:full",
        "api_domain": "https://mycompanydomain.pipedrive.com",
    }
    assert resolve_api_base_url(pd, body, pd.api_base_url) == (
        "https://mycompanydomain.pipedrive.com/api/v1"
    )
    evil = {**body, "api_domain": "https://pipedrive.com.evil.net"}
    assert resolve_api_base_url(pd, evil, pd.api_base_url) == "https://api.pipedrive.com/v1"
    assert pd.refresh.idle_expiry == 60 * DAY


def test_zendesk_no_expires_in_means_no_expiry_and_subdomain_endpoints() -> None:
    zd = spec("zendesk")
    assert zd.refresh.access_tokens_expire is False
    assert zd.refresh.default_access_token_lifetime is None
    fake = FakeTokenEndpoint(
        {
            "access_token": "gErypPlm4dOVgGRvA1ZzMH5MQ3nLo8bo",
            "token_type": "bearer",
            "scope": "read",
        }
    )
    body = exchange_code(zd, fake, {"subdomain": "acme"})
    assert str(fake.last.url) == "https://acme.zendesk.com/oauth/tokens"
    assert "expires_in" not in body


def test_intercom_tokens_never_expire_and_account_is_the_workspace() -> None:
    ic = spec("intercom")
    assert ic.refresh.supported is False and ic.refresh.access_tokens_expire is False
    me = {"type": "admin", "id": "1295", "app": {"type": "app", "id_code": "xyz789"}}
    assert resolve_account_id(ic, {}, None, me) == "xyz789"


# -- Notion, Airtable, Asana, Linear --------------------------------------------------------------


def test_notion_basic_auth_owner_user_and_bot_id() -> None:
    notion = spec("notion")
    fake = FakeTokenEndpoint(
        {
            "access_token": "e202e8c9-0990-40af",
            "token_type": "bearer",
            "refresh_token": "nrt_1",
            "bot_id": "b3414d659-1224-5ty7-6ffr-cc9d8773drt601288f",
            "workspace_id": "j565j4d7x3-2882-61bs-564a-jj9d9ui-c36hxfr7x",
            "owner": {"type": "user", "user": {"object": "user", "id": "u1"}},
        }
    )
    body = exchange_code(notion, fake)
    assert fake.basic_credentials() == (CLIENT_ID, CLIENT_SECRET)
    assert notion.authorization_params == {"owner": "user"}
    assert (
        resolve_account_id(notion, body, None, None)
        == "b3414d659-1224-5ty7-6ffr-cc9d8773drt601288f"
    )
    assert notion.refresh.access_tokens_expire is False


def test_airtable_pkce_and_single_use_refresh_tokens() -> None:
    at = spec("airtable")
    assert at.pkce is True
    assert at.refresh.rotation == "always"
    assert at.refresh.refresh_token_lifetime == 60 * DAY
    fake = FakeTokenEndpoint(
        {
            "access_token": "a",
            "refresh_token": "b",
            "token_type": "Bearer",
            "scope": "data.records:read",
            "expires_in": 3600,
            "refresh_expires_in": 5184000,
        }
    )
    exchange_code(at, fake)
    assert "code_verifier" in fake.form()


def test_asana_account_from_token_response_data() -> None:
    body = {
        "access_token": "f6ds7fdsa69ags7ag9sd5a",
        "expires_in": 3600,
        "token_type": "bearer",
        "data": {
            "id": 4673218951,
            "gid": "4673218951",
            "name": "Greg Sanchez",
            "email": "gsanchez@example.com",
        },
        "refresh_token": "hjkl325hjkl4325hj4kl32fjds",
    }
    assert resolve_account_id(spec("asana"), body, None, None) == "4673218951"


def test_linear_comma_scope_is_normalised() -> None:
    fake = FakeTokenEndpoint(
        {
            "access_token": "lin_oauth_1",
            "token_type": "Bearer",
            "expires_in": 86399,
            "scope": "read,write",
        }
    )
    assert exchange_code(spec("linear"), fake)["scope"] == "read write"


# -- Atlassian, Dropbox, Xero, QuickBooks --------------------------------------------------------------


def test_atlassian_rotating_refresh_tokens_with_idle_and_absolute_expiry() -> None:
    for name in ("atlassian", "jira", "confluence"):
        r = spec(name).refresh
        assert r.rotation == "always"
        assert r.idle_expiry == 90 * DAY
        assert r.refresh_token_lifetime == 365 * DAY
    assert (
        resolve_account_id(spec("jira"), {}, None, {"account_id": "5b10ac8d82e05b22cc7d4ef5"})
        == "5b10ac8d82e05b22cc7d4ef5"
    )


def test_dropbox_offline_access_and_account_id() -> None:
    db = spec("dropbox")
    assert db.authorization_params == {"token_access_type": "offline"}
    body = {
        "access_token": "sl.AbX9y6Fe3AuH5o66",
        "expires_in": 14400,
        "token_type": "bearer",
        "scope": "account_info.read",
        "refresh_token": "nBiM85CZALsAAAAAAAAAAQXHBoNpNutK4ngsXHsqW4iGz9tisb3JyjGqikMJIYbd",
        "account_id": "dbid:AAH4f99T0taONIb-OurWxbNQ6ywGRopQngc",
        "uid": "12345",
    }
    assert resolve_account_id(db, body, None, None) == "dbid:AAH4f99T0taONIb-OurWxbNQ6ywGRopQngc"


def test_xero_offline_access_rotation_and_sixty_day_idle_expiry() -> None:
    xero = spec("xero")
    assert xero.offline_scope == "offline_access"
    assert xero.refresh.rotation == "always"
    assert xero.refresh.idle_expiry == 60 * DAY
    assert xero.refresh.default_access_token_lifetime == 1800
    fake = FakeTokenEndpoint(
        {
            "id_token": "eyJ",
            "access_token": "eyJa",
            "expires_in": 1800,
            "token_type": "Bearer",
            "refresh_token": "fa6e8b3e",
            "scope": "openid profile email accounting.transactions offline_access",
        }
    )
    refresh(xero, fake)
    assert fake.basic_credentials() == (CLIENT_ID, CLIENT_SECRET)


def test_quickbooks_latest_refresh_token_and_basic_auth() -> None:
    qb = spec("quickbooks")
    assert qb.refresh.rotation == "optional"
    fake = FakeTokenEndpoint(
        {
            "token_type": "bearer",
            "expires_in": 3600,
            "refresh_token": "Q011511567",
            "x_refresh_token_expires_in": 8726400,
            "access_token": "eyJlbmMiOiJBMTI4Q0JDLUhTMjU2In0",
        }
    )
    body = refresh(qb, fake)
    assert body["refresh_token"] == "Q011511567"
    assert fake.basic_credentials() == (CLIENT_ID, CLIENT_SECRET)
    assert "realm-id-in-callback" in quirk_ids("quickbooks")


# -- Stripe, Shopify ----------------------------------------------------------------------------------


def test_stripe_connected_account_id() -> None:
    body = {
        "access_token": "sk_test_xxx",
        "livemode": False,
        "refresh_token": "rt_xxx",
        "token_type": "bearer",
        "stripe_publishable_key": "pk_test_xxx",
        "stripe_user_id": "acct_1032D82eZvKYlo2C",
        "scope": "read_write",
    }
    assert resolve_account_id(spec("stripe"), body, None, None) == "acct_1032D82eZvKYlo2C"
    assert spec("stripe").revocation_url is None  # deauthorize is not RFC 7009


def test_shopify_token_goes_in_its_own_header() -> None:
    shop = spec("shopify")
    assert shop.stamp.location == "header"
    assert shop.stamp.name == "X-Shopify-Access-Token"
    assert shop.stamp.render("shpat_abc") == "shpat_abc"
    assert shop.resolve({"shop": "acme"}).api_base_url == "https://acme.myshopify.com/admin/api"
    body = apply_token_response(
        shop, {"access_token": "shpat_abc", "scope": "write_orders,read_customers"}
    )
    assert body["scope"] == "write_orders read_customers"


# -- Twitch, LinkedIn, X, Reddit, Figma, Calendly, DocuSign --------------------------------------------


def test_twitch_scope_array_becomes_a_string() -> None:
    body = {
        "access_token": "rfx2uswqe8l4g1mkagrvg5tv0ks3",
        "expires_in": 14124,
        "refresh_token": "5b93chm6hdve3mycz05zfzatkfdenfspp1h1ar2xxdalen01",
        "scope": ["channel:moderate", "chat:edit", "chat:read"],
        "token_type": "bearer",
    }
    assert (
        apply_token_response(spec("twitch"), body)["scope"]
        == "channel:moderate chat:edit chat:read"
    )


def test_linkedin_refresh_token_lifetime_is_fixed_at_a_year() -> None:
    li = spec("linkedin")
    assert li.refresh.refresh_token_lifetime == 365 * DAY
    assert li.refresh.rotation == "never"
    assert li.refresh.default_access_token_lifetime == 60 * DAY


def test_x_offline_access_and_basic_auth_for_confidential_clients() -> None:
    x = spec("x")
    assert x.offline_scope == "offline.access"
    fake = FakeTokenEndpoint(
        {
            "token_type": "bearer",
            "expires_in": 7200,
            "access_token": "VGNibzFWSWJ",
            "scope": "tweet.read users.read offline.access",
            "refresh_token": "bWRWa3gzdnk",
        }
    )
    exchange_code(x, fake)
    assert fake.basic_credentials() == (CLIENT_ID, CLIENT_SECRET)
    assert "code_verifier" in fake.form()


def test_reddit_permanent_duration_and_basic_auth() -> None:
    rd = spec("reddit")
    assert rd.authorization_params["duration"] == "permanent"
    fake = FakeTokenEndpoint(
        {
            "access_token": "a",
            "token_type": "bearer",
            "expires_in": 3600,
            "scope": "identity",
            "refresh_token": "r",
        }
    )
    refresh(rd, fake)
    assert fake.basic_credentials() == (CLIENT_ID, CLIENT_SECRET)
    assert rd.api_base_url == "https://oauth.reddit.com"


def test_figma_refresh_keeps_the_refresh_token() -> None:
    fg = spec("figma")
    assert fg.refresh.rotation == "never"
    fake = FakeTokenEndpoint({"access_token": "figd_new", "expires_in": 7776000})
    body = refresh(fg, fake)
    assert "refresh_token" not in body


def test_calendly_single_use_refresh_tokens() -> None:
    cal = spec("calendly")
    assert cal.refresh.rotation == "always"
    assert cal.refresh.default_access_token_lifetime == 7200
    body = {
        "token_type": "Bearer",
        "access_token": "eyJraWQ",
        "refresh_token": "b77a76ffce",
        "scope": "default",
        "created_at": 1548689183,
        "expires_in": 7200,
        "owner": "https://api.calendly.com/users/EBHAAFHDCAEQTSEZ",
        "organization": "https://api.calendly.com/organizations/EBHAAFHDCAEQTSEZ",
    }
    assert (
        resolve_account_id(cal, body, None, None)
        == "https://api.calendly.com/users/EBHAAFHDCAEQTSEZ"
    )


def test_docusign_developer_and_production_hosts() -> None:
    ds = spec("docusign")
    assert ds.resolve({}).token_url == "https://account.docusign.com/oauth/token"
    assert ds.resolve({"auth_host": "account-d.docusign.com"}).token_url == (
        "https://account-d.docusign.com/oauth/token"
    )
    assert ds.offline_scope == "extended"


# -- Okta, Auth0 ----------------------------------------------------------------------------------------


def test_okta_issuer_and_endpoints_from_domain_and_server() -> None:
    ok = spec("okta").resolve(
        {"domain": "dev-133337.okta.com", "authorization_server": "aus9o8wzkhckw9TLa0h7"}
    )
    assert ok.issuer == "https://dev-133337.okta.com/oauth2/aus9o8wzkhckw9TLa0h7"
    assert ok.jwks_uri == "https://dev-133337.okta.com/oauth2/aus9o8wzkhckw9TLa0h7/v1/keys"


def test_auth0_issuer_has_a_trailing_slash() -> None:
    a0 = spec("auth0").resolve({"domain": "acme.eu.auth0.com"})
    assert a0.issuer == "https://acme.eu.auth0.com/"
    assert a0.token_url == "https://acme.eu.auth0.com/oauth/token"


# -- the smaller hooks ------------------------------------------------------------------------------------


def test_withings_response_is_unwrapped_and_errors_mapped() -> None:
    wi = spec("withings")
    fake = FakeTokenEndpoint(
        {
            "status": 0,
            "body": {
                "userid": 363,
                "access_token": "a075f8c1",
                "refresh_token": "f631236f",
                "scope": "user.info,user.metrics",
                "expires_in": 10800,
                "token_type": "Bearer",
            },
        }
    )
    body = refresh(wi, fake)
    assert fake.form()["action"] == ["requesttoken"]
    assert body["access_token"] == "a075f8c1"
    assert body["scope"] == "user.info user.metrics"
    assert resolve_account_id(wi, body, None, None) == "363"
    failed = apply_token_response(wi, {"status": 503, "body": {}, "error": "Invalid Params"})
    assert failed["error"] == "invalid_request"
    assert failed["provider_error"] == "503"


def test_basecamp_refresh_sends_type_refresh() -> None:
    params = apply_refresh_request(
        spec("basecamp"), {"grant_type": "refresh_token", "refresh_token": "r"}
    )
    assert params["type"] == "refresh"
    fake = FakeTokenEndpoint({"access_token": "BAhbB0kiAbB7ImNsaWVudF9p", "expires_in": 1209600})
    refresh(spec("basecamp"), fake)
    assert fake.form()["type"] == ["refresh"]


def test_token_params_are_added_to_refresh_requests_without_overriding() -> None:
    withings = spec("withings")
    assert (
        apply_refresh_request(withings, {"grant_type": "refresh_token"})["action"] == "requesttoken"
    )
    assert apply_refresh_request(withings, {"action": "x"})["action"] == "x"


def test_etsy_account_id_from_token_prefix() -> None:
    body = {
        "access_token": "12345678.O1zLuwveeKjpIqCQFfmR-PaMMpBmagH6DljRAkK9qt05OtRKiANJOyZlMx3WQ_o2FdComQGuoiAWy3dxyGI4Ke_76PR",
        "token_type": "Bearer",
        "expires_in": 3600,
        "refresh_token": "12345678.JNGIJtvLmwfDMhlYoOJl8aLR1BWottyHC6yhNcET-eC7RogSR5e1GTIXGrgrelWZalvh3YvvyLfKYYqvymd-u37Sjtx",
    }
    assert resolve_account_id(spec("etsy"), body, None, None) == "12345678"
    assert resolve_account_id(spec("etsy"), {"access_token": "opaque"}, None, None) is None


@pytest.mark.parametrize(
    ("name", "body", "expected"),
    [
        ("zoho-crm", {"api_domain": "https://www.zohoapis.eu"}, "https://www.zohoapis.eu/crm"),
        ("zoho-crm", {"api_domain": "https://www.zohoapis.evil.com"}, None),
        ("wrike", {"host": "app-eu.wrike.com"}, "https://app-eu.wrike.com/api/v4"),
        ("wrike", {"host": "wrike.com.evil.net"}, None),
        (
            "surveymonkey",
            {"access_url": "https://api.eu.surveymonkey.com"},
            "https://api.eu.surveymonkey.com/v3",
        ),
        (
            "adobe-sign",
            {"api_access_point": "https://api.na2.adobesign.com/"},
            "https://api.na2.adobesign.com/api/rest/v6",
        ),
        ("adobe-sign", {"api_access_point": "javascript:alert(1)"}, None),
    ],
)
def test_api_host_hooks(name: str, body: dict[str, Any], expected: str | None) -> None:
    provider = spec(name)
    base = provider.resolve({}).api_base_url
    assert resolve_api_base_url(provider, body, base) == (expected or base)


# -- generic behaviour ------------------------------------------------------------------------------------


def test_default_account_id_uses_dotted_paths_and_stringifies_ints() -> None:
    assert resolve_account_id(spec("strava"), {"athlete": {"id": 134815}}, None, None) == "134815"
    assert resolve_account_id(spec("google"), {}, {"sub": "1087"}, None) == "1087"
    assert resolve_account_id(spec("google"), {}, None, None) is None
    assert resolve_account_id(spec("hubspot"), {"hub_id": 1}, None, None) is None  # source none
    assert resolve_account_id(spec("strava"), {"athlete": {"id": True}}, None, None) is None


def test_dotted_get() -> None:
    assert dotted_get({"a": {"b": {"c": 1}}}, "a.b.c") == 1
    assert dotted_get({"a": 1}, "a.b") is None
    assert dotted_get(None, "a") is None


def test_hooks_do_not_mutate_their_input() -> None:
    body = {"scope": "a,b", "access_token": "t"}
    apply_token_response(spec("github"), body)
    assert body == {"scope": "a,b", "access_token": "t"}


def test_providers_without_hooks_pass_bodies_through() -> None:
    body = {"access_token": "t", "scope": "a,b"}
    assert apply_token_response(spec("google"), body) == body
    assert apply_token_response(spec("google"), body) is not body
    assert (
        resolve_api_base_url(spec("google"), {}, "https://x.googleapis.com")
        == "https://x.googleapis.com"
    )


def test_register_hook_rejects_unknown_points_and_duplicates() -> None:
    with pytest.raises(ValueError):
        register_hook("nowhere", "x")  # type: ignore[arg-type]

    def other(body: dict[str, Any]) -> dict[str, Any]:
        return body

    with pytest.raises(ValueError):
        register_hook("token_response", "comma-scope")(other)
    with pytest.raises(KeyError):
        get_hook("token_response", "no-such-hook")
