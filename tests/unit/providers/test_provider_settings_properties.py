"""Property tests: integration settings can never move a URL off its provider's host."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grantkeeper.errors import InvalidProviderSettings
from grantkeeper.providers import ProviderSpec, load_catalog
from grantkeeper.providers import quirks as quirks_mod
from grantkeeper.providers.catalog import TEMPLATED_FIELDS, placeholders

TEMPLATED = [spec for spec in load_catalog().all() if spec.settings]
_PLACEHOLDER = re.compile(r"\{[a-z_][a-z0-9_]*\}")


def host_and_rest(template: str) -> tuple[str, str]:
    """Split ``https://{x}.acme.com/p/{y}`` into ``("{x}.acme.com", "/p/{y}")``."""
    without_scheme = template.removeprefix("https://")
    host, _, rest = without_scheme.partition("/")
    return host, "/" + rest if rest else ""


def literal_suffix(host_template: str) -> str:
    """The part of a templated host after its last placeholder (``.zendesk.com``)."""
    pieces = _PLACEHOLDER.split(host_template)
    return pieces[-1]


def values_for(spec: ProviderSpec) -> st.SearchStrategy[dict[str, str]]:
    """Either values matching each setting's pattern, or arbitrary text."""
    fields = {}
    for setting in spec.settings:
        fields[setting.name] = st.one_of(
            st.from_regex(setting.pattern, fullmatch=True),
            st.text(max_size=40),
            st.sampled_from(["..", ".", "a..b", "x.", "evil.com/", "u@evil.com", "h:1", "%2e%2e"]),
        )
    return st.fixed_dictionaries(fields)


@pytest.mark.parametrize("spec", TEMPLATED, ids=[s.name for s in TEMPLATED])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_setting_values_never_escape_the_host(spec: ProviderSpec, data: st.DataObject) -> None:
    values = data.draw(values_for(spec))
    try:
        resolved = spec.resolve(values)
    except InvalidProviderSettings:
        return
    for field in TEMPLATED_FIELDS:
        template = getattr(spec, field)
        if template is None:
            continue
        url = getattr(resolved, field)
        parts = urlsplit(url)
        tparts = urlsplit(template)
        host_template, _ = host_and_rest(template)
        assert parts.scheme == "https"
        assert parts.username is None and parts.password is None
        assert parts.port is None
        assert parts.query == tparts.query and parts.fragment == ""
        assert parts.hostname is not None
        if "{" in host_template:
            assert parts.hostname.endswith(literal_suffix(host_template).lower())
        else:
            assert parts.hostname == host_template
        # the path keeps its shape: same number of segments, none of them "." or ".."
        assert parts.path.count("/") == tparts.path.count("/")
        assert all(seg not in {".", ".."} for seg in parts.path.split("/"))


@pytest.mark.parametrize("spec", TEMPLATED, ids=[s.name for s in TEMPLATED])
def test_accepted_values_match_the_declared_pattern(spec: ProviderSpec) -> None:
    for setting in spec.settings:
        sample = setting.sample()
        assert re.fullmatch(setting.pattern, sample)
        assert setting.accepts(sample)
        for bad in ("", "a/b", "a?b", "a#b", "a@b", "a:1", "a b", "..", "\n", "a\x00"):
            assert not setting.accepts(bad), (setting.name, bad)


@given(st.text(max_size=60))
@settings(max_examples=200, deadline=None)
def test_arbitrary_tenant_is_refused_or_stays_on_microsoft(value: str) -> None:
    spec = load_catalog().get("microsoft")
    try:
        resolved = spec.resolve({"tenant": value})
    except InvalidProviderSettings:
        return
    assert urlsplit(resolved.token_url or "").hostname == "login.microsoftonline.com"
    assert placeholders(resolved.token_url or "") == []


# -- hooks are total: any JSON body in, a dict (or None / an allowed URL) out ----------------------

URLISH = st.sampled_from(
    ["https://[x", "https://a.pipedrive.com", "https://x.salesforce.com/id/o/u", "http://[::1]:x"]
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20) | URLISH,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
KEYS = st.sampled_from(
    [
        "ok", "error", "scope", "access_token", "authed_user", "status", "body", "instance_url",
        "api_domain", "host", "access_url", "api_access_point", "id", "team", "userid",
    ]
)  # fmt: skip
BODIES = st.dictionaries(KEYS | st.text(max_size=8), JSON, max_size=6)


@given(body=BODIES)
@settings(max_examples=150, deadline=None)
def test_token_response_hooks_never_raise(body: dict[str, object]) -> None:
    for name in quirks_mod.registered_hooks()["token_response"]:
        out = quirks_mod.get_hook("token_response", name)(dict(body))
        assert isinstance(out, dict)


@given(body=BODIES)
@settings(max_examples=150, deadline=None)
def test_api_base_url_hooks_return_the_base_or_an_https_url(body: dict[str, object]) -> None:
    for name in quirks_mod.registered_hooks()["api_base_url"]:
        out = quirks_mod.get_hook("api_base_url", name)(dict(body), "https://base.example.com")
        assert out == "https://base.example.com" or (
            isinstance(out, str)
            and out.startswith("https://")
            and "@" not in out
            and urlsplit(out).port is None
        )


@given(body=BODIES)
@settings(max_examples=150, deadline=None)
def test_account_id_hooks_return_a_string_or_none(body: dict[str, object]) -> None:
    for name in quirks_mod.registered_hooks()["account_id"]:
        out = quirks_mod.get_hook("account_id", name)(dict(body), dict(body), None)
        assert out is None or (isinstance(out, str) and out)
