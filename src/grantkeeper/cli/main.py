"""``grantkeeper``: serve, worker, migrate, api-keys, environments, keys, providers."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Annotated, Any

import typer
from rich.progress import Progress
from rich.table import Table

from grantkeeper import audit
from grantkeeper.apikeys import SCOPES, create_key
from grantkeeper.bootstrap import ensure_environment, initialize
from grantkeeper.cli._common import (
    console,
    err_console,
    fail,
    load_settings,
    note_new_database,
    print_json,
    require_database,
    run,
)
from grantkeeper.clock import SystemClock, iso
from grantkeeper.store import environments as env_store
from grantkeeper.store import keys as key_store
from grantkeeper.store.db import create_engine
from grantkeeper.store.migrate import upgrade
from grantkeeper.vault import generate_key_spec
from grantkeeper.vault.manager import KeyManager

__all__ = ["app", "main"]

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="grantkeeper: OAuth token vault and credential broker.",
)
api_keys = typer.Typer(no_args_is_help=True, help="Manage API keys.")
environments_app = typer.Typer(no_args_is_help=True, help="Manage environments.")
keys_app = typer.Typer(no_args_is_help=True, help="Key-encryption keys: generate, rotate.")
providers_app = typer.Typer(no_args_is_help=True, help="The provider catalog.")
#: who the audit trail names for changes made on the command line (as the operator commands)
CLI_ACTOR = "key:cli"
app.add_typer(api_keys, name="api-keys")
app.add_typer(environments_app, name="environments")
app.add_typer(keys_app, name="keys")
app.add_typer(providers_app, name="providers")


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        sys.stdout.write(f"grantkeeper {version('grantkeeper')}\n")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """grantkeeper: OAuth token vault and credential broker."""


def _announce_admin_key(key: str) -> None:
    err_console.print(
        "\n[bold yellow]An admin API key was created for the 'default' environment.[/]\n"
        "It is shown only this once; store it now:\n",
        highlight=False,
    )
    # the one place a key is printed: on the terminal, never in a log line
    sys.stdout.write(f"GRANTKEEPER_ADMIN_KEY={key}\n\n")
    sys.stdout.flush()


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    no_worker: Annotated[bool, typer.Option("--no-worker", help="Run the API only.")] = False,
) -> None:
    """Run the HTTP API, the web UI and (unless --no-worker) the background worker."""
    from grantkeeper.api.app import create_app
    from grantkeeper.cli.listen import bind, serve_on

    settings = load_settings()
    sock = bind(host, port)  # a taken port fails here, in a moment, before anything starts
    KeyManager.from_settings(
        settings
    )  # refuse to start without usable keys, before anything listens

    async def boot() -> str | None:
        from grantkeeper.runtime import unseal

        engine = create_engine(settings)
        try:
            key = await initialize(settings, engine)
            # the root keys must open the keyring, and the keyring what is stored (P5)
            await unseal(settings, engine)
            return key
        finally:
            await engine.dispose()

    key = run(boot)
    if key:
        _announce_admin_key(key)
    application = create_app(settings, run_worker=not no_worker)
    serve_on(
        sock,
        application,
        f"grantkeeper listening on http://{host}:{port} (public URL {settings.public_url})",
        shutdown_timeout=settings.shutdown_timeout,
    )


@app.command()
def worker() -> None:
    """Run only the background worker (proactive refresh, webhook delivery)."""
    from grantkeeper.runtime import open_runtime
    from grantkeeper.worker.runner import run_worker

    settings = load_settings()

    async def main_loop() -> None:
        engine = create_engine(settings)
        try:
            await initialize(settings, engine)
        finally:
            await engine.dispose()
        rt = await open_runtime(settings)
        try:
            from grantkeeper.worker.shutdown import Shutdown

            shutdown = Shutdown(rt, settings.shutdown_timeout)
            stop = shutdown.stop
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, shutdown.begin)
            keys_task = None
            if rt.keys is not None:
                keys_task = asyncio.create_task(rt.keys.run(rt.engine, stop))
            worker_task = asyncio.create_task(run_worker(rt, stop))
            await asyncio.wait(
                {worker_task, asyncio.create_task(stop.wait())},
                return_when=asyncio.FIRST_COMPLETED,
            )
            # stop claiming; finish every refresh already at a provider, within the timeout
            await shutdown.finish(worker_task)
            if keys_task is not None:
                stop.set()
                await keys_task
                await rt.keys.count_wraps(rt.engine)  # type: ignore[union-attr]
        finally:
            await rt.close()

    run(main_loop, fast_loop=True)


@app.command()
def migrate() -> None:
    """Apply database migrations."""
    settings = load_settings()
    upgrade(settings.database_url)
    console.print("database is up to date")


def _env_id(settings_url_env: str) -> str:
    settings = load_settings()

    async def go() -> str:
        engine = create_engine(settings)
        try:
            upgrade(settings.database_url)
            async with engine.connect() as conn:
                env_id = await env_store.by_name(conn, settings_url_env)
            if env_id is None and settings_url_env == "default":
                env_id = await ensure_environment(engine, "default")
            if env_id is None:
                fail(f"no environment named {settings_url_env!r}")
            assert env_id is not None
            return env_id
        finally:
            await engine.dispose()

    return run(go)


@api_keys.command("create")
def api_keys_create(
    name: Annotated[str, typer.Option(help="A label for the key.")],
    scope: Annotated[
        list[str], typer.Option(help=f"Scope (repeatable): {', '.join(sorted(SCOPES))}.")
    ],
    environment: Annotated[str, typer.Option(help="Environment name.")] = "default",
    integration: Annotated[
        list[str] | None, typer.Option(help="Limit the key to these integration ids (repeatable).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create an API key; the key is printed once, here."""
    settings = load_settings()
    note_new_database(settings)
    env_id = _env_id(environment)

    async def go() -> tuple[str, str]:
        engine = create_engine(settings)
        try:
            now = SystemClock().now()
            async with engine.begin() as conn:
                created = await create_key(
                    conn,
                    environment_id=env_id,
                    name=name,
                    scopes=scope,
                    integration_ids=integration or None,
                    now=now,
                )
                await audit.record(
                    conn,
                    environment_id=env_id,
                    actor=CLI_ACTOR,
                    action="api_key.created",
                    now=now,
                    api_key_id=created[0],
                    name=name,
                    scopes=sorted(set(scope)),
                    integration_ids=sorted(set(integration)) if integration else None,
                )
                return created
        finally:
            await engine.dispose()

    key_id, key = run(go)
    if json_out:
        print_json({"id": key_id, "key": key})
    else:
        console.print(f"id: {key_id}")
        sys.stdout.write(f"key: {key}\n")


