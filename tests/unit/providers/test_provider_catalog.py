"""Every catalog entry against the schema, and the catalog's own API."""

from __future__ import annotations

import ipaddress
import re
import tomllib
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import grantkeeper.providers as providers_pkg
from grantkeeper.errors import CatalogError, InvalidProviderSettings, UnknownProvider
from grantkeeper.providers import ProviderSpec, load_catalog
from grantkeeper.providers import quirks as quirks_mod
from grantkeeper.providers.catalog import (
    CATEGORIES,
    GENERIC_NAMES,
    TEMPLATED_FIELDS,
    Catalog,
    load_catalog_from,
    placeholders,
    plausible_host,
)

SPECS_DIR = Path(str(resources.files("grantkeeper.providers").joinpath("specs")))
CATALOG = load_catalog()
ALL = CATALOG.all()
IDS = [spec.name for spec in ALL]

#: The providers the issue names first: they must all be present.
LEADING = [
    "google", "google-mail", "google-calendar", "google-drive", "microsoft", "microsoft-outlook",
    "microsoft-teams", "github", "gitlab", "bitbucket", "slack", "discord", "zoom", "salesforce",
    "hubspot", "pipedrive", "zendesk", "intercom", "notion", "airtable", "asana", "atlassian",
    "jira", "confluence", "linear", "dropbox", "box", "xero", "quickbooks", "stripe", "shopify",
    "spotify", "twitch", "linkedin", "x", "reddit", "figma", "calendly", "docusign", "okta",
    "auth0", "oidc", "oauth2",
]  # fmt: skip


def all_urls(spec: ProviderSpec) -> list[tuple[str, str]]:
    urls = [(field, getattr(spec, field)) for field in TEMPLATED_FIELDS if getattr(spec, field)]
    urls.append(("docs_url", spec.docs_url))
    urls.extend(("sources", url) for url in spec.sources)
    urls.extend((f"quirks.{q.id}", q.source) for q in spec.quirks)
    return urls


def sample_settings(spec: ProviderSpec) -> dict[str, str]:
    return {setting.name: setting.sample() for setting in spec.settings}


# -- the files ---------------------------------------------------------------------------------


def test_at_least_150_entries() -> None:
    assert len(CATALOG) >= 150
    assert len(list(SPECS_DIR.glob("*.toml"))) == len(CATALOG)


@pytest.mark.parametrize("name", LEADING)
def test_leading_providers_present(name: str) -> None:
    assert name in CATALOG


def test_file_stem_equals_name_and_names_unique() -> None:
    stems = sorted(p.stem for p in SPECS_DIR.glob("*.toml"))
    assert stems == sorted(IDS)
    assert len(set(IDS)) == len(IDS)
    for path in SPECS_DIR.glob("*.toml"):
        assert tomllib.loads(path.read_text(encoding="utf-8"))["name"] == path.stem


