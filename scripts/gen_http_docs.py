#!/usr/bin/env python3
"""Generate docs/http-api.md from the app's OpenAPI schema.

Usage::

    python scripts/gen_http_docs.py          # rewrite docs/http-api.md
    python scripts/gen_http_docs.py --check  # exit 1 if the file is stale

Paths, parameters, request bodies and their constraints come from
``create_app(...).openapi()`` (no server, no database: the app touches the
database only in its lifespan). What the schema cannot say (the scope an
endpoint needs, what it returns, its error codes) is kept in ``NOTES`` below;
the generator fails if an endpoint has no note or a note names no endpoint, so
a new route cannot go undocumented. ``tests/unit/test_http_docs.py`` runs the
check.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

DOCS_PATH = ROOT / "docs" / "http-api.md"

#: (METHOD, path) -> (scope, what it returns and notable errors)
NOTES: dict[tuple[str, str], tuple[str, str]] = {
    ("GET", "/v1/providers"): (
        "any valid key",
        '`{"data": [{"name", "display_name", "auth_mode", "categories", "docs_url"}, ...]}`; '
        "`?auth_mode=api_key` (etc.) filters by kind.",
    ),
    ("GET", "/v1/providers/{name}"): (
        "any valid key",
        "The catalog entry, with `credential_fields` (the kind's defaults when the entry "
        "declares none), `stamp` and `verify_request`; 404 `not_found`.",
    ),
    ("PUT", "/v1/integrations/{integration_id}"): (
        "`integrations:write`",
        "201 when created, 200 when replaced: the integration (`id`, `provider`, `client_id`, "
        '`scopes`, `return_urls`, ..., `"client_secret_set": true`, `callback_url`). '
        "Leaving out `client_secret` keeps the stored one. 422 `unsafe_url` for endpoints "
        "on private networks (unless `GRANTKEEPER_ALLOW_PRIVATE_NETWORKS=1`). "
        '`"provider": "mcp"` with `server_url`: discovers the MCP server\'s authorization '
        "server and registers the vault before answering (client ID metadata document, "
        "else RFC 7591); the integration reports `server_url` and `mcp` (`resource`, "
        "`authorization_server`, `registration`: `cimd` | `dcr` | `static`). 422 "
        "`mcp_discovery_failed` naming the URL, 422 `client_registration_unavailable`.",
    ),
    ("GET", "/oauth/client-metadata.json"): (
        "none",
        "The vault's OAuth client ID metadata document: `client_id` is this URL, "
        "`redirect_uris` is the callback URL, grant types `authorization_code` and "
        "`refresh_token`, `token_endpoint_auth_method` `none`. Authorization servers that "
        "advertise `client_id_metadata_document_supported` fetch it.",
    ),
    ("GET", "/v1/integrations"): ("`integrations:read`", '`{"data": [integration, ...]}`.'),
    ("GET", "/v1/integrations/{integration_id}"): (
        "`integrations:read`",
        "The integration; 404 `not_found`.",
    ),
    ("DELETE", "/v1/integrations/{integration_id}"): (
        "`integrations:write`",
        '`{"id", "deleted": true}`; 409 `integration_in_use` while grants exist.',
    ),
    ("POST", "/v1/connect/sessions"): (
        "`connect`",
        '201 `{"id", "connect_url", "expires_at"}`; 422 `return_to_not_allowed` when '
        "`return_to` does not match the integration's `return_urls`. Sessions expire "
        "after 10 minutes and are single-use.",
    ),
    ("GET", "/v1/connect/sessions/{session_id}"): (
        "`connect`",
        '`{"id", "status": "pending" | "completed" | "failed", "grant_id"?, "error"?}`.',
    ),
    ("POST", "/v1/connect/sessions/{session_id}/tokens"): (
        "`credentials:read`",
        "For integrations with `token_export: \"once\"`: the provider's token response "
        "(`access_token`, `refresh_token`?, `expires_at`, `scopes`, `id_token`?) exactly once; "
        "then 410 `tokens_already_retrieved`. 403 `token_export_disabled` otherwise. "
        "`Cache-Control: no-store`.",
    ),
    ("GET", "/v1/grants"): (
        "`grants:read`",
        '`{"data": [grant, ...], "limit", "offset", "next_offset"}`; `next_offset` is null '
        "on the last page.",
    ),
    ("POST", "/provider-events/{environment}/{integration_id}"): (
        "none: verified by the provider's scheme",
        "A provider's revocation notice (Slack signing secret, GitHub `X-Hub-Signature-256`, "
        "Security Event Tokens). Verified: 200 (202 for a SET) after the named grants are "
        "`invalid` / `revoked_at_provider`; 401 `provider_event_unverified` or 400 "
        "`provider_event_malformed` change nothing; 429 after a burst of unverified ones. "
        "See docs/signals.md.",
    ),
    ("POST", "/v1/grants"): (
        "`grants:write`",
        "Import existing tokens: 201 with the grant. With `verify` (the default) the refresh "
        "token is used once at the provider and what comes back is stored; 422 "
        "`refresh_token_rejected` if the provider refuses it. For the other kinds "
        "(`api_key`, `basic`, `client_credentials`, `jwt_bearer`, `oauth1`, `github_app`) "
        "send `credentials` instead (docs/credential-kinds.md); with `verify` they are proven "
        "at the provider first: 422 `credentials_rejected` if refused.",
    ),
    ("POST", "/v1/grants/{grant_id}/credentials"): (
        "`credentials:read`",
        '`{"type": <auth_mode>, ...}`: `api_key` -> `api_key` and the extra fields; `basic` '
        "-> `username`, `password`; `oauth1` -> `consumer_key`, `oauth_token`, "
        "`oauth_token_secret`; token kinds -> the fields of `/token` (minted or refreshed "
        "first). Never a refresh token, private key or client secret. 409 `grant_invalid`, "
        "409 `grant_revoked`. Audited as `credentials.issued`. `Cache-Control: no-store`.",
    ),
    ("GET", "/v1/grants/{grant_id}"): ("`grants:read`", "The grant; 404 `not_found`."),
    ("DELETE", "/v1/grants/{grant_id}"): (
        "`grants:write`",
        'Revokes at the provider (RFC 7009) where it can and destroys the stored tokens: `{"id", '
        '"status": "revoked", "provider_revocation": "succeeded" | "failed" | "unsupported"}`. '
        "The grant stays readable.",
    ),
    ("POST", "/v1/grants/{grant_id}/token"): (
        "`credentials:read`",
        '`{"access_token", "token_type", "expires_at", "expires_in", "scopes", "grant_id"}`, '
        "valid for at least `min_ttl` seconds, refreshed first if needed (unless the per-grant "
        "budget says a token was minted moments ago: then that newest token); minted first for "
        "`client_credentials`, `jwt_bearer` and `github_app` grants. 409 `grant_invalid` (with "
        "`failure`), 409 `grant_revoked`, 409 `no_access_token` for `api_key`, `basic` and "
        "`oauth1` grants (use `/credentials`), 424 `integration_misconfigured` with `Retry-After` "
        "(the provider refuses the integration's client; the grant stays active), 503 "
        "`provider_unavailable` with `Retry-After`, 503 `store_unavailable`, 503 "
        "`keys_unavailable` when the environment's root key is disabled, destroyed or "
        "unreachable (or a stored secret does not open). `Cache-Control: no-store`.",
    ),
    ("POST", "/v1/grants/{grant_id}/reconnect"): (
        "`connect`",
        "201: a connect session (as `POST /v1/connect/sessions`) for the same user and "
        "integration.",
    ),
    ("GET", "/v1/webhook-endpoints"): (
        "`webhooks:write`",
        '`{"data": [{"id", "url", "events", "created_at"}, ...]}`.',
    ),
    ("POST", "/v1/webhook-endpoints"): (
        "`webhooks:write`",
        '201 `{"id", "url", "events", "created_at", "secret"}`; the `whsec_...` secret is '
        "shown only here.",
    ),
    ("GET", "/v1/webhook-endpoints/{endpoint_id}"): (
        "`webhooks:write`",
        "The endpoint with `recent_deliveries` (type, status, attempts, last status and error).",
    ),
    ("DELETE", "/v1/webhook-endpoints/{endpoint_id}"): (
        "`webhooks:write`",
        '`{"id", "deleted": true}`; pending deliveries to it are dropped.',
    ),
    ("GET", "/v1/audit-events"): (
        "`audit:read`",
        '`{"data": [{"id", "at", "action", "actor", "api_key_id", "grant_id", '
        '"integration_id", "detail"}, ...], "limit", "offset", "next_offset"}`, newest first.',
    ),
    ("GET", "/healthz"): ("none", "200 while the process runs."),
    ("GET", "/readyz"): (
        "none",
        "200 when the database is reachable and the loaded keys open what is stored, with "
        "`roots`: each root key's `id`, `backend` (`local`, `aws-kms`, `pkcs11`), `where`, "
        "`state` (`ok`, `unavailable`, `unused`) and its `environments`; else "
        "503 (`database_unavailable`, `vault_sealed` or `vault_key_mismatch`).",
    ),
    ("GET", "/metrics"): ("none", "Prometheus text format."),
    ("PUT", "/v1/subject-issuers/{issuer_id}"): (
        "`admin`",
        "Trust the app's own login system: 201 when created, 200 when replaced, "
        '`{"id", "issuer", "jwks_uri", "audience", "user_id_claim", "allowed_origins", ...}`. '
        "`allowed_origins` are exact `scheme://host[:port]` origins (no wildcard). 409 "
        "`already_exists` when another subject issuer (in any environment) already trusts the "
        "same `issuer` and `audience`; 422 `unsafe_url` for a private `jwks_uri` unless "
        "`GRANTKEEPER_ALLOW_PRIVATE_NETWORKS=1`. See docs/end-user-access.md.",
    ),
    ("GET", "/v1/subject-issuers"): ("`admin`", '`{"data": [subject issuer, ...]}`.'),
    ("GET", "/v1/subject-issuers/{issuer_id}"): ("`admin`", "The subject issuer; 404."),
    ("DELETE", "/v1/subject-issuers/{issuer_id}"): (
        "`admin`",
        '`{"id", "deleted": true}`; its JWTs stop working at once.',
    ),
    ("POST", "/v1/end-user-tokens"): (
        "`connect`",
        '201 `{"id", "token", "expires_at", "user_id", "integration_ids"}`: a bearer '
        "(`gkut_...`, shown only here) that stands for one end user, for at most `ttl` "
        "seconds (60..3600, default 900); optionally bound to some integrations (a key "
        "limited to integrations binds it to those). Stored as a hash only. "
        "`Cache-Control: no-store`.",
    ),
    ("DELETE", "/v1/end-user-tokens/{token_id}"): (
        "`connect`",
        '`{"id", "revoked": true}`: the token stops working at once; 404 when unknown.',
    ),
    ("POST", "/oauth/token"): (
        "none from a browser (integrations with `client_access: true`, allowed `Origin`); "
        "else an API key with `credentials:read`",
        "RFC 8693 token exchange, form-encoded: `grant_type="
        "urn:ietf:params:oauth:grant-type:token-exchange`, `subject_token`, "
        "`subject_token_type` (`urn:ietf:params:oauth:token-type:jwt` or "
        "`urn:ietf:params:oauth:token-type:access_token` for end-user tokens), `audience` "
        "(the integration id), `scope`?, `requested_token_type`?, `login_hint`?. 200 "
        '`{"access_token", "issued_token_type", "token_type": "Bearer", "expires_in", '
        '"scope"}` with `Cache-Control: no-store`: the end user\'s own provider access '
        "token, refreshed first like `POST /v1/grants/{id}/token`. Errors are RFC 6749 5.2 "
        "JSON (`error`, `error_description`): 400 `invalid_request`, `invalid_grant`, "
        "`invalid_target`, `invalid_scope`, `unsupported_grant_type`, `unauthorized_client`; "
        "401 `invalid_client`; 429 `slow_down`; 503 `temporarily_unavailable` (with "
        "`Retry-After`).",
    ),
    ("GET", "/v1/me/grants"): (
        "an end-user token or a trusted JWT",
        '`{"data": [grant, ...]}`: the caller\'s own grants that are not revoked. 401 '
        "`invalid_subject_token`.",
    ),
    ("POST", "/v1/me/connect-sessions"): (
        "an end-user token or a trusted JWT",
        '`{"integration_id", "return_to"}` -> 201 `{"id", "connect_url", "expires_at"}` for '
        "the caller; 422 `return_to_not_allowed`.",
    ),
    ("DELETE", "/v1/me/grants/{grant_id}"): (
        "an end-user token or a trusted JWT",
        'Disconnect one of the caller\'s grants: `{"id", "status": "revoked", '
        '"provider_revocation"}`; another user\'s grant is 404.',
    ),
    ("GET", "/sdk/grantkeeper.js"): (
        "none",
        "The browser SDK (an ES module; `text/javascript; charset=utf-8`, "
        "`Access-Control-Allow-Origin: *`, `ETag`, 5 minutes cache). See "
        "docs/end-user-access.md.",
    ),
}
for _method in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"):
    NOTES[(_method, "/v1/proxy/{grant_id}/{path}")] = (
        "`proxy`",
        "The provider's status, headers and body (server-sent events relayed as they "
        "come). For an `mcp` integration `/v1/proxy/{grant_id}/` is `server_url` itself. "
        "The vault's own errors (409 "
        "`grant_invalid`, 409 `grant_revoked`, 503 `provider_unavailable`) are problem "
        "documents.",
    )

INTRO = """\
# HTTP API reference

