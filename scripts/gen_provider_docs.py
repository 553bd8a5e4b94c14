#!/usr/bin/env python3
"""Generate docs/providers.md and docs/provider-schema.json from the provider catalog.

Usage::

    python scripts/gen_provider_docs.py          # rewrite both files
    python scripts/gen_provider_docs.py --check  # exit 1 if either file is stale

``tests/unit/providers/test_docs.py`` runs the check, so regenerate after editing a spec.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from grantkeeper.providers import Catalog, ProviderSpec, load_catalog  # noqa: E402

DOCS_PATH = ROOT / "docs" / "providers.md"
SCHEMA_PATH = ROOT / "docs" / "provider-schema.json"

_UNITS = ((86400, "d"), (3600, "h"), (60, "min"), (1, "s"))


def duration(seconds: int) -> str:
    """``7776000 -> '90 d'``, ``5400 -> '90 min'``: the largest unit that divides evenly."""
    for size, unit in _UNITS:
        if seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"  # pragma: no cover - the 1 s unit always divides


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def refresh_summary(spec: ProviderSpec) -> str:
    r = spec.refresh
    parts: list[str] = []
    if not r.supported:
        parts.append("no refresh token")
    else:
        parts.append(
            {
                "never": "refresh token reused",
                "always": "rotating refresh token",
                "optional": "refresh token may rotate",
            }[r.rotation]
        )
        if r.refresh_token_lifetime:
            parts.append(f"RT lifetime {duration(r.refresh_token_lifetime)}")
        if r.idle_expiry:
            parts.append(f"RT idle expiry {duration(r.idle_expiry)}")
    if r.default_access_token_lifetime:
        parts.append(f"AT {duration(r.default_access_token_lifetime)} assumed")
    elif not r.access_tokens_expire:
        parts.append("AT without expires_in never expires")
    return "; ".join(parts)


def endpoints(spec: ProviderSpec) -> list[str]:
    rows = []
    for label, value in (
        ("Issuer", spec.issuer),
        ("Authorization", spec.authorization_url),
        ("Token", spec.token_url),
        ("Revocation", spec.revocation_url),
        ("Userinfo", spec.userinfo_url),
        ("Request token (OAuth 1.0a)", spec.request_token_url),
        ("Access token (OAuth 1.0a)", spec.access_token_url),
        ("API base", spec.api_base_url),
    ):
        if value:
            rows.append(f"- {label}: `{value}`")
    if spec.discovery:
        rows.append("- Endpoints may be found by OpenID discovery from the issuer")
    if spec.mcp_server_url:
        rows.append(f"- MCP server: `{spec.mcp_server_url}`")
    if spec.auth_mode == "mcp":
        rows.append(
            "- Authorization server, endpoints and client registration found by MCP "
            "discovery from the server URL (docs/mcp.md)"
        )
    return rows


def provider_section(spec: ProviderSpec) -> list[str]:
    lines = [f"### {spec.name}", ""]
    lines.append(f"**{spec.display_name}**. [OAuth documentation]({spec.docs_url})")
    lines.append("")
    lines.extend(endpoints(spec))
    code_flow = spec.auth_mode in ("oauth2", "oidc", "mcp")
    details = [f"- Auth mode: `{spec.auth_mode}`"]
    if code_flow or spec.auth_mode in ("client_credentials", "oauth1"):
        details.append(f"- Token endpoint authentication: `{spec.token_endpoint_auth_method}`")
    if code_flow:
        details.append(f"- PKCE: {'yes' if spec.pkce else 'no'}")
    for field in spec.credential_fields:
        kind = "secret" if field.secret else "not secret"
        optional = "" if field.required else ", optional"
        pattern = f", pattern `{field.pattern}`" if field.pattern else ""
        details.append(f"- Credential field `{field.name}` ({field.label}; {kind}{optional}{pattern})")
    if spec.verify_request is not None:
        vr = spec.verify_request
        details.append(f"- Verified by `{vr.method} {vr.path}` answering {vr.expect_status}")
    if spec.alias_of:
        details.append(f"- Preset of [{spec.alias_of}](#{spec.alias_of}) (same endpoints)")
    if spec.default_scopes:
        scopes = spec.scope_separator.join(spec.default_scopes)
        details.append(f"- Default scopes: `{scopes}`")
    if spec.offline_scope:
        details.append(f"- Added for a refresh token: `{spec.offline_scope}`")
    for scope, text in spec.scope_descriptions.items():
        details.append(f"  - `{scope}`: {cell(text)}")
    if spec.authorization_params:
        pairs = ", ".join(f"{k}={v}" for k, v in spec.authorization_params.items())
        details.append(f"- Authorization parameters: `{pairs}`")
    if spec.consent_params:
        pairs = ", ".join(f"{k}={v}" for k, v in spec.consent_params.items())
        details.append(f"- When consent is needed: `{pairs}`")
    if spec.token_params:
        pairs = ", ".join(f"{k}={v}" for k, v in spec.token_params.items())
        details.append(f"- Token request parameters: `{pairs}`")
    account = spec.account_id
    if "account_id" in spec.hooks:
        details.append(f"- Account id: hook `{spec.hooks['account_id']}`")
    elif account.source == "none":
        details.append("- Account id: not available")
    else:
        details.append(
            f"- Account id: `{account.field}` from the {account.source.replace('_', ' ')}"
        )
    stamp = spec.stamp
    template = stamp.template_for(spec.auth_mode)
    if spec.auth_mode == "oauth1":
        details.append("- Stamped as an OAuth 1.0a HMAC-SHA1 signature (`Authorization: OAuth`)")
    elif stamp.in_ == "basic":
        details.append(f"- Stamped as `Authorization: Basic base64({template})`")
    elif (stamp.in_, stamp.name, template) != ("header", "Authorization", "Bearer {access_token}"):
        where = "header" if stamp.in_ == "header" else "query parameter"
        details.append(f"- Stamped as {where} `{stamp.name}: {template}`")
    if code_flow:
        details.append(f"- Refresh: {refresh_summary(spec)}")
    for setting in spec.settings:
        default = (
            f" (default `{setting.default}`)" if setting.default is not None else " (required)"
        )
        details.append(f"- Setting `{setting.name}`: {setting.description}{default}")
    if spec.hooks:
        hooks = ", ".join(f"{point}: `{name}`" for point, name in sorted(spec.hooks.items()))
        details.append(f"- Hooks: {hooks}")
    lines.extend(details)
    if spec.quirks:
        lines.extend(["", "Quirks:", ""])
        for quirk in spec.quirks:
            hook = f" (hook `{quirk.hook}`)" if quirk.hook else ""
            lines.append(f"- **{quirk.id}**{hook}: {quirk.description} [source]({quirk.source})")
    if spec.sources:
        lines.extend(["", "Sources:", ""])
        lines.extend(f"- <{url}>" for url in spec.sources)
    lines.append("")
    return lines


def counts_by_kind(specs: list[ProviderSpec]) -> list[str]:
    """A table of entries per auth mode, each linking to its list."""
    by_kind: dict[str, list[str]] = {}
    for spec in specs:
        by_kind.setdefault(spec.auth_mode, []).append(spec.name)
    lines = ["## By credential kind", "", "| Kind | Entries |", "| --- | --- |"]
    lines.extend(f"| `{kind}` | {len(names)} |" for kind, names in sorted(by_kind.items()))
    lines.append("")
    for kind, names in sorted(by_kind.items()):
        links = ", ".join(f"[{name}](#{name})" for name in names)
        lines.extend([f"### Kind `{kind}`", "", links, ""])
    return lines


def index_by_category(specs: list[ProviderSpec]) -> list[str]:
    """Every category with the entries in it."""
    by_category: dict[str, list[str]] = {}
    for spec in specs:
        for category in spec.categories:
            by_category.setdefault(category, []).append(spec.name)
    lines = ["## By category", ""]
    for category, names in sorted(by_category.items()):
        links = ", ".join(f"[{name}](#{name})" for name in names)
        lines.extend([f"### Category `{category}` ({len(names)})", "", links, ""])
    return lines


def render(catalog: Catalog) -> str:
    specs = catalog.all()
    lines = [
        "# Provider catalog",
        "",
        "<!-- Generated by scripts/gen_provider_docs.py from src/grantkeeper/providers/specs;"
        " do not edit by hand. -->",
        "",
        f"{len(specs)} providers. Every fact is taken from the provider's own documentation,"
        " linked beside it. The schema of an entry is in"
        " [provider-schema.json](provider-schema.json); quirks that data cannot express are"
        " named hooks in `grantkeeper.providers.quirks`.",
        "",
        'Abbreviations: RT = refresh token, AT = access token; "assumed" is the lifetime used'
        " when the token response carries no `expires_in`.",
        "",
    ]
    lines.extend(counts_by_kind(specs))
    lines.extend(index_by_category(specs))
    lines.extend(
        [
            "## All entries",
            "",
            "| Name | Display name | Categories | Auth mode | Refresh behaviour |",
            "| --- | --- | --- | --- | --- |",
        ]
    )
    for spec in specs:
        lines.append(
            f"| [{spec.name}](#{spec.name}) | {cell(spec.display_name)} | "
            f"{', '.join(spec.categories)} | {spec.auth_mode} | {cell(refresh_summary(spec))} |"
        )
    lines.extend(["", "## Providers", ""])
    for spec in specs:
        lines.extend(provider_section(spec))
    return "\n".join(lines).rstrip("\n") + "\n"


def render_schema() -> str:
    return json.dumps(ProviderSpec.model_json_schema(), indent=2, sort_keys=True) + "\n"


def outputs() -> dict[Path, str]:
    return {DOCS_PATH: render(load_catalog()), SCHEMA_PATH: render_schema()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail if the files are stale")
    args = parser.parse_args(argv)
    stale = []
    for path, text in outputs().items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is stale; run scripts/gen_provider_docs.py")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