@pytest.mark.parametrize("path", sorted(SPECS_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_every_file_validates_against_the_schema(path: Path) -> None:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    spec = ProviderSpec.model_validate(data)
    assert spec == CATALOG.get(path.stem)
    # underscores only in the generic entries named after their kind
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", spec.name) or spec.name in GENERIC_NAMES


def test_generic_entries() -> None:
    oidc = CATALOG.get("oidc")
    assert oidc.auth_mode == "oidc"
    assert oidc.discovery is True
    assert oidc.issuer is None
    assert oidc.default_scopes == ("openid",)
    assert oidc.offline_scope == "offline_access"
    assert oidc.consent_params == {"prompt": "consent"}
    oauth2 = CATALOG.get("oauth2")
    assert oauth2.auth_mode == "oauth2"
    assert oauth2.token_endpoint_auth_method == "client_secret_basic"
    assert oauth2.authorization_url is None and oauth2.token_url is None


# -- URLs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ALL, ids=IDS)
def test_every_url_is_https_with_a_plausible_host(spec: ProviderSpec) -> None:
    resolved = spec.resolve(sample_settings(spec))
    for field in TEMPLATED_FIELDS:
        value = getattr(resolved, field)
        if value is not None:
            assert not placeholders(value), (field, value)
            parts = urlsplit(value)
            assert parts.scheme == "https", (field, value)
            assert plausible_host(parts.hostname), (field, value)
            assert parts.port is None and "@" not in parts.netloc, (field, value)
            assert not parts.fragment, (field, value)
    for field, url in all_urls(spec):
        if field in TEMPLATED_FIELDS:
            continue
        parts = urlsplit(url)
        assert parts.scheme == "https", (field, url)
        assert plausible_host(parts.hostname), (field, url)


@pytest.mark.parametrize("spec", ALL, ids=IDS)
def test_every_quirk_has_an_https_source_and_is_documented(spec: ProviderSpec) -> None:
    for quirk in spec.quirks:
        assert quirk.source.startswith("https://")
        assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", quirk.id)
        assert len(quirk.description) > 20
    assert spec.sources, "every entry lists the documentation its facts came from"
    assert len(set(spec.sources)) == len(spec.sources)


@pytest.mark.parametrize(
    "host",
    ["localhost", "127.0.0.1", "10.0.0.1", "[::1]", "example", "foo.local", "a..b.com", "x.123"],
)
def test_implausible_hosts_are_refused(host: str) -> None:
    assert not plausible_host(host)


def test_no_ip_literals_anywhere() -> None:
    for spec in ALL:
        for _, url in all_urls(spec):
            host = urlsplit(url.replace("{", "").replace("}", "")).hostname or ""
            with pytest.raises(ValueError):
                ipaddress.ip_address(host)


# -- categories ------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ALL, ids=IDS)
def test_categories_come_from_the_vocabulary(spec: ProviderSpec) -> None:
    assert spec.categories
    assert set(spec.categories) <= CATEGORIES


# -- templated URLs and settings -------------------------------------------------------------------

TEMPLATED = [spec for spec in ALL if spec.settings]


def test_templated_entries_exist() -> None:
    names = {spec.name for spec in TEMPLATED}
    assert {"microsoft", "zendesk", "shopify", "salesforce", "okta", "auth0"} <= names


@pytest.mark.parametrize("spec", TEMPLATED, ids=[s.name for s in TEMPLATED])
def test_templated_urls_resolve_with_sample_settings(spec: ProviderSpec) -> None:
    declared = {s.name for s in spec.settings}
    used: set[str] = set()
    for field in TEMPLATED_FIELDS:
        template = getattr(spec, field)
        if template:
            used.update(placeholders(template))
    assert used <= declared
    assert used, "every declared setting is used by some URL"
    resolved = spec.resolve(sample_settings(spec))
    for field in TEMPLATED_FIELDS:
        template, value = getattr(spec, field), getattr(resolved, field)
        assert (template is None) == (value is None)
        if value is not None:
            assert "{" not in value and "}" not in value


@pytest.mark.parametrize(
    "spec",
    [s for s in TEMPLATED if any(x.required for x in s.settings)],
    ids=[s.name for s in TEMPLATED if any(x.required for x in s.settings)],
)
def test_missing_required_setting_raises(spec: ProviderSpec) -> None:
    required = next(x for x in spec.settings if x.required)
    settings = sample_settings(spec)
    del settings[required.name]
    with pytest.raises(InvalidProviderSettings) as info:
        spec.resolve(settings)
    assert required.name in str(info.value)
    assert info.value.code == "invalid_provider_settings"


@pytest.mark.parametrize(
    "bad", ["evil.com/x", "a@b", "a:443", "a b", "a?x=1", "a#b", "", "a/..", "é"]
)
def test_invalid_setting_value_raises_naming_the_setting(bad: str) -> None:
    spec = CATALOG.get("zendesk")
    with pytest.raises(InvalidProviderSettings) as info:
        spec.resolve({"subdomain": bad})
    assert "subdomain" in str(info.value)


def test_defaults_fill_in() -> None:
    ms = CATALOG.get("microsoft").resolve({})
    assert ms.authorization_url == "https://login.microsoftonline.com/common/oauth2/v2.0/authorize"
    tenant = "8eaef023-2b34-4da1-9baa-8bc8c9d6a490"
    ms = CATALOG.get("microsoft").resolve({"tenant": tenant})
    assert ms.token_url == f"https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"
    zd = CATALOG.get("zendesk").resolve({"subdomain": "acme"})
    assert zd.token_url == "https://acme.zendesk.com/oauth/tokens"
    assert zd.api_base_url == "https://acme.zendesk.com/api/v2"


def test_unknown_settings_are_ignored() -> None:
    assert CATALOG.get("github").resolve({"unrelated": "x"}).token_url == (
        "https://github.com/login/oauth/access_token"
    )


def test_salesforce_host_must_be_a_salesforce_host() -> None:
    spec = CATALOG.get("salesforce")
    assert spec.resolve({"host": "acme.my.salesforce.com"}).token_url == (
        "https://acme.my.salesforce.com/services/oauth2/token"
    )
    with pytest.raises(InvalidProviderSettings):
        spec.resolve({"host": "evil.example.com"})


# -- hooks ----------------------------------------------------------------------------------------


def test_every_hook_named_by_a_spec_is_registered_and_vice_versa() -> None:
    registered = quirks_mod.registered_hooks()
    used: dict[str, set[str]] = {point: set() for point in quirks_mod.HOOK_POINTS}
    for spec in ALL:
        for point, name in spec.hooks.items():
            assert point in quirks_mod.HOOK_POINTS, (spec.name, point)
            assert quirks_mod.is_registered(point, name), (spec.name, point, name)
            used[point].add(name)
        wired = set(spec.hooks.values())
        for quirk in spec.quirks:
            if quirk.hook is not None:
                assert quirk.hook in wired, (spec.name, quirk.id)
    for point in quirks_mod.HOOK_POINTS:
        assert set(registered[point]) == used[point], point


def test_quirks_with_hooks_are_documented_for_every_hook() -> None:
    for spec in ALL:
        documented = {q.hook for q in spec.quirks if q.hook}
        assert set(spec.hooks.values()) <= documented, spec.name


# -- loading errors ---------------------------------------------------------------------------------

MINIMAL = """
name = "{name}"
display_name = "Acme"
categories = ["other"]
docs_url = "https://acme.example.com/oauth"
authorization_url = "https://acme.example.com/authorize"
token_url = "https://acme.example.com/token"
"""


def write(tmp_path: Path, stem: str, text: str) -> Path:
    path = tmp_path / f"{stem}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_minimal_entry_loads(tmp_path: Path) -> None:
    write(tmp_path, "acme", MINIMAL.format(name="acme"))
    catalog = load_catalog_from(tmp_path)
    spec = catalog.get("acme")
    assert spec.refresh.supported and spec.refresh.rotation == "never"
    assert spec.stamp.render("t") == "Bearer t"
    assert spec.account_id.source == "id_token"


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ('revocation_url = "http://acme.example.com/revoke"', "revocation_url"),
        ('userinfo_url = "https://127.0.0.1/me"', "userinfo_url"),
        ('api_base_url = "https://{region}.acme.example.com"', "api_base_url"),
        ('scope_separator = ";"', "scope_separator"),
        ('auth_mode = "saml"', "auth_mode"),
        ('surprise = "field"', "surprise"),
        ('sources = ["ftp://acme.example.com"]', "sources"),
        ('hooks = { token_response = "no-such-hook" }', "hooks.token_response"),
        ('hooks = { nowhere = "comma-scope" }', "nowhere"),
        ('stamp = { format = "Bearer" }', "stamp.template"),
        ('stamp = { in = "basic" }', "stamp"),
        ('token_endpoint_auth_method = "private_key_jwt"', "token_endpoint_auth_method"),
    ],
)
def test_loading_errors_name_the_file_and_the_field(tmp_path: Path, extra: str, field: str) -> None:
    write(tmp_path, "acme", MINIMAL.format(name="acme") + extra + "\n")
    with pytest.raises(CatalogError) as info:
        load_catalog_from(tmp_path)
    message = str(info.value)
    assert "acme.toml" in message
    assert field in message