<!-- Generated by scripts/gen_http_docs.py from the app's OpenAPI schema. Do not edit. -->

The running server also serves the schema at `/openapi.json` and an interactive
explorer at `/docs`.

## Conventions

- Base path `/v1`; JSON in and out. Timestamps are ISO 8601 UTC strings.
  Unknown fields in request bodies are rejected with 422.
- Authentication: `Authorization: Bearer <api key>`. A missing or wrong key
  answers 401 (`unauthenticated`); a key without the needed scope, or limited to
  other integrations, answers 403 (`forbidden`). The `admin` scope allows
  everything in the key's environment.
- Errors are RFC 9457 `application/problem+json` documents with `type`,
  `title`, `status`, `detail` and a stable snake_case `code`:

  ```json
  {"type": "https://grantkeeper.dev/problems/grant-invalid", "title": "Grant invalid",
   "status": 409, "detail": "the grant is no longer valid; the user must reconnect",
   "code": "grant_invalid", "failure": {"code": "invalid_grant", "description": "...", "at": "..."}}
  ```

- Every response that carries a token has `Cache-Control: no-store`.
- A grant object: `{"id", "integration_id", "provider", "user_id",
  "provider_account_id", "status": "active" | "invalid" | "revoked", "scopes",
  "access_token_expires_at", "has_refresh_token", "last_refreshed_at",
  "created_at", "updated_at", "failure": {"code", "description", "at"} | null}`.
  Never a token.

