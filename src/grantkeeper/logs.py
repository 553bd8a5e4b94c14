"""Logging: text or JSON lines; never request bodies, tokens or keys (callers log ids only)."""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson

from grantkeeper.config import Settings

__all__ = ["configure_logging"]


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info and record.exc_info[0] is not None:
            data["exc_type"] = record.exc_info[0].__name__
        return orjson.dumps(data).decode()


def configure_logging(settings: Settings) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    # libraries that could log request URLs or bodies stay quiet below WARNING
    for noisy in (
        "uvicorn.access",
        "aiohttp.client",
        "httpx",
        "httpcore",
        "sqlalchemy.engine",
        "asyncio",
        # DEBUG in the drivers prints SQL parameters (ciphertexts, key hashes)
        "aiosqlite",
        "asyncpg",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # "Context impl SQLiteImpl." on every CLI command tells an operator nothing
    logging.getLogger("alembic").setLevel(logging.WARNING)
