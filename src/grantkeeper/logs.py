"""Logging: text or JSON lines; never request bodies, tokens or keys (callers log ids only)."""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson

from grantkeeper import tracing
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
        tid = getattr(record, "trace_id", None)
        if tid:
            data["trace_id"] = tid
        return orjson.dumps(data).decode()


class _TracedText(logging.Formatter):
    """The text format plus `` trace_id=<32 hex>`` when the line belongs to a trace."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        tid = getattr(record, "trace_id", None)
        return f"{line} trace_id={tid}" if tid else line


class _TraceId(logging.Filter):
    """Stamps the current trace id on records (installed only while tracing is on); a
    record written later for a traced request (the access log) brings its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "trace_id", None) is None:
            record.trace_id = tracing.trace_id()
        return True


def configure_logging(settings: Settings) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    text = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    if settings.log_format == "json":
        handler.setFormatter(_JsonFormatter())
    elif settings.otel_enabled:
        handler.setFormatter(_TracedText(text))
    else:
        handler.setFormatter(logging.Formatter(text))
    if settings.otel_enabled:
        handler.addFilter(_TraceId())
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