def test_category_outside_vocabulary_is_refused(tmp_path: Path) -> None:
    text = MINIMAL.format(name="acme").replace('["other"]', '["spaceships"]')
    write(tmp_path, "acme", text)
    with pytest.raises(CatalogError, match=r"acme\.toml: categories"):
        load_catalog_from(tmp_path)


def test_quirk_without_https_source_is_refused(tmp_path: Path) -> None:
    text = MINIMAL.format(name="acme") + (
        '\n[[quirks]]\nid = "odd"\ndescription = "Something odd happens."\n'
        'source = "http://acme.example.com/odd"\n'
    )
    write(tmp_path, "acme", text)
    with pytest.raises(CatalogError, match=r"quirks\.0\.source"):
        load_catalog_from(tmp_path)


def test_undeclared_placeholder_is_refused(tmp_path: Path) -> None:
    text = MINIMAL.format(name="acme").replace(
        'authorization_url = "https://acme', 'authorization_url = "https://{tenant}.acme'
    )
    write(tmp_path, "acme", text)
    with pytest.raises(CatalogError, match="not declared settings"):
        load_catalog_from(tmp_path)


def test_setting_default_must_match_its_pattern(tmp_path: Path) -> None:
    text = MINIMAL.format(name="acme").replace(
        'authorization_url = "https://acme', 'authorization_url = "https://{tenant}.acme'
    ) + (
        '\n[[settings]]\nname = "tenant"\ndescription = "Tenant"\n'
        'pattern = "[a-z]+"\ndefault = "Not Valid"\n'
    )
    write(tmp_path, "acme", text)
    with pytest.raises(CatalogError, match="settings.0"):
        load_catalog_from(tmp_path)