Not under `/v1`: `GET {connect_url}` (the link a user opens; 302 to the
provider) and `GET /oauth/callback` (where the provider sends the user back;
302 to `return_to` with `grant_id`, `connect_session_id` and `status`).
"""


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def type_of(schema: dict[str, Any]) -> str:
    """A compact, readable type for a JSON schema."""
    if "$ref" in schema:
        name = _ref_name(schema["$ref"])
        return f"[{name}](#{name.lower()})"
    if "anyOf" in schema:
        parts = [type_of(s) for s in schema["anyOf"]]
        return " \\| ".join(dict.fromkeys(parts))
    if "enum" in schema:
        return " \\| ".join(f'`"{v}"`' if isinstance(v, str) else f"`{v}`" for v in schema["enum"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return " \\| ".join(str(k) for k in kind)
    if kind == "array":
        return f"array of {type_of(schema.get('items', {}))}"
    if kind == "object" and "patternProperties" in schema:
        (_, value) = next(iter(schema["patternProperties"].items()))
        return f"object of {type_of(value)}"
    return str(kind or "any")


def constraints(schema: dict[str, Any]) -> str:
    out: list[str] = []
    for sub in [schema, *schema.get("anyOf", [])]:
        for key, label in (
            ("minLength", "min length"),
            ("maxLength", "max length"),
            ("minimum", "min"),
            ("maximum", "max"),
            ("minItems", "min items"),
            ("maxItems", "max items"),
            ("maxProperties", "max entries"),
        ):
            if key in sub:
                out.append(f"{label} {sub[key]}")
        if "pattern" in sub:
            out.append(f"pattern `{sub['pattern']}`")
        if sub is not schema and sub.get("type") == "array" and "items" in sub:
            out.extend(constraints(sub["items"]).split("; ") if constraints(sub["items"]) else [])
        if "patternProperties" in sub:
            (pattern, _) = next(iter(sub["patternProperties"].items()))
            out.append(f"keys `{pattern}`")
    if "default" in schema:
        default = schema["default"]
        out.append(f"default `{str(default).lower() if isinstance(default, bool) else default}`")
    return "; ".join(dict.fromkeys(out))


def cell(text: str) -> str:
    return text.replace("\n", " ").replace("|", "\\|") if "\\|" not in text else text


def fields_table(schema: dict[str, Any]) -> list[str]:
    required = set(schema.get("required", []))
    lines = ["| field | type | required | constraints |", "| --- | --- | --- | --- |"]
    for name, prop in schema.get("properties", {}).items():
        lines.append(
            f"| `{name}` | {type_of(prop)} | {'yes' if name in required else 'no'} | "
            f"{cell(constraints(prop))} |"
        )
    return lines


def anchor(method: str, path: str) -> str:
    slug = f"{method} {path}".lower()
    return "".join(c if c.isalnum() else "-" for c in slug).strip("-")


def render(spec: dict[str, Any]) -> str:
    ops: list[tuple[str, str, dict[str, Any]]] = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            ops.append((method.upper(), path, op))
    seen = {(m, p) for m, p, _ in ops}
    missing = sorted(seen - NOTES.keys())
    stale = sorted(NOTES.keys() - seen)
    if missing or stale:
        raise SystemExit(
            f"gen_http_docs: endpoints without NOTES: {missing}; NOTES without an endpoint: {stale}"
        )

    groups: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for method, path, op in ops:
        tag = (op.get("tags") or ["operations"])[0]
        groups.setdefault(tag, []).append((method, path, op))
    order = [
        "providers",
        "integrations",
        "connect",
        "grants",
        "proxy",
        "webhooks",
        "audit",
        "operations",
    ]
    tags = sorted(groups, key=lambda t: (order.index(t) if t in order else len(order), t))

    out = [INTRO, "## Endpoints", ""]
    out.append("| method | path | scope |")
    out.append("| --- | --- | --- |")
    for tag in tags:
        for method, path, _ in groups[tag]:
            out.append(
                f"| {method} | [`{path}`](#{anchor(method, path)}) | {NOTES[(method, path)][0]} |"
            )
    out.append("")
    for tag in tags:
        out.append(f"## {tag.capitalize()}")
        out.append("")
        for method, path, op in groups[tag]:
            scope, returns = NOTES[(method, path)]
            out.append(f'<a id="{anchor(method, path)}"></a>')
            out.append(f"### `{method} {path}`")
            out.append("")
            summary = op.get("summary")
            if summary and summary.lower().startswith("proxy"):
                out.append(f"{summary}.")
                out.append("")
            if op.get("description"):
                out.append(" ".join(op["description"].split()))
                out.append("")
            out.append(f"- Scope: {scope}")
            out.append(f"- Returns: {returns}")
            responses = op.get("responses", {})
            if responses:
                codes = ", ".join(
                    f"{code} {responses[code].get('description', '').strip()}".strip()
                    for code in sorted(responses, key=lambda c: (len(c), c))
                    if code != "default"
                )
                out.append(f"- Status codes: {codes}")
            out.append("")
            params = op.get("parameters", [])
            if params:
                out.append("| parameter | in | type | required | constraints |")
                out.append("| --- | --- | --- | --- | --- |")
                for p in params:
                    schema = p.get("schema", {})
                    out.append(
                        f"| `{p['name']}` | {p['in']} | {type_of(schema)} | "
                        f"{'yes' if p.get('required') else 'no'} | {cell(constraints(schema))} |"
                    )
                out.append("")
            body = op.get("requestBody")
            if body:
                schema = body.get("content", {}).get("application/json", {}).get("schema", {})
                required = "required" if body.get("required") else "optional"
                if "$ref" in schema:
                    out.append(f"Request body ({required}): {type_of(schema)}.")
                    out.append("")
                elif schema.get("properties"):
                    out.append(f"Request body ({required}, JSON object):")
                    out.append("")
                    out.extend(fields_table(schema))
                    out.append("")
    components = spec.get("components", {}).get("schemas", {})
    shown = [n for n in sorted(components) if n not in ("HTTPValidationError", "ValidationError")]
    if shown:
        out.append("## Schemas")
        out.append("")
        out.append(
            "Request bodies reject unknown fields (422 `invalid_input`). "
            "`Problem` is the `application/problem+json` error document, when present."
        )
        out.append("")
        for name in shown:
            out.append(f'<a id="{name.lower()}"></a>')
            out.append(f"### {name}")
            out.append("")
            out.extend(fields_table(components[name]))
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def openapi() -> dict[str, Any]:
    from grantkeeper.api.app import create_app
    from grantkeeper.config import Settings

    settings = Settings(
        database_url="sqlite+aiosqlite:///:memory:",
        public_url="http://127.0.0.1:8080",
        master_keys=None,
        allow_private_networks=False,
    )
    return create_app(settings).openapi()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/http-api.md is stale")
    args = parser.parse_args(argv)
    text = render(openapi())
    if args.check:
        current = DOCS_PATH.read_text(encoding="utf-8") if DOCS_PATH.exists() else ""
        if current != text:
            print(f"{DOCS_PATH.relative_to(ROOT)} is stale: run python scripts/gen_http_docs.py")
            return 1
        return 0
    DOCS_PATH.write_text(text, encoding="utf-8")
    print(f"wrote {DOCS_PATH.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
