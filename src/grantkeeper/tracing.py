"""Opt-in OpenTelemetry tracing: spans around the token read, refresh, proxy, connect and
webhook delivery, and the trace id in log lines.

Off by default (``GRANTKEEPER_OTEL_ENABLED=1`` turns it on) and then it costs nothing:
this module imports no OpenTelemetry package, ``span`` hands back one shared no-op
context manager and ``log_extra`` returns None. Turned on, ``grantkeeper._otel`` sets up
the SDK with the OTLP/HTTP exporter (the ``otel`` extra: ``pip install grantkeeper[otel]``),
configured by the standard ``OTEL_*`` variables (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_SERVICE_NAME``, ``OTEL_TRACES_SAMPLER``...).

Span attributes are ids only (grant, integration, provider, status): never a token,
a secret or a URL's query.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.types import Scope

    from grantkeeper.config import Settings

__all__ = [
    "configure",
    "enabled",
    "log_extra",
    "request_span",
    "shutdown",
    "span",
    "trace_id",
]

_OFF: AbstractContextManager[None] = contextlib.nullcontext()
#: the running tracer (``grantkeeper._otel.Tracing``), None while tracing is off
_impl: Any = None


def enabled() -> bool:
    return _impl is not None


def configure(settings: Settings) -> None:
    """Start tracing if the settings ask for it (once per process)."""
    global _impl
    if not settings.otel_enabled or _impl is not None:
        return
    from grantkeeper import _otel

    _impl = _otel.Tracing.start()


def shutdown() -> None:
    """Export what is pending and stop (the process is exiting)."""
    global _impl
    impl, _impl = _impl, None
    if impl is not None:
        impl.shutdown()


def span(name: str, **attributes: str | int | float | bool | None) -> AbstractContextManager[Any]:
    """A span named ``name`` around a block (a no-op while tracing is off); an exception
    leaving the block marks it failed, by its type name only."""
    if _impl is None:
        return _OFF
    cm: AbstractContextManager[Any] = _impl.span(name, attributes)
    return cm


def request_span(name: str, scope: Scope) -> AbstractContextManager[Any]:
    """A server span for an ASGI request, continuing the caller's trace (``traceparent``);
    call only while tracing is on. Attributes: method, route, and the status when set."""
    cm: AbstractContextManager[Any] = _impl.request_span(name, scope)
    return cm


def trace_id() -> str | None:
    """The current trace id (32 hex digits), if tracing is on and a span is active."""
    return _impl.trace_id() if _impl is not None else None


def log_extra() -> dict[str, Any] | None:
    """``extra=`` for a log record written later (outside the span): the trace id now."""
    if _impl is None:
        return None
    tid = _impl.trace_id()
    return {"trace_id": tid} if tid else None
