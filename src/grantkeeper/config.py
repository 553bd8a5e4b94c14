"""Settings from ``GRANTKEEPER_*`` environment variables.

Nothing is created at import time: ``Settings()`` is built by the CLI or by
``create_app`` and passed down. Unsafe combinations fail closed with a one-line
message (``ConfigError``).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from grantkeeper.errors import ConfigError

__all__ = ["RootSpec", "Settings", "parse_master_keys", "parse_root_keys", "pkcs11_attrs"]

_KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_ARN = re.compile(r"arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:(key|alias)/[A-Za-z0-9/_+=.@-]+")


@dataclass(frozen=True, repr=False)
class RootSpec:
    """One entry of ``GRANTKEEPER_MASTER_KEYS``: a root key and where it lives.

    ``backend`` is ``local`` (the 32 key bytes are in ``material``), ``aws-kms``
    (``locator`` is the key ARN) or ``pkcs11`` (``locator`` is the RFC 7512 URI).
    """

    id: str
    backend: str
    locator: str = ""
    material: bytes = field(default=b"", compare=False)

    def __repr__(self) -> str:  # never show key material
        return f"RootSpec({self.id!r}, {self.backend!r})"


def parse_root_keys(raw: str) -> list[RootSpec]:
    """Parse ``GRANTKEEPER_MASTER_KEYS``: ``id:base64(32 bytes)``, ``id:aws-kms:<ARN>`` or
    ``id:pkcs11:<attributes>``, comma-separated; the first one is the default root.

    Error messages name the key id, never the key material.
    """
    keys: list[RootSpec] = []
    seen: set[str] = set()
    for n, item in enumerate(p.strip() for p in raw.split(",")):
        if not item:
            continue
        kid, sep, b64 = item.partition(":")
        if not sep or not _KEY_ID.fullmatch(kid):
            raise ConfigError(
                f"GRANTKEEPER_MASTER_KEYS entry {n + 1} must look like 'id:base64(32 bytes)' "
                "with an id of letters, digits, '_', '-', '.'"
            )
        if kid in seen:
            raise ConfigError(f"GRANTKEEPER_MASTER_KEYS lists key '{kid}' twice")
        if b64.startswith("aws-kms:"):
            arn = b64[len("aws-kms:") :].strip()
            if not _ARN.fullmatch(arn):
                raise ConfigError(
                    f"GRANTKEEPER_MASTER_KEYS key '{kid}' must name a KMS key ARN: "
                    "'id:aws-kms:arn:aws:kms:<region>:<account>:key/<key id>'"
                )
            seen.add(kid)
            keys.append(RootSpec(kid, "aws-kms", arn))
            continue
        if b64.startswith("pkcs11:"):
            attrs = _pkcs11_attrs(kid, b64)
            if "token" not in attrs or not ("object" in attrs or "id" in attrs):
                raise ConfigError(
                    f"GRANTKEEPER_MASTER_KEYS key '{kid}' must name a token and an object: "
                    "'id:pkcs11:token=<label>;object=<key label>'"
                )
            seen.add(kid)
            keys.append(RootSpec(kid, "pkcs11", b64))
            continue
        try:
            material = base64.b64decode(b64.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"GRANTKEEPER_MASTER_KEYS key '{kid}' is not valid base64") from None
        if len(material) != 32:
            raise ConfigError(
                f"GRANTKEEPER_MASTER_KEYS key '{kid}' must decode to 32 bytes, got {len(material)}"
            )
        seen.add(kid)
        keys.append(RootSpec(kid, "local", material=material))
    if not keys:
        raise ConfigError("GRANTKEEPER_MASTER_KEYS is set but holds no key")
    return keys


def _pkcs11_attrs(kid: str, uri: str) -> dict[str, str]:
    """The path attributes of an RFC 7512 ``pkcs11:`` URI (percent-decoded)."""
    from urllib.parse import unquote

    path = uri[len("pkcs11:") :].partition("?")[0]
    out: dict[str, str] = {}
    for part in path.split(";"):
        if not part:
            continue
        name, eq, value = part.partition("=")
        if not eq:
            raise ConfigError(f"GRANTKEEPER_MASTER_KEYS key '{kid}': malformed pkcs11 URI")
        out[name.strip()] = unquote(value.strip())
    return out


def pkcs11_attrs(uri: str) -> dict[str, str]:
    return _pkcs11_attrs("?", uri)


def parse_master_keys(raw: str) -> list[tuple[str, bytes]]:
    """The local entries of ``GRANTKEEPER_MASTER_KEYS`` as ``(id, 32 bytes)``."""
    return [(k.id, k.material) for k in parse_root_keys(raw) if k.backend == "local"]


class Settings(BaseSettings):
    """All of grantkeeper's configuration. See README "Configuration"."""

    model_config = SettingsConfigDict(env_prefix="GRANTKEEPER_", extra="ignore", frozen=True)

    database_url: str = "sqlite+aiosqlite:///./grantkeeper.db"
    public_url: str = "http://127.0.0.1:8080"
    master_keys: SecretStr | None = None
    #: where the development key file lives when master_keys is unset (SQLite only);
    #: default: beside the SQLite database, ``<db>.key`` (``*.key`` is in every .gitignore)
    key_file: Path | None = None
    allow_private_networks: bool = False
    #: the PKCS#11 module (shared library) of the HSM holding ``pkcs11:`` root keys
    pkcs11_module: str | None = None
    #: the user PIN of the HSM token
    pkcs11_pin: SecretStr | None = None
    #: seconds for one call to a KMS or HSM (start, rotation, the periodic re-check)
    kms_timeout: float = Field(default=5.0, gt=0)
    #: how often running processes re-check their root keys and pick up new keyring keys
    keyring_check_interval: float = Field(default=30.0, gt=0)
    #: a keyring key wraps at most this many data keys, then a new one is rolled (the
    #: NIST SP 800-38D limit for random 96-bit nonces is 2^32; the default keeps half of it)
    kek_max_wraps: int = Field(default=2**31, ge=1, le=2**32 - 2**24)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    #: OpenTelemetry traces over OTLP (the ``otel`` extra; endpoint etc. from ``OTEL_*``)
    otel_enabled: bool = False

    db_pool_size: int = Field(default=4, ge=1, le=100)
    #: seconds the token read waits for one of its database connections before a 503
    db_acquire_timeout: float = Field(default=5.0, gt=0, le=300)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)

    #: outgoing calls to providers (token, revocation, discovery)
    http_timeout: float = Field(default=10.0, gt=0)
    connect_session_ttl: int = Field(default=600, ge=60, le=3600)
    token_export_ttl: int = Field(default=600, ge=10, le=3600)

    #: refresh ahead of expiry by this margin (capped at half the token's lifetime)
    refresh_margin: float = Field(default=300.0, ge=0)
    refresh_jitter: float = Field(default=30.0, ge=0)
    #: per-grant budget: no more than one refresh per this many seconds unless forced
    refresh_min_interval: float = Field(default=5.0, ge=0)
    #: the cross-process refresh lease; must exceed http_timeout
    refresh_lease_seconds: float = Field(default=30.0, gt=0)
    #: how long a caller waits for another process's refresh before a 503
    refresh_wait_timeout: float = Field(default=20.0, gt=0)
    #: keep-alive refresh for providers whose refresh tokens die when idle, at this fraction
    idle_refresh_fraction: float = Field(default=0.5, gt=0, lt=1)
    #: grant.expiring goes out this many days before a grant dies in a way no refresh prevents
    expiry_warning_days: float = Field(default=7.0, ge=0, le=365)
    #: how many health probes (cheap authenticated calls) one worker runs at once
    probe_concurrency: int = Field(default=8, ge=1, le=256)

    #: SIGTERM/SIGINT: seconds to finish refreshes already at a provider before exiting
    shutdown_timeout: float = Field(default=10.0, gt=0, le=3600)

    #: /metrics and the dashboard reuse grant counts by status for this many seconds
    grant_counts_ttl: float = Field(default=30.0, ge=0)

    worker_interval: float = Field(default=1.0, gt=0)
    worker_batch: int = Field(default=100, ge=1, le=10_000)
    worker_concurrency: int = Field(default=32, ge=1, le=1000)
    #: proactive calls in flight per provider host across every worker (database slots)
    worker_provider_concurrency: int = Field(default=16, ge=1, le=1000)

    #: retention (days; 0 keeps forever): finished webhook deliveries and their events,
    #: ended connect sessions, audit events (pruned oldest first, in chain order, behind a
    #: checkpoint that keeps ``audit verify`` working; on PostgreSQL a month at a time)
    webhook_retention_days: float = Field(default=30.0, ge=0)
    connect_session_retention_days: float = Field(default=7.0, ge=0)
    audit_retention_days: float = Field(default=365.0, ge=0)
    #: rows one purge statement deletes at most (one short transaction each)
    purge_batch: int = Field(default=1000, ge=1, le=100_000)
    #: seconds between purge passes when nothing is left to purge
    purge_interval: float = Field(default=300.0, gt=0)

    webhook_timeout: float = Field(default=10.0, gt=0)
    webhook_max_attempts: int = Field(default=12, ge=1, le=100)
    #: first retry delay of a failed delivery; doubles per attempt up to an hour
    webhook_retry_base: float = Field(default=5.0, gt=0)
    #: provider revocation left over from a DELETE (outbox): first retry delay, doubling
    #: per attempt up to an hour, until the provider answers 200 or refuses for good
    revocation_retry_base: float = Field(default=5.0, gt=0)

    #: the proxy: seconds until the provider's response headers (and between body reads)
    proxy_timeout: float = Field(default=30.0, gt=0)
    proxy_max_response_bytes: int = Field(default=100 * 1024 * 1024, ge=1024)
    #: the largest request body the proxy forwards (413 beyond it); bodies up to 1 MiB are
    #: buffered so a call can be replayed after a 401, larger ones stream through once
    proxy_max_request_bytes: int = Field(default=100 * 1024 * 1024, ge=1024)

    #: per API key, requests per second (token, proxy, connect session endpoints); 0 disables
    #: serve ``POST /v1/grants/{id}/token`` ahead of the framework (same answers; ``0`` is a
    #: switch back to the full stack, e.g. to compare the two)
    token_fast_path: bool = True
    rate_limit_per_second: float = Field(default=0.0, ge=0)
    rate_limit_burst: int = Field(default=200, ge=1)

    #: subject tokens (the app's own JWTs, RFC 8693): clock leeway for exp/nbf/iat, and the
    #: oldest ``iat`` accepted, in seconds
    subject_token_leeway: int = Field(default=30, ge=0, le=300)
    subject_token_max_age: int = Field(default=3600, ge=60, le=86_400)
    #: how long a subject issuer's JWKS is cached, and the least time between two refetches
    #: caused by an unknown ``kid`` (so forged kids cannot make us hammer the issuer)
    jwks_cache_seconds: float = Field(default=300.0, ge=0)
    jwks_refetch_interval: float = Field(default=30.0, ge=0)
    #: per end user, token exchanges per second (``POST /oauth/token``); 0 disables
    exchange_rate_per_second: float = Field(default=5.0, ge=0)
    exchange_rate_burst: int = Field(default=30, ge=1)

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an absolute http(s) URL")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _fail_closed(self) -> Settings:
        if self.master_keys is not None:
            parse_root_keys(self.master_keys.get_secret_value())
        elif not self.is_sqlite:
            raise ConfigError(
                "GRANTKEEPER_MASTER_KEYS is required with PostgreSQL "
                "(generate one with: grantkeeper keys generate)"
            )
        if self.refresh_lease_seconds <= self.http_timeout:
            raise ConfigError(
                "GRANTKEEPER_REFRESH_LEASE_SECONDS must exceed GRANTKEEPER_HTTP_TIMEOUT"
            )
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def callback_url(self) -> str:
        return f"{self.public_url}/oauth/callback"

    def sqlite_path(self) -> Path | None:
        """The database file of a SQLite URL (None for memory databases and Postgres)."""
        if not self.is_sqlite:
            return None
        _, _, path = self.database_url.partition(":///")
        if not path or path == ":memory:":
            return None
        return Path(path)

    def resolved_key_file(self) -> Path | None:
        if self.key_file is not None:
            return self.key_file
        db = self.sqlite_path()
        # ends in ".key" whatever the database is called, so the usual ignore rule catches it
        return db.with_name(db.name + ".key") if db is not None else None

    def legacy_key_file(self) -> Path | None:
        """Where earlier versions put the development key file (``<db>.keys``)."""
        db = self.sqlite_path()
        return db.with_name(db.name + ".keys") if db is not None and self.key_file is None else None