def test_name_must_equal_the_file_stem(tmp_path: Path) -> None:
    write(tmp_path, "acme", MINIMAL.format(name="other"))
    with pytest.raises(CatalogError, match=r"acme\.toml: name"):
        load_catalog_from(tmp_path)


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    write(tmp_path, "broken", "name = ")
    with pytest.raises(CatalogError, match=r"broken\.toml: invalid TOML"):
        load_catalog_from(tmp_path)


def test_oauth2_entry_without_endpoints_is_refused(tmp_path: Path) -> None:
    text = "\n".join(
        line for line in MINIMAL.format(name="acme").splitlines() if "token_url" not in line
    )
    write(tmp_path, "acme", text)
    with pytest.raises(CatalogError, match="token_url"):
        load_catalog_from(tmp_path)


# -- the catalog API ---------------------------------------------------------------------------------


def test_get_unknown_provider_raises() -> None:
    with pytest.raises(UnknownProvider) as info:
        CATALOG.get("no-such-provider")
    assert info.value.code == "unknown_provider"
    with pytest.raises(UnknownProvider):
        CATALOG.get("../etc/passwd")


def test_all_is_sorted_by_name() -> None:
    assert IDS == sorted(IDS)


def test_contains_and_len() -> None:
    assert "google" in CATALOG
    assert "nope" not in CATALOG
    assert 42 not in CATALOG
    assert len(CATALOG) == len(ALL)
    assert [s.name for s in CATALOG] == IDS


def test_search() -> None:
    assert {s.name for s in CATALOG.search("google", None)} >= {"google", "google-mail"}
    assert "google-mail" in {s.name for s in CATALOG.search("GMAIL", None)}
    by_kind = CATALOG.search("GMAIL", None, "jwt_bearer")
    assert [s.name for s in by_kind] == ["google-service-account-gmail"]
    crm = CATALOG.search(None, "crm")
    assert crm and all("crm" in s.categories for s in crm)
    sales = [s.name for s in CATALOG.search("sales", "crm")]
    assert {"salesforce", "salesloft"} <= set(sales) and sales == sorted(sales)
    assert CATALOG.search(None, None) == ALL
    assert CATALOG.search("zzz-nothing", None) == []


def test_duplicate_names_are_refused() -> None:
    spec = CATALOG.get("github")
    with pytest.raises(CatalogError):
        Catalog([spec, spec])


def test_load_catalog_is_cached() -> None:
    assert load_catalog() is load_catalog()


def test_specs_are_frozen() -> None:
    spec = CATALOG.get("github")
    with pytest.raises(ValueError):
        spec.name = "x"  # type: ignore[misc]


def test_public_api_is_pinned() -> None:
    assert providers_pkg.__all__ == sorted(providers_pkg.__all__)
    assert set(providers_pkg.__all__) == {
        "AccountIdSpec", "Catalog", "ProviderSpec", "Quirk", "RefreshSpec", "ResolvedEndpoints",
        "Setting", "StampSpec", "load_catalog",
    }  # fmt: skip


def test_json_schema_exports() -> None:
    schema = ProviderSpec.model_json_schema()
    assert schema["additionalProperties"] is False
    assert {"name", "display_name", "categories", "docs_url"} <= set(schema["required"])
