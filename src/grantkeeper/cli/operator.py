"""Operator commands: grants, integrations, webhooks, audit.

They work on the database directly (``GRANTKEEPER_DATABASE_URL``,
``GRANTKEEPER_MASTER_KEYS``) through the same domain functions as the HTTP
API, so they work with or without a running server. Actions are audited as
``key:cli``. No command ever prints a token.

``register(app)`` is called by ``grantkeeper.cli.main``.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import typer
from pydantic import ValidationError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from grantkeeper.apikeys import Principal
from grantkeeper.bootstrap import DEFAULT_ENVIRONMENT, ensure_environment
from grantkeeper.cli._common import (
    console,
    err_console,
    fail,
    load_settings,
    print_json,
    require_database,
    run,
)
from grantkeeper.clock import iso, parse_iso
from grantkeeper.config import Settings
from grantkeeper.errors import GrantkeeperError
from grantkeeper.runtime import Runtime, open_runtime
from grantkeeper.store import environments as env_store
from grantkeeper.store.migrate import upgrade

__all__ = ["register"]

T = TypeVar("T")

CLI_ACTOR_KEY_ID = "cli"

grants_app = typer.Typer(no_args_is_help=True, help="Inspect, refresh, revoke and import grants.")
integrations_app = typer.Typer(no_args_is_help=True, help="Inspect integrations.")
webhooks_app = typer.Typer(no_args_is_help=True, help="Webhook endpoints and their deliveries.")
audit_app = typer.Typer(no_args_is_help=True, help="The audit trail.")

EnvOpt = Annotated[
    str, typer.Option("--environment", "-e", help="Environment name.", show_default=True)
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def register(app: typer.Typer) -> None:
    """Add the operator command groups to the ``grantkeeper`` app."""
    app.add_typer(grants_app, name="grants")
    app.add_typer(integrations_app, name="integrations")
    app.add_typer(webhooks_app, name="webhooks")
    app.add_typer(audit_app, name="audit")


# ---------------------------------------------------------------- plumbing


@dataclass(frozen=True, slots=True)
class _Ctx:
    rt: Runtime
    environment_id: str

    @property
    def principal(self) -> Principal:
        return Principal(
            key_id=CLI_ACTOR_KEY_ID,
            environment_id=self.environment_id,
            scopes=frozenset({"admin"}),
            integration_ids=None,
        )


async def _environment_id(rt: Runtime, name: str) -> str:
    async with rt.engine.connect() as conn:
        env_id = await env_store.by_name(conn, name)
    if env_id is None and name == DEFAULT_ENVIRONMENT:
        env_id = await ensure_environment(rt.engine, DEFAULT_ENVIRONMENT)
    if env_id is None:
        fail(f"no environment named {name!r}")
    assert env_id is not None
    return env_id


@asynccontextmanager
async def _opened(settings: Settings, environment: str) -> AsyncIterator[_Ctx]:
    upgrade(settings.database_url)
    # the provider catalog only when a command needs an entry (refresh, revoke, import)
    rt = await open_runtime(settings, read_catalog=False)
    try:
        yield _Ctx(rt, await _environment_id(rt, environment))
    finally:
        await rt.close()


def _with_ctx(environment: str, fn: Callable[[_Ctx], Awaitable[T]]) -> T:
    settings = load_settings()
    require_database(settings)  # every operator command works on what is already there

    async def go() -> T:
        async with _opened(settings, environment) as ctx:
            try:
                return await fn(ctx)
            except GrantkeeperError as exc:
                _fail_for(exc)  # exit status 1: grantkeeper refused (not found, revoked, ...)
                raise

    return run(go)


def _fail_for(exc: GrantkeeperError, code: int = 1) -> None:
    fail(f"{exc.detail} ({exc.code})", code=code)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return " ".join(str(v) for v in value)
    return str(value)


# ---------------------------------------------------------------- grants


@grants_app.command("list")
def grants_list(
    integration: Annotated[
        str | None, typer.Option("--integration", "-i", help="Only this integration.")
    ] = None,
    user: Annotated[str | None, typer.Option("--user", "-u", help="Only this user_id.")] = None,
    status: Annotated[
        str | None, typer.Option(help="Only this status: active, invalid or revoked.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="At most this many.")] = 50,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many.")] = 0,
    environment: EnvOpt = DEFAULT_ENVIRONMENT,
    json_out: JsonOpt = False,
) -> None:
    """List grants, newest first (never a token)."""
    from grantkeeper.grants import grant_view
    from grantkeeper.store import grants as grant_store
    from grantkeeper.store.db import reading

    if status is not None and status not in ("active", "invalid", "revoked"):
        fail("--status must be active, invalid or revoked")

    async def go(ctx: _Ctx) -> tuple[list[dict[str, Any]], bool]:
        async with reading(ctx.rt.engine) as conn:
            recs, more = await grant_store.list_grants(
                conn,
                ctx.environment_id,
                integration_id=integration,
                user_id=user,
                status=status,
                limit=limit,
                offset=offset,
            )
        return [grant_view(r) for r in recs], more

    rows, more = _with_ctx(environment, go)
    if json_out:
        print_json(
            {
                "data": rows,
                "limit": limit,
                "offset": offset,
                "next_offset": offset + limit if more else None,
            }
        )
        return
    table = Table("id", "integration", "user", "account", "status", "expires", "refreshed")
    for g in rows:
        status_cell = g["status"]
        if g["status"] == "invalid":
            status_cell = f"[red]invalid[/] ({(g['failure'] or {}).get('code')})"
        elif g["status"] == "revoked":
            status_cell = "[dim]revoked[/]"
        table.add_row(
            g["id"],
            g["integration_id"],
            g["user_id"],
            _cell(g["provider_account_id"]),
            status_cell,
            _cell(g["access_token_expires_at"]),
            _cell(g["last_refreshed_at"]),
        )
    console.print(table)
    if more:
        err_console.print(f"more grants follow: --offset {offset + limit}", highlight=False)


def _print_grant(g: dict[str, Any]) -> None:
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for key in (
        "id",
        "integration_id",
        "provider",
        "user_id",
        "provider_account_id",
        "status",
        "scopes",
        "access_token_expires_at",
        "has_refresh_token",
        "last_refreshed_at",
        "created_at",
        "updated_at",
    ):
        table.add_row(key, _cell(g.get(key)))
    failure = g.get("failure")
    if failure:
        table.add_row(
            "failure", f"[red]{failure['code']}[/]: {failure['description']} ({failure['at']})"
        )
    console.print(table)


async def _grant(ctx: _Ctx, grant_id: str) -> Any:
    from grantkeeper.grants import get_visible
    from grantkeeper.store.db import reading

    async with reading(ctx.rt.engine) as conn:
        return await get_visible(conn, ctx.environment_id, grant_id, None)


@grants_app.command("show")
def grants_show(
    grant_id: str, environment: EnvOpt = DEFAULT_ENVIRONMENT, json_out: JsonOpt = False
) -> None:
    """Show one grant."""
    from grantkeeper.errors import NotFound
    from grantkeeper.grants import grant_view

    async def go(ctx: _Ctx) -> dict[str, Any] | None:
        try:
            return grant_view(await _grant(ctx, grant_id))
        except NotFound:
            return None

    g = _with_ctx(environment, go)
    if g is None:
        fail(f"no grant {grant_id!r} in environment {environment!r}", code=1)
        return
    if json_out:
        print_json(g)
    else:
        _print_grant(g)


@grants_app.command("refresh")
def grants_refresh(
    grant_id: str, environment: EnvOpt = DEFAULT_ENVIRONMENT, json_out: JsonOpt = False
) -> None:
    """Refresh a grant's tokens at the provider now (single-flight with every server process)."""
    from grantkeeper import audit
    from grantkeeper.errors import GrantInvalid
    from grantkeeper.grants import grant_view
    from grantkeeper.refresh.engine import raise_for_status, refresh

    async def go(ctx: _Ctx) -> dict[str, Any]:
        rec = await _grant(ctx, grant_id)
        raise_for_status(rec)
        if not rec.has_refresh_token:
            raise GrantInvalid("the grant holds no refresh token; the user must reconnect")
        async with ctx.rt.engine.begin() as conn:
            await audit.record(
                conn,
                environment_id=ctx.environment_id,
                actor=ctx.principal.actor,
                action="grant.refresh_requested",
                now=ctx.rt.clock.now(),
                grant_id=rec.id,
                integration_id=rec.integration_id,
            )
        # seen_version: if another process refreshes meanwhile, its result is used (one refresh)
        fresh = await refresh(
            ctx.rt, ctx.environment_id, rec.id, seen_version=rec.version, trigger="cli"
        )
        return grant_view(fresh)

    g = _with_ctx(environment, go)
    if json_out:
        print_json(g)
    else:
        console.print(
            f"refreshed {g['id']}: access token valid until {g['access_token_expires_at'] or 'unknown'}",
            highlight=False,
        )


