"""The OpenTelemetry side of ``grantkeeper.tracing`` (imported only when tracing is on).

The SDK's ``TracerProvider`` with a ``BatchSpanProcessor`` (spans leave the request path
at once; a background thread exports them) and the OTLP/HTTP exporter, both configured by
the standard ``OTEL_*`` variables. It is installed as the global provider, so FastAPI's
own request spans (and their ``traceparent`` handling) join the same traces.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

__all__ = ["Tracing"]


class Tracing:
    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("grantkeeper")

    @classmethod
    def start(cls, exporter: SpanExporter | None = None) -> Tracing:
        resource = Resource.create(
            {"service.name": os.environ.get("OTEL_SERVICE_NAME", "grantkeeper")}
        )
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(exporter or OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
        return cls(provider)

    def span(self, name: str, attributes: dict[str, Any]) -> AbstractContextManager[Any]:
        return self._span(name, {k: v for k, v in attributes.items() if v is not None})

    @contextmanager
    def _span(self, name: str, attributes: dict[str, Any]) -> Iterator[Any]:
        # exceptions are recorded by type only: a message could carry a provider's answer
        with self.tracer.start_as_current_span(
            name, attributes=attributes, record_exception=False, set_status_on_exception=False
        ) as s:
            try:
                yield s
            except BaseException as exc:
                s.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                s.set_attribute("error.type", type(exc).__name__)
                raise

    @contextmanager
    def request_span(self, name: str, scope: dict[str, Any]) -> Iterator[Any]:
        carrier = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope["headers"]
            if k in (b"traceparent", b"tracestate")
        }
        with self.tracer.start_as_current_span(
            name,
            context=propagate.extract(carrier),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": scope["method"], "http.route": name.split(" ")[-1]},
            record_exception=False,
            set_status_on_exception=False,
        ) as s:
            try:
                yield s
            except BaseException as exc:
                s.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                s.set_attribute("error.type", type(exc).__name__)
                raise

    def trace_id(self) -> str | None:
        ctx = trace.get_current_span().get_span_context()
        return format(ctx.trace_id, "032x") if ctx.is_valid else None

    def shutdown(self) -> None:
        self.provider.shutdown()
