"""The catalog checker: whole-catalog rules no single entry can check by itself (no network).

Per-entry schema rules live in ``ProviderSpec``; ``test_provider_catalog.py`` checks URLs,
settings, hooks and categories. This file checks what the Connect page and the quality bar
of the catalog need: scopes described in plain language, no two entries sharing their
endpoints unless one is declared a preset (``alias_of``), sources that are the provider's
own documentation, and aliases that point at real entries.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from grantkeeper.errors import CatalogError
from grantkeeper.providers import ProviderSpec, load_catalog
from grantkeeper.providers.catalog import TEMPLATED_FIELDS, Catalog, load_catalog_from

CATALOG = load_catalog()
ALL = CATALOG.all()
IDS = [spec.name for spec in ALL]

#: Hosts of other catalogs, aggregators and forums: never a source for a fact in ours.
NOT_A_PROVIDER_SOURCE = (
    "nango.dev",
    "pipedream.com",
    "zapier.com",
    "n8n.io",
    "rapidapi.com",
    "stackoverflow.com",
    "medium.com",
    "apitracker.io",
    "merge.dev",
    "unified.to",
    "composio.dev",
)


def endpoint_signature(spec: ProviderSpec) -> tuple[object, ...] | None:
    """What makes two entries the same integration target; None for the generic entries."""
    server = getattr(spec, "mcp_server_url", None)
    urls = (*(getattr(spec, field) for field in TEMPLATED_FIELDS), server)
    if not any(urls):
        return None
    # A templated host means nothing without the values it may take (Mailgun's and Datadog's
    # https://{host} are different services), so the settings' patterns are part of it.
    patterns = tuple(sorted((setting.name, setting.pattern) for setting in spec.settings))
    return (spec.auth_mode, spec.authorization_url, spec.token_url, spec.api_base_url, server, *patterns)


# -- scopes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ALL, ids=IDS)
def test_every_requested_scope_is_described_in_plain_language(spec: ProviderSpec) -> None:
    for scope in spec.requested_scopes():
        text = spec.describe_scope(scope)
        assert text, f"{spec.name}: scope {scope!r} has no description"
        assert text.strip() == text
        assert 8 <= len(text) <= 200, (spec.name, scope, text)
        assert text.casefold() != scope.casefold(), "a description is more than the scope name"
        assert text[0].isupper(), (spec.name, scope, text)


def test_requested_scopes_are_defaults_plus_offline_scope() -> None:
    spec = CATALOG.get("jira")
    assert spec.requested_scopes() == [*spec.default_scopes, "offline_access"]
    assert CATALOG.get("asana").requested_scopes() == []


# -- endpoints and aliases -------------------------------------------------------------------------


def test_no_two_entries_share_endpoints_unless_one_is_an_alias() -> None:
    groups: dict[tuple[str | None, ...], list[ProviderSpec]] = defaultdict(list)
    for spec in ALL:
        signature = endpoint_signature(spec)
        if signature is not None:
            groups[signature].append(spec)
    for signature, specs in groups.items():
        originals = [spec.name for spec in specs if spec.alias_of is None]
        assert len(originals) <= 1, f"{originals} share {signature}; declare alias_of"
        for spec in specs:
            if spec.alias_of is not None and len(specs) > 1:
                assert spec.alias_of in originals, (spec.name, spec.alias_of, originals)


@pytest.mark.parametrize("spec", [s for s in ALL if s.alias_of], ids=lambda s: s.name)
def test_aliases_point_at_an_entry_of_the_same_kind(spec: ProviderSpec) -> None:
    assert spec.alias_of is not None
    target = CATALOG.get(spec.alias_of)
    assert target.alias_of is None
    assert target.auth_mode == spec.auth_mode


# -- sources ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ALL, ids=IDS)
def test_sources_are_the_providers_own_documentation(spec: ProviderSpec) -> None:
    urls = [spec.docs_url, *spec.sources, *(q.source for q in spec.quirks)]
    for url in urls:
        host = (urlsplit(url).hostname or "").lower()
        for other in NOT_A_PROVIDER_SOURCE:
            assert host != other and not host.endswith("." + other), (spec.name, url)
    assert spec.sources, f"{spec.name}: no sources"


@pytest.mark.parametrize("spec", ALL, ids=IDS)
def test_every_hook_is_explained_by_a_sourced_quirk(spec: ProviderSpec) -> None:
    explained = {q.hook for q in spec.quirks if q.hook and q.source.startswith("https://")}
    for point, hook in spec.hooks.items():
        assert hook in explained, f"{spec.name}: hook {point}={hook} has no sourced quirk"


# -- the checker refuses bad entries --------------------------------------------------------------

ENTRY = """
name = "{name}"
display_name = "Acme"
categories = ["other"]
docs_url = "https://acme.example.com/oauth"
authorization_url = "https://acme.example.com/authorize"
token_url = "https://acme.example.com/token"
default_scopes = ["read"]
"""


def write(tmp_path: Path, stem: str, text: str) -> None:
    (tmp_path / f"{stem}.toml").write_text(text, encoding="utf-8")


def test_an_undescribed_default_scope_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "acme", ENTRY.format(name="acme"))
    with pytest.raises(CatalogError, match=r"acme\.toml: .*scope_descriptions.*'read'"):
        load_catalog_from(tmp_path)


def test_an_undescribed_offline_scope_is_refused(tmp_path: Path) -> None:
    text = ENTRY.format(name="acme") + (
        'offline_scope = "offline"\n\n[scope_descriptions]\nread = "Read your data"\n'
    )
    write(tmp_path, "acme", text)
    with pytest.raises(CatalogError, match=r"scope_descriptions.*'offline'"):
        load_catalog_from(tmp_path)


@pytest.mark.parametrize("bad", ['"read" = ""', '"read" = "  "', '"a b" = "Two words"'])
def test_bad_scope_descriptions_are_refused(tmp_path: Path, bad: str) -> None:
    text = ENTRY.format(name="acme") + f"\n[scope_descriptions]\n{bad}\n"
    write(tmp_path, "acme", text)
    with pytest.raises(CatalogError, match="scope_descriptions"):
        load_catalog_from(tmp_path)


def test_described_scopes_load_and_are_exposed(tmp_path: Path) -> None:
    text = ENTRY.format(name="acme") + (
        '\n[scope_descriptions]\nread = "Read your data"\nwrite = "Change your data"\n'
    )
    write(tmp_path, "acme", text)
    spec = load_catalog_from(tmp_path).get("acme")
    assert spec.describe_scope("read") == "Read your data"
    assert spec.describe_scope("write") == "Change your data"
    assert spec.describe_scope("admin") is None


def described(name: str, extra: str = "") -> str:
    return ENTRY.format(name=name) + extra + '\n[scope_descriptions]\nread = "Read your data"\n'


def test_alias_of_an_unknown_entry_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "acme", described("acme", 'alias_of = "nobody"\n'))
    with pytest.raises(CatalogError, match="alias_of names no entry"):
        load_catalog_from(tmp_path)


def test_alias_of_an_alias_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "acme", described("acme"))
    write(tmp_path, "acme-b", described("acme-b", 'alias_of = "acme"\n'))
    write(tmp_path, "acme-c", described("acme-c", 'alias_of = "acme-b"\n'))
    with pytest.raises(CatalogError, match="alias_of names an alias"):
        load_catalog_from(tmp_path)


def test_alias_of_itself_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "acme", described("acme", 'alias_of = "acme"\n'))
    with pytest.raises(CatalogError, match="alias_of"):
        load_catalog_from(tmp_path)


def test_the_duplicate_endpoint_rule_catches_an_undeclared_copy(tmp_path: Path) -> None:
    write(tmp_path, "acme", described("acme"))
    write(tmp_path, "acme-copy", described("acme-copy"))
    catalog = load_catalog_from(tmp_path)
    signatures = [endpoint_signature(spec) for spec in catalog.all()]
    assert signatures[0] == signatures[1]
    write(tmp_path, "acme-copy", described("acme-copy", 'alias_of = "acme"\n'))
    assert isinstance(load_catalog_from(tmp_path), Catalog)
    assert load_catalog_from(tmp_path).get("acme-copy").alias_of == "acme"