@grants_app.command("revoke")
def grants_revoke(
    grant_id: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    environment: EnvOpt = DEFAULT_ENVIRONMENT,
    json_out: JsonOpt = False,
) -> None:
    """Revoke a grant at the provider (RFC 7009) and destroy its stored tokens."""
    from grantkeeper.revocation import delete_grant

    if not yes and not json_out and sys.stdin.isatty():
        typer.confirm(f"Revoke grant {grant_id}? Its tokens are destroyed", abort=True)

    async def go(ctx: _Ctx) -> dict[str, Any]:
        return await delete_grant(ctx.rt, ctx.principal, grant_id)

    result = _with_ctx(environment, go)
    if json_out:
        print_json(result)
    else:
        said = "already revoked" if result.get("already_revoked") else "revoked"
        console.print(
            f"{said} {result['id']} (at the provider: {result['provider_revocation']})",
            highlight=False,
        )


# ---------------------------------------------------------------- grants import

IMPORT_COLUMNS = (
    "integration_id",
    "user_id",
    "refresh_token",
    "access_token",
    "expires_at",
    "scopes",
    "provider_account_id",
)
_REQUIRED = ("integration_id", "user_id", "refresh_token")


@dataclass
class _Row:
    line: int
    fields: dict[str, Any]
    body: Any = None  # ImportGrant once validated
    error: tuple[str, str] | None = None
    grant_id: str | None = None
    status: str = "pending"
    notes: list[str] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "line": self.line,
            "integration_id": _safe_str(self.fields.get("integration_id")),
            "user_id": _safe_str(self.fields.get("user_id")),
            "status": self.status,
        }
        if self.grant_id is not None:
            out["grant_id"] = self.grant_id
        if self.error is not None:
            out["error"] = {"code": self.error[0], "detail": self.error[1]}
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def _safe_str(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value)
    return "".join(c if c.isprintable() else "?" for c in text)[:255]


