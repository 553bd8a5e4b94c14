"""Shared CLI plumbing: settings that fail with one line, an async runner, JSON output."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
import typer
from pydantic import ValidationError
from rich.console import Console

from grantkeeper.config import Settings
from grantkeeper.errors import GrantkeeperError
from grantkeeper.logs import configure_logging

__all__ = [
    "console",
    "err_console",
    "fail",
    "load_settings",
    "note_new_database",
    "print_json",
    "require_database",
    "run",
]

T = TypeVar("T")
console = Console()
if not console.is_terminal and "COLUMNS" not in os.environ:
    # piped into grep, awk or a file: table rows stay whole instead of being cut at 80 columns
    console.width = 100_000
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    # soft_wrap: one line however narrow the terminal (scripts and log shippers read it)
    err_console.print(
        f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True
    )
    raise typer.Exit(code)


def load_settings() -> Settings:
    try:
        settings = Settings()
    except GrantkeeperError as exc:
        fail(exc.detail)
        raise  # unreachable
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "settings"
        msg = str(first.get("msg", "invalid"))
        ctx_err = (first.get("ctx") or {}).get("error")
        if isinstance(ctx_err, GrantkeeperError):
            msg = ctx_err.detail
        fail(f"GRANTKEEPER_{where.upper()}: {msg}" if where != "settings" else msg)
        raise
    configure_logging(settings)
    return settings


def require_database(settings: Settings) -> None:
    """Commands that only read refuse a SQLite file that is not there (run from the wrong
    directory, they would otherwise create an empty database and show nothing)."""
    path = settings.sqlite_path()
    if path is not None and not path.exists():
        fail(f"no database at {path.resolve()}; set GRANTKEEPER_DATABASE_URL", code=1)


def note_new_database(settings: Settings) -> None:
    """Commands that write may create the database (they work before the first start); say so."""
    path = settings.sqlite_path()
    if path is not None and not path.exists():
        err_console.print(
            f"note: no database at {path.resolve()} yet: creating it "
            "(set GRANTKEEPER_DATABASE_URL to use another)",
            highlight=False,
            soft_wrap=True,
        )


def _uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # not on every platform (uvicorn[standard] skips it on Windows)
        return None
    return uvloop.new_event_loop


def run(fn: Callable[[], Awaitable[T]], *, fast_loop: bool = False) -> T:
    """Run ``fn`` to completion; ``fast_loop``: on uvloop when it is installed (the
    long-running worker: uvicorn already serves on it)."""
    factory = _uvloop_factory() if fast_loop else None
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(fn())  # type: ignore[arg-type]
    except GrantkeeperError as exc:
        fail(f"{exc.detail} ({exc.code})")
        raise


def print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
