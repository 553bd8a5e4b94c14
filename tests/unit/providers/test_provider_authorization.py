"""The authorization request built for each provider carries its required parameters."""

from __future__ import annotations

import pytest
from provider_fakes import CLIENT_ID, REDIRECT_URI, authorization_query

from grantkeeper.providers import ProviderSpec, load_catalog

CATALOG = load_catalog()
CODE_FLOW = [s for s in CATALOG.all() if s.auth_mode in ("oauth2", "oidc")]
BUILDABLE = [s for s in CODE_FLOW if s.authorization_url is not None]


def sample_settings(spec: ProviderSpec) -> dict[str, str]:
    return {setting.name: setting.sample() for setting in spec.settings}


def test_every_provider_but_the_generic_ones_has_an_authorization_url() -> None:
    missing = {s.name for s in CODE_FLOW} - {s.name for s in BUILDABLE}
    assert missing == {"oidc", "oauth2"}


@pytest.mark.parametrize("spec", BUILDABLE, ids=[s.name for s in BUILDABLE])
@pytest.mark.parametrize("consent", [False, True])
def test_authorization_url_carries_required_parameters(spec: ProviderSpec, consent: bool) -> None:
    url, query = authorization_query(spec, sample_settings(spec), consent=consent)
    assert url.startswith("https://")
    assert query["response_type"] == "code"
    assert query["client_id"] == CLIENT_ID
    assert query["redirect_uri"] == REDIRECT_URI
    assert query["state"] == "state-xyz"
    for key, value in spec.authorization_params.items():
        assert query[key] == value, key
    for key, value in spec.consent_params.items():
        if consent:
            assert query[key] == value, key
        elif key not in spec.authorization_params:
            assert key not in query, key
    expected_scopes = list(spec.default_scopes)
    if spec.offline_scope and spec.refresh.supported:
        expected_scopes.append(spec.offline_scope)
    if expected_scopes:
        assert query["scope"].split(spec.scope_separator) == list(dict.fromkeys(expected_scopes))
    else:
        assert "scope" not in query
    if spec.pkce:
        assert query["code_challenge_method"] == "S256"


def test_requested_scopes_replace_defaults_and_keep_the_offline_scope() -> None:
    spec = CATALOG.get("microsoft")
    assert spec.scope_string(["Mail.Read"], offline=True) == "Mail.Read offline_access"
    assert spec.scope_string(["Mail.Read", "offline_access"], offline=True) == (
        "Mail.Read offline_access"
    )
    assert spec.scope_string(["Mail.Read"], offline=False) == "Mail.Read"
    assert spec.scope_string(["a", "b", "a"], offline=False) == "a b"


def test_authorization_extra_params_are_copies() -> None:
    spec = CATALOG.get("google")
    params = spec.authorization_extra_params(consent=True)
    params["access_type"] = "online"
    assert spec.authorization_params["access_type"] == "offline"


# -- provider-specific expectations ------------------------------------------------------------------


def q(name: str, *, consent: bool = False, **settings: str) -> dict[str, str]:
    spec = CATALOG.get(name)
    return authorization_query(spec, {**sample_settings(spec), **settings}, consent=consent)[1]


@pytest.mark.parametrize("name", ["google", "google-mail", "google-calendar", "google-drive"])
def test_google_offline_and_consent(name: str) -> None:
    plain = q(name)
    assert plain["access_type"] == "offline"
    assert "prompt" not in plain
    assert q(name, consent=True)["prompt"] == "consent"
    assert "openid" in plain["scope"].split()


def test_google_family_shares_endpoints_but_not_scopes_or_api() -> None:
    base = CATALOG.get("google")
    seen_scopes, seen_api = set(), set()
    for name in ("google-mail", "google-calendar", "google-drive"):
        spec = CATALOG.get(name)
        assert spec.authorization_url == base.authorization_url
        assert spec.token_url == base.token_url
        assert spec.default_scopes != base.default_scopes
        seen_scopes.add(spec.default_scopes)
        seen_api.add(spec.api_base_url)
    assert len(seen_scopes) == 3 and len(seen_api) == 3


@pytest.mark.parametrize("name", ["microsoft", "microsoft-outlook", "microsoft-teams"])
def test_microsoft_adds_offline_access(name: str) -> None:
    assert "offline_access" in q(name)["scope"].split()


def test_microsoft_tenant_in_the_url() -> None:
    url, _ = authorization_query(CATALOG.get("microsoft"), {"tenant": "contoso.onmicrosoft.com"})
    assert url.startswith(
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/authorize?"
    )


def test_dropbox_token_access_type_offline() -> None:
    assert q("dropbox")["token_access_type"] == "offline"


def test_xero_offline_access() -> None:
    assert "offline_access" in q("xero")["scope"].split()


@pytest.mark.parametrize("name", ["atlassian", "jira", "confluence"])
def test_atlassian_audience_prompt_and_offline(name: str) -> None:
    query = q(name)
    assert query["audience"] == "api.atlassian.com"
    assert query["prompt"] == "consent"
    assert "offline_access" in query["scope"].split()


def test_notion_owner_user() -> None:
    query = q("notion")
    assert query["owner"] == "user"
    assert "scope" not in query


def test_reddit_permanent_duration() -> None:
    assert q("reddit")["duration"] == "permanent"


def test_x_offline_access_and_pkce() -> None:
    query = q("x")
    assert "offline.access" in query["scope"].split()
    assert query["code_challenge_method"] == "S256"


def test_salesforce_refresh_token_scope() -> None:
    assert "refresh_token" in q("salesforce")["scope"].split()


@pytest.mark.parametrize("name", ["slack", "linear", "shopify", "strava", "zoho-crm"])
def test_comma_separated_scopes(name: str) -> None:
    spec = CATALOG.get(name)
    assert spec.scope_separator == ","
    assert q(name)["scope"] == ",".join(
        dict.fromkeys([*spec.default_scopes, *([spec.offline_scope] if spec.offline_scope else [])])
    )


def test_zoho_offline_and_consent() -> None:
    assert q("zoho-crm")["access_type"] == "offline"
    assert q("zoho-crm", consent=True)["prompt"] == "consent"


def test_docusign_extended_scope_for_refresh() -> None:
    assert q("docusign")["scope"].split() == ["signature", "extended"]


def test_typeform_offline_scope() -> None:
    assert "offline" in q("typeform")["scope"].split()


def test_lever_audience() -> None:
    assert q("lever")["audience"] == "https://api.lever.co/v1/"


def test_shopify_shop_url() -> None:
    url, _ = authorization_query(CATALOG.get("shopify"), {"shop": "acme-store"})
    assert url.startswith("https://acme-store.myshopify.com/admin/oauth/authorize?")


def test_okta_default_authorization_server() -> None:
    spec = CATALOG.get("okta")
    url, query = authorization_query(spec, {"domain": "acme.okta.com"})
    assert url.startswith("https://acme.okta.com/oauth2/default/v1/authorize?")
    assert "offline_access" in query["scope"].split()


def test_basecamp_web_server_type() -> None:
    assert q("basecamp")["type"] == "web_server"