def _detect_format(path: str, text: str, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    lower = path.lower()
    if lower.endswith(".csv"):
        return "csv"
    if lower.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    first = text.lstrip()[:1]
    return "jsonl" if first == "{" else "csv"


def _read_rows(text: str, fmt: str) -> Iterator[_Row]:
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = [h.strip() for h in (reader.fieldnames or [])]
        unknown = [h for h in header if h not in IMPORT_COLUMNS]
        if unknown:
            raise _FileError(
                f"unknown column(s) {', '.join(map(repr, unknown))}; "
                f"expected {','.join(IMPORT_COLUMNS)}"
            )
        missing = [c for c in _REQUIRED if c not in header]
        if missing:
            raise _FileError(f"missing column(s): {', '.join(missing)}")
        reader.fieldnames = header
        for record in reader:
            line = reader.line_num
            if None in record:
                yield _Row(line, {}, error=("invalid_row", "more values than columns"))
                continue
            values: dict[str, Any] = {k: (v if v != "" else None) for k, v in record.items()}
            if all(v is None for v in values.values()):
                continue
            if values.get("scopes") is not None:
                values["scopes"] = str(values["scopes"]).split()
            yield _Row(line, values)
        return
    for n, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            yield _Row(n, {}, error=("invalid_json", "the line is not valid JSON"))
            continue
        if not isinstance(obj, dict):
            yield _Row(n, {}, error=("invalid_row", "each line must be a JSON object"))
            continue
        unknown = sorted(k for k in obj if k not in IMPORT_COLUMNS)
        if unknown:
            yield _Row(
                n,
                {k: v for k, v in obj.items() if k in ("integration_id", "user_id")},
                error=("invalid_row", f"unknown field(s): {', '.join(map(repr, unknown))}"),
            )
            continue
        values = dict(obj)
        scopes = values.get("scopes")
        if isinstance(scopes, str):
            values["scopes"] = scopes.split()
        expires = values.get("expires_at")
        if isinstance(expires, int | float) and not isinstance(expires, bool):
            values["expires_at"] = iso(float(expires))  # epoch seconds are accepted too
        yield _Row(n, values)


class _FileError(Exception):
    pass


def _validation_reason(exc: ValidationError) -> str:
    """Field names and messages only: pydantic's own text would echo the input (a token)."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(p) for p in err.get("loc", ())) or "row"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def _validate(row: _Row, verify: bool, seen_tokens: dict[str, int]) -> None:
    from grantkeeper.inputs import ImportGrant

    if row.error is not None:
        row.status = "failed"
        return
    try:
        body = ImportGrant(**{**row.fields, "verify": verify})
    except ValidationError as exc:
        row.error = ("invalid_row", _validation_reason(exc))
        row.status = "failed"
        return
    if body.expires_at is not None:
        try:
            parse_iso(body.expires_at)
        except ValueError:
            row.error = ("invalid_row", "expires_at: must be an ISO 8601 timestamp")
            row.status = "failed"
            return
    if body.refresh_token is None:
        row.error = ("invalid_row", "refresh_token: required")
        row.status = "failed"
        return
    digest = hashlib.sha256(body.refresh_token.encode()).hexdigest()
    if digest in seen_tokens:
        # using one refresh token twice can trip a provider's reuse detection
        row.error = (
            "duplicate_refresh_token",
            f"the same refresh token as line {seen_tokens[digest]}",
        )
        row.status = "failed"
        return
    seen_tokens[digest] = row.line
    row.body = body


@grants_app.command("import")
def grants_import(
    file: Annotated[str, typer.Argument(help="CSV or JSON-lines file ('-' reads standard input).")],
    fmt: Annotated[
        str, typer.Option("--format", help="csv, jsonl or auto (by extension, then content).")
    ] = "auto",
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Validate and report what would be imported; calls no provider."
        ),
    ] = False,
    no_verify: Annotated[
        bool,
        typer.Option(
            "--no-verify",
            help="Store the tokens without using the refresh token once to prove it works.",
        ),
    ] = False,
    environment: EnvOpt = DEFAULT_ENVIRONMENT,
    json_out: JsonOpt = False,
) -> None:
    """Bulk-import refresh tokens (bring your own authorization).

    Columns: integration_id,user_id,refresh_token[,access_token,expires_at,scopes,provider_account_id]
    (scopes space-separated). Without --no-verify each refresh token is used
    once at the provider and whatever comes back is stored (at a rotating
    provider the old token is spent). Exit status 1 if any row failed.
    """
    from grantkeeper.imports import import_grant
    from grantkeeper.store import grants as grant_store
    from grantkeeper.store import integrations as integration_store
    from grantkeeper.store.db import reading

    if fmt not in ("auto", "csv", "jsonl"):
        fail("--format must be csv, jsonl or auto")
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {file}: {type(exc).__name__}")
        return
    kind = _detect_format(file, text, fmt)
    try:
        rows = list(_read_rows(text, kind))
    except _FileError as exc:
        fail(f"{file}: {exc}")
        return
    except csv.Error as exc:
        fail(f"{file}: not valid CSV ({exc})")
        return
    verify = not no_verify
    seen: dict[str, int] = {}
    for row in rows:
        _validate(row, verify, seen)

    async def go(ctx: _Ctx) -> None:
        async with reading(ctx.rt.engine) as conn:
            known = {
                r.id for r in await integration_store.list_integrations(conn, ctx.environment_id)
            }
        for row in rows:
            if row.body is not None and row.body.integration_id not in known:
                row.error = ("not_found", f"no integration {row.body.integration_id!r}")
                row.status = "failed"
                row.body = None
        if dry_run:
            async with reading(ctx.rt.engine) as conn:
                for row in rows:
                    if row.body is None:
                        continue
                    row.status = "valid"
                    existing = await grant_store.find_for_user(
                        conn,
                        ctx.environment_id,
                        row.body.integration_id,
                        row.body.user_id,
                        row.body.provider_account_id,
                    )
                    if existing:
                        row.notes.append(
                            f"the user already has grant {existing[0].id} for this integration"
                        )
            return
        todo = [r for r in rows if r.body is not None]
        with Progress(
            TextColumn("importing"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
            transient=json_out,
            disable=not todo,
        ) as progress:
            task = progress.add_task("import", total=len(todo))
            for row in todo:
                try:
                    rec = await import_grant(ctx.rt, ctx.principal, row.body)
                except GrantkeeperError as exc:
                    row.error = (exc.code, exc.detail)
                    row.status = "failed"
                except Exception as exc:  # noqa: BLE001 - one bad row must not stop the rest
                    row.error = ("internal_error", type(exc).__name__)
                    row.status = "failed"
                else:
                    row.grant_id = rec.id
                    row.status = "imported"
                progress.advance(task)

    _with_ctx(environment, go)
    failed = [r for r in rows if r.status == "failed"]
    ok_status = "valid" if dry_run else "imported"
    ok = [r for r in rows if r.status == ok_status]
    summary: dict[str, Any] = {
        "dry_run": dry_run,
        "verify": verify,
        "total": len(rows),
        "valid" if dry_run else "imported": len(ok),
        "failed": len(failed),
        "results": [r.report() for r in rows],
    }
    if json_out:
        print_json(summary)
    else:
        if failed:
            table = Table("line", "integration", "user", "reason", title="failed rows")
            for r in failed:
                code, detail = r.error or ("", "")
                table.add_row(
                    str(r.line),
                    _cell(_safe_str(r.fields.get("integration_id"))),
                    _cell(_safe_str(r.fields.get("user_id"))),
                    f"{code}: {detail}",
                )
            console.print(table)
        if dry_run:
            for r in ok:
                for note in r.notes:
                    console.print(f"line {r.line}: {note}", highlight=False)
            console.print(
                f"dry run: {len(ok)} of {len(rows)} rows would be imported"
                f" ({'verified with the provider' if verify else 'without verification'}),"
                f" {len(failed)} invalid; nothing was stored and no provider was called",
                highlight=False,
            )
        else:
            console.print(
                f"imported: {len(ok)}, failed: {len(failed)} (of {len(rows)})", highlight=False
            )
    if failed:
        raise typer.Exit(1)


# ---------------------------------------------------------------- integrations


@integrations_app.command("list")
def integrations_list(environment: EnvOpt = DEFAULT_ENVIRONMENT, json_out: JsonOpt = False) -> None:
    """List integrations with their grant counts."""
    from sqlalchemy import func, select

    from grantkeeper.integrations import integration_view
    from grantkeeper.store import integrations as integration_store
    from grantkeeper.store.db import reading
    from grantkeeper.store.tables import grants

    async def go(ctx: _Ctx) -> list[dict[str, Any]]:
        async with reading(ctx.rt.engine) as conn:
            recs = await integration_store.list_integrations(conn, ctx.environment_id)
            counts: dict[str, dict[str, int]] = {}
            r = await conn.execute(
                select(grants.c.integration_id, grants.c.status, func.count())
                .where(grants.c.environment_id == ctx.environment_id)
                .group_by(grants.c.integration_id, grants.c.status)
            )
            for integ, status, n in r.all():
                counts.setdefault(integ, {})[status] = int(n)
        return [{**integration_view(rec, ctx.rt), "grants": counts.get(rec.id, {})} for rec in recs]

    rows = _with_ctx(environment, go)
    if json_out:
        print_json(rows)
        return
    table = Table("id", "provider", "client id", "scopes", "active", "invalid", "revoked")
    for i in rows:
        c = i["grants"]
        table.add_row(
            i["id"],
            i["provider"],
            i["client_id"],
            _cell(i["scopes"]),
            str(c.get("active", 0)),
            str(c.get("invalid", 0)),
            str(c.get("revoked", 0)),
        )
    console.print(table)


@integrations_app.command("show")
def integrations_show(
    integration_id: str, environment: EnvOpt = DEFAULT_ENVIRONMENT, json_out: JsonOpt = False
) -> None:
    """Show one integration (the client secret is never shown)."""
    from sqlalchemy import func, select

    from grantkeeper.errors import NotFound
    from grantkeeper.integrations import get_or_404, integration_view
    from grantkeeper.store.db import reading
    from grantkeeper.store.tables import grants

    async def go(ctx: _Ctx) -> dict[str, Any] | None:
        async with reading(ctx.rt.engine) as conn:
            try:
                rec = await get_or_404(conn, ctx.environment_id, integration_id)
            except NotFound:
                return None
            view = integration_view(rec, ctx.rt)
            r = await conn.execute(
                select(grants.c.status, func.count())
                .where(
                    grants.c.environment_id == ctx.environment_id,
                    grants.c.integration_id == rec.id,
                )
                .group_by(grants.c.status)
            )
            counts = {s: int(n) for s, n in r.all()}
        return {**view, "grants": counts}

    i = _with_ctx(environment, go)
    if i is None:
        fail(f"no integration {integration_id!r} in environment {environment!r}", code=1)
        return
    if json_out:
        print_json(i)
        return
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for key in (
        "id",
        "provider",
        "client_id",
        "client_secret_set",
        "scopes",
        "return_urls",
        "callback_url",
        "issuer",
        "api_base_url",
        "token_export",
        "created_at",
        "updated_at",
    ):
        table.add_row(key, _cell(i.get(key)))
    for key in ("authorization_params", "endpoints"):
        if i.get(key):
            table.add_row(key, orjson.dumps(i[key]).decode())
    table.add_row("grants", ", ".join(f"{k}: {v}" for k, v in sorted(i["grants"].items())) or "0")
    console.print(table)


# ---------------------------------------------------------------- webhooks


@webhooks_app.command("list")
def webhooks_list(
    deliveries: Annotated[
        int, typer.Option(min=0, max=200, help="Recent deliveries to show per endpoint.")
    ] = 5,
    environment: EnvOpt = DEFAULT_ENVIRONMENT,
    json_out: JsonOpt = False,
) -> None:
    """List webhook endpoints with their recent delivery outcomes."""
    from grantkeeper.store import webhooks as webhook_store
    from grantkeeper.store.db import reading
    from grantkeeper.webhooks.endpoints import endpoint_view

    async def go(ctx: _Ctx) -> list[dict[str, Any]]:
        out = []
        async with reading(ctx.rt.engine) as conn:
            for ep in await webhook_store.list_endpoints(conn, ctx.environment_id):
                recent = (
                    await webhook_store.list_deliveries(
                        conn, ctx.environment_id, ep["id"], limit=deliveries
                    )
                    if deliveries
                    else []
                )
                out.append(
                    {
                        **endpoint_view(ep),
                        "recent_deliveries": [
                            {
                                "id": d["id"],
                                "event_id": d["event_id"],
                                "type": d["type"],
                                "status": d["status"],
                                "attempts": d["attempts"],
                                "last_status": d["last_status"],
                                "last_error": d["last_error"],
                                "created_at": iso(d["created_at"]),
                                "delivered_at": iso(d["delivered_at"]),
                                "next_attempt_at": iso(d["next_attempt_at"]),
                            }
                            for d in recent
                        ],
                    }
                )
        return out

    rows = _with_ctx(environment, go)
    if json_out:
        print_json(rows)
        return
    if not rows:
        console.print("no webhook endpoints")
        return
    for ep in rows:
        console.print(
            f"[bold]{ep['id']}[/] {ep['url']}  events: {' '.join(ep['events'])}", highlight=False
        )
        if not ep["recent_deliveries"]:
            console.print("  no deliveries yet")
            continue
        table = Table("event", "status", "attempts", "last status", "error", "created", "delivered")
        colour = {"succeeded": "green", "failed": "red", "pending": "yellow"}
        for d in ep["recent_deliveries"]:
            table.add_row(
                d["type"],
                f"[{colour.get(d['status'], 'white')}]{d['status']}[/]",
                str(d["attempts"]),
                _cell(d["last_status"]),
                _cell(d["last_error"]),
                _cell(d["created_at"]),
                _cell(d["delivered_at"]),
            )
        console.print(table)


# ---------------------------------------------------------------- audit


def _event_view(row: dict[str, Any]) -> dict[str, Any]:
    actor: str = row["actor"]
    return {
        "id": row["id"],
        "at": iso(row["at"]),
        "action": row["action"],
        "actor": actor,
        "api_key_id": actor[4:] if actor.startswith("key:") else None,
        "grant_id": row["grant_id"],
        "integration_id": row["integration_id"],
        "detail": row["detail"],
    }


def _print_events(events: list[dict[str, Any]], json_out: bool, header: bool) -> None:
    if json_out:
        for e in events:
            # one JSON object per line, so --follow output can be piped
            sys.stdout.write(orjson.dumps(e).decode() + "\n")
        sys.stdout.flush()
        return
    table = Table("at", "actor", "action", "grant", "integration", "detail", show_header=header)
    for e in events:
        detail = " ".join(f"{k}={v}" for k, v in (e["detail"] or {}).items())
        table.add_row(
            e["at"] or "",
            e["actor"],
            e["action"],
            _cell(e["grant_id"]),
            _cell(e["integration_id"]),
            detail,
        )
    console.print(table)


@audit_app.command("tail")
def audit_tail(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=1000, help="Events.")] = 20,
    grant: Annotated[str | None, typer.Option("--grant", help="Only this grant.")] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep polling for new events (Ctrl-C stops).")
    ] = False,
    interval: Annotated[float, typer.Option(min=0.1, help="Polling interval, seconds.")] = 2.0,
    environment: EnvOpt = DEFAULT_ENVIRONMENT,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """The newest audit events, oldest first; with --follow, new ones as they come."""
    from grantkeeper.store import audit as audit_store
    from grantkeeper.store.db import reading

    async def go(ctx: _Ctx) -> None:
        async with reading(ctx.rt.engine) as conn:
            rows, _ = await audit_store.list_events(
                conn, ctx.environment_id, grant_id=grant, limit=limit
            )
        rows.reverse()
        _print_events([_event_view(r) for r in rows], json_out, header=True)
        if not follow:
            return
        last_id = rows[-1]["id"] if rows else 0
        while True:
            await asyncio.sleep(interval)
            async with reading(ctx.rt.engine) as conn:
                new, _ = await audit_store.list_events(
                    conn, ctx.environment_id, grant_id=grant, limit=500, after_id=last_id
                )
            if new:
                last_id = new[-1]["id"]
                _print_events([_event_view(r) for r in new], json_out, header=False)

    try:
        _with_ctx(environment, go)
    except KeyboardInterrupt:
        return
