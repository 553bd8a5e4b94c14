"""Prometheus metrics, on a registry per runtime (no global state at import)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.refreshes = Counter(
            "grantkeeper_refreshes_total",
            "Refresh attempts at providers by outcome",
            ["provider", "outcome", "trigger"],
            registry=r,
        )
        self.refresh_seconds = Histogram(
            "grantkeeper_refresh_duration_seconds",
            "Time of one refresh call at the provider",
            ["provider"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.tokens_served = Counter(
            "grantkeeper_tokens_served_total", "Access tokens handed out", ["provider"], registry=r
        )
        self._served: dict[str, Any] = {}
        self.refresh_lag = Histogram(
            "grantkeeper_refresh_lag_seconds",
            "How long after falling due a proactive refresh went to the provider",
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
            registry=r,
        )
        self.provider_latency = Histogram(
            "grantkeeper_provider_request_duration_seconds",
            "Time of one call at a provider (refresh at its token endpoint, proxied API call)",
            ["provider", "operation"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.due_lag = Gauge(
            "grantkeeper_refresh_due_lag_seconds", "How late the oldest due grant is", registry=r
        )
        self.grants = Gauge("grantkeeper_grants", "Grants by status", ["status"], registry=r)
        self.webhook_deliveries = Counter(
            "grantkeeper_webhook_deliveries_total",
            "Webhook delivery attempts by outcome",
            ["outcome"],
            registry=r,
        )
        self.expiry_warnings = Counter(
            "grantkeeper_grant_expiry_warnings_total",
            "grant.expiring warnings sent (a grant will die unless its user reconnects)",
            ["provider"],
            registry=r,
        )
        self.provider_events = Counter(
            "grantkeeper_provider_events_total",
            "Providers' own notifications by scheme and outcome",
            ["scheme", "outcome"],
            registry=r,
        )
        self.probes = Counter(
            "grantkeeper_health_probes_total",
            "Grant health probes by outcome",
            ["provider", "outcome"],
            registry=r,
        )
        self.proxy_requests = Counter(
            "grantkeeper_proxy_requests_total",
            "Proxied requests by provider and status class",
            ["provider", "status"],
            registry=r,
        )

    def served(self, provider: str) -> Any:
        """``tokens_served`` of one provider, looked up once (``labels()`` takes a lock and
        builds a key on every call; the token read counts on every request)."""
        child = self._served.get(provider)
        if child is None:
            child = self._served[provider] = self.tokens_served.labels(provider)
        return child