@api_keys.command("list")
def api_keys_list(
    environment: Annotated[str | None, typer.Option(help="Environment name.")] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List API keys (never the keys themselves)."""
    settings = load_settings()
    require_database(settings)
    env_id = _env_id(environment) if environment else None

    async def go() -> list[dict[str, Any]]:
        engine = create_engine(settings)
        try:
            async with engine.connect() as conn:
                recs = await key_store.list_keys(conn, env_id)
                envs = {e[0]: e[1] for e in await env_store.list_all(conn)}
            return [
                {
                    "id": r.id,
                    "name": r.name,
                    "environment": envs.get(r.environment_id),
                    "scopes": list(r.scopes),
                    "integration_ids": list(r.integration_ids)
                    if r.integration_ids is not None
                    else None,
                    "created_at": iso(r.created_at),
                    "revoked_at": iso(r.revoked_at),
                }
                for r in recs
            ]
        finally:
            await engine.dispose()

    rows = run(go)
    if json_out:
        print_json(rows)
        return
    table = Table("id", "name", "environment", "scopes", "revoked")
    for r in rows:
        table.add_row(
            str(r["id"]),
            str(r["name"]),
            str(r["environment"]),
            " ".join(r["scopes"]),
            str(r["revoked_at"] or ""),
        )
    console.print(table)


@api_keys.command("revoke")
def api_keys_revoke(key_id: str, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Revoke an API key; it stops working immediately, in every process."""
    settings = load_settings()
    require_database(settings)

    async def go() -> bool:
        engine = create_engine(settings)
        try:
            upgrade(settings.database_url)
            now = SystemClock().now()
            async with engine.begin() as conn:
                record = await key_store.get(conn, key_id)
                if record is None or not await key_store.revoke(conn, key_id, now):
                    return False
                await audit.record(
                    conn,
                    environment_id=record.environment_id,
                    actor=CLI_ACTOR,
                    action="api_key.revoked",
                    now=now,
                    api_key_id=key_id,
                )
                return True
        finally:
            await engine.dispose()

    ok = run(go)
    if not ok:
        fail(f"no active API key {key_id!r}", code=1)
    if json_out:
        print_json({"id": key_id, "revoked": True})
    else:
        console.print(f"revoked {key_id}")


@environments_app.command("create")
def environments_create(
    name: str,
    root_key: Annotated[
        str | None,
        typer.Option(
            "--root-key",
            help="Id of a GRANTKEEPER_MASTER_KEYS entry: this environment's own root key "
            "(its secrets are sealed only under it; destroying it crypto-shreds them).",
        ),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            help="With --root-key: wait until running processes have loaded the new keyring."
        ),
    ] = True,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Add an environment."""
    import re

    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", name):
        fail("environment names are lowercase letters, digits, '-' and '_' (max 63)")
    settings = load_settings()
    note_new_database(settings)

    async def go() -> tuple[str, bool, str | None]:
        from grantkeeper.runtime import unseal

        engine = create_engine(settings)
        try:
            upgrade(settings.database_url)
            async with engine.connect() as conn:
                existing = await env_store.by_name(conn, name)
            if existing:
                return existing, False, None
            if root_key is None:
                return await ensure_environment(engine, name), True, None
            keys = await unseal(settings, engine)
            if root_key not in keys.roots:
                fail(f"--root-key {root_key!r} is not an entry of GRANTKEEPER_MASTER_KEYS")
            env_id = await ensure_environment(engine, name)
            await keys.create_environment_ring(engine, env_id, root_key)
            if wait:
                # running processes pick the new ring up on their next keyring re-check
                await asyncio.sleep(keys.settings.keyring_check_interval + 1)
            return env_id, True, root_key
        finally:
            await engine.dispose()

    env_id, created, root = run(go)
    if json_out:
        print_json({"id": env_id, "name": name, "created": created, "root_key": root})
    else:
        extra = f", root key {root}" if root else ""
        console.print(f"{'created' if created else 'exists'}: {name} ({env_id}{extra})")


@environments_app.command("list")
def environments_list(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List environments."""
    settings = load_settings()
    require_database(settings)

    async def go() -> list[tuple[str, str, float]]:
        engine = create_engine(settings)
        try:
            upgrade(settings.database_url)
            async with engine.connect() as conn:
                return await env_store.list_all(conn)
        finally:
            await engine.dispose()

    rows = run(go)
    if json_out:
        print_json([{"id": i, "name": n, "created_at": iso(c)} for i, n, c in rows])
        return
    table = Table("name", "id", "created")
    for i, n, c in rows:
        table.add_row(n, i, iso(c) or "")
    console.print(table)


@keys_app.command("generate")
def keys_generate(
    key_id: Annotated[str, typer.Argument(help="An id for the new key, e.g. k2026a.")] = "k1",
) -> None:
    """Print a new key-encryption key entry for GRANTKEEPER_MASTER_KEYS."""
    sys.stdout.write(generate_key_spec(key_id) + "\n")


@keys_app.command("rotate")
def keys_rotate(
    json_out: Annotated[bool, typer.Option("--json")] = False,
    timeout: Annotated[
        float,
        typer.Option(
            help="Give up (exit 1) when old keys are still written after this many seconds."
        ),
    ] = 300.0,
) -> None:
    """Move everything to the first key of GRANTKEEPER_MASTER_KEYS (online, resumable).

    Re-wraps the keyring under the first root key (local to KMS or HSM included), adds a
    new keyring key to every ring, waits until running processes seal under it, re-wraps
    every stored data key, repeats until a final count finds none left under an old key,
    then retires the old keyring keys.
    """
    from grantkeeper.rotation import count_pending, rotate_until_done
    from grantkeeper.runtime import unseal

    settings = load_settings()
    require_database(settings)

    async def go() -> dict[str, Any]:
        engine = create_engine(settings)
        try:
            upgrade(settings.database_url)
            keys = await unseal(settings, engine)
            ring = await keys.rotate_keyring(engine)
            await keys.reload(engine)
            wait = ring["activate_at"] - SystemClock().now()
            if wait > 0:
                err_console.print(
                    f"new keyring keys activate in {wait:.0f} s (running processes load them first)",
                    highlight=False,
                )
                await asyncio.sleep(wait)
            vault = keys.vault
            total = await count_pending(engine, vault)
            with Progress(console=err_console, transient=json_out) as progress:
                task = progress.add_task(
                    f"re-wrapping under {vault.primary_key_id} (root key {keys.first_root.id})",
                    total=max(total, 1),
                )
                report = await rotate_until_done(
                    engine, vault, timeout=timeout, progress=lambda n: progress.advance(task, n)
                )
            left = sum(report.remaining.values()) - report.failed
            retired: list[str] = []
            if left <= 0 and report.failed == 0:
                retired = await keys.retire_others(engine, set(ring["new_keys"]))
            await keys.count_wraps(engine)
            return {
                "primary_key_id": vault.primary_key_id,
                "root_key_id": keys.first_root.id,
                "examined": report.examined,
                "rewrapped": report.rewrapped,
                "changed_meanwhile": report.skipped_changed,
                "failed": report.failed,
                "passes": report.passes,
                "remaining_by_key": report.remaining,
                "keyring_rewrapped": ring["keyring_rewrapped"],
                "new_keyring_keys": ring["new_keys"],
                "retired_keyring_keys": retired,
            }
        finally:
            await engine.dispose()

    result = run(go)
    if json_out:
        print_json(result)
    else:
        console.print(
            f"rows examined: {result['examined']}, re-wrapped: {result['rewrapped']} "
            f"(primary key {result['primary_key_id']}, root key {result['root_key_id']})"
        )
    if result["failed"]:
        fail(
            f"{result['failed']} stored secret(s) did not open and were left as they are "
            "(see the log); keep the old key until they are resolved",
            code=1,
        )
    left = sum(result["remaining_by_key"].values())
    if left:
        by_key = ", ".join(f"{k}: {n}" for k, n in sorted(result["remaining_by_key"].items()))
        fail(
            f"{left} stored secret(s) are still under old keys ({by_key}): a process with the "
            "old configuration is still writing; update it and run keys rotate again",
            code=1,
        )


@providers_app.command("list")
def providers_list(
    category: Annotated[str | None, typer.Option(help="Only this category.")] = None,
    q: Annotated[str | None, typer.Option(help="Search text.")] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List catalog providers."""
    from grantkeeper.providers import load_catalog

    specs = load_catalog().search(q, category)
    if json_out:
        print_json(
            [
                {
                    "name": s.name,
                    "display_name": s.display_name,
                    "auth_mode": s.auth_mode,
                    "categories": list(s.categories),
                }
                for s in specs
            ]
        )
        return
    table = Table("name", "display name", "auth", "categories")
    for s in specs:
        table.add_row(s.name, s.display_name, s.auth_mode, ", ".join(s.categories))
    console.print(table)


@providers_app.command("show")
def providers_show(name: str, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show one provider with its quirks and sources."""
    from grantkeeper.errors import UnknownProvider
    from grantkeeper.providers import load_catalog

    try:
        spec = load_catalog().get(name)
    except UnknownProvider:
        fail(f"unknown provider {name!r}", code=1)
        return
    data = spec.model_dump(mode="json")
    if json_out:
        print_json(data)
        return
    console.print(
        f"[bold]{spec.display_name}[/] ({spec.name}) - {spec.auth_mode}; docs: {spec.docs_url}"
    )
    for field in (
        "authorization_url",
        "token_url",
        "revocation_url",
        "userinfo_url",
        "api_base_url",
    ):
        if data.get(field):
            console.print(f"  {field}: {data[field]}")
    for quirk in spec.quirks:
        console.print(f"  - [yellow]{quirk.id}[/]: {quirk.description} ({quirk.source})")


# ---------------------------------------------------------------- audit (chain)

audit_app = typer.Typer(no_args_is_help=True, help="The audit trail.")
app.add_typer(audit_app, name="audit")


def audit_verify(
    environment: Annotated[
        str | None,
        typer.Option("--environment", "-e", help="Only this environment (default: all)."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Recompute the audit hash chain; names the first broken link (exit status 1)."""
    from grantkeeper.auditchain import ChainReport, verify

    settings = load_settings()
    require_database(settings)

    async def go() -> list[tuple[str, ChainReport]]:
        from grantkeeper.runtime import unseal

        engine = create_engine(settings)
        try:
            upgrade(settings.database_url)
            vault = (await unseal(settings, engine)).vault
            async with engine.connect() as conn:
                envs = await env_store.list_all(conn)
            if environment is not None:
                envs = [e for e in envs if e[1] == environment]
                if not envs:
                    fail(f"no environment named {environment!r}")
            return [(name, await verify(engine, vault, env_id)) for env_id, name, _ in envs]
        finally:
            await engine.dispose()

    reports = run(go)
    broken = [r for _, r in reports if not r.ok]
    if json_out:
        print_json(
            {
                "ok": not broken,
                "environments": [{"name": n, **r.as_dict()} for n, r in reports],
            }
        )
    else:
        for name, r in reports:
            if r.broken is not None:
                console.print(
                    f"[bold red]{name}: BROKEN at event {r.broken.event_id} "
                    f"({r.broken.kind})[/]: {r.broken.message}",
                    highlight=False,
                )
            else:
                head = f"head {r.head_id} {r.head_hash}" if r.head_id is not None else "empty"
                pruned = (
                    f", {r.pruned} pruned (through event {r.checkpoint['event_id']})"
                    if r.checkpoint is not None
                    else ""
                )
                console.print(
                    f"{name}: ok, {r.sealed} sealed, {r.pending} not sealed yet{pruned}; {head}",
                    highlight=False,
                )
    if broken:
        raise typer.Exit(1)


audit_app.command("verify")(audit_verify)


def _attach_audit_verify(group: typer.Typer) -> None:
    """The operator commands add their own ``audit`` group (``tail``); whichever ``audit``
    group the CLI ends up with must also offer ``verify``."""
    if not any(c.name == "verify" for c in group.registered_commands):
        group.command("verify")(audit_verify)


def _register_operator_commands() -> None:
    """The operator commands (grants, integrations, webhooks, audit) live in their own module."""
    import importlib

    try:
        operator = importlib.import_module("grantkeeper.cli.operator")
    except ImportError:
        return
    operator.register(app)
    operator_audit = getattr(operator, "audit_app", None)
    if isinstance(operator_audit, typer.Typer):
        _attach_audit_verify(operator_audit)


def main() -> None:
    _register_operator_commands()
    app()
