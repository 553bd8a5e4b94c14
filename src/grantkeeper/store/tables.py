"""Database tables (SQLAlchemy Core). Wire models live in ``api/schemas.py``.

Timestamps are epoch seconds (double precision): the same on SQLite and
PostgreSQL, cheap to compare on the hot path. Secret columns (``*_ct``) hold
``vault`` ciphertexts only.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
)

__all__ = [
    "api_keys",
    "audit_checkpoints",
    "audit_events",
    "connect_sessions",
    "end_user_tokens",
    "environments",
    "grants",
    "integrations",
    "keyring_keys",
    "metadata",
    "provider_event_ids",
    "rate_limits",
    "refresh_slots",
    "subject_issuers",
    "ui_sign_outs",
    "webhook_deliveries",
    "webhook_endpoints",
    "webhook_events",
]

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

ID = String(36)
# BIGINT autoincrement on Postgres, INTEGER PRIMARY KEY (rowid) on SQLite
SERIAL = BigInteger().with_variant(Integer(), "sqlite")

environments = Table(
    "environments",
    metadata,
    Column("id", ID, primary_key=True),
    Column("name", String(63), nullable=False, unique=True),
    Column("created_at", Double, nullable=False),
    #: the id of a GRANTKEEPER_MASTER_KEYS entry: this environment's own root key (its
    #: secrets are sealed only under keyring keys wrapped by it); NULL: the default root
    Column("root_key_id", String(32), nullable=True),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("environment_id", ID, ForeignKey("environments.id"), nullable=False),
    Column("name", String(200), nullable=False),
    # SHA-256 of the key's secret part; the key itself is never stored
    Column("secret_hash", LargeBinary(32), nullable=False),
    Column("scopes", JSON, nullable=False),
    Column("integration_ids", JSON, nullable=True),
    Column("created_at", Double, nullable=False),
    Column("revoked_at", Double, nullable=True),
    Column("last_used_at", Double, nullable=True),
)

integrations = Table(
    "integrations",
    metadata,
    Column("environment_id", ID, ForeignKey("environments.id"), nullable=False),
    Column("id", String(63), nullable=False),
    Column("provider", String(63), nullable=False),
    Column("display_name", String(200), nullable=True),
    Column("client_id", String(1000), nullable=False),
    Column("client_secret_ct", LargeBinary, nullable=True),
    Column("scopes", JSON, nullable=False),
    Column("return_urls", JSON, nullable=False),
    Column("authorization_params", JSON, nullable=False),
    # URLs are Text: their length is checked at the API (2000), not by a column that
    # only PostgreSQL enforces
    Column("issuer", Text, nullable=True),
    Column("endpoints", JSON, nullable=True),
    Column("settings", JSON, nullable=False),
    Column("api_base_url", Text, nullable=True),
    Column("token_export", String(10), nullable=False),
    Column("connect_page", Boolean, nullable=False),
    # verification secret of the provider's own event notifications (Slack, GitHub), sealed
    Column("provider_events_secret_ct", LargeBinary, nullable=True),
    # seconds between health probes of each grant (None: no probe)
    Column("health_probe_interval", Integer, nullable=True),
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
    # MCP servers: what discovery found (resource, authorization server, registration kind)
    Column("mcp", JSON, nullable=True),
    # RFC 7591 registration access token of a self-registered client (sealed)
    Column("registration_token_ct", LargeBinary, nullable=True),
    # end users may fetch their own access tokens from a browser (RFC 8693 exchange)
    Column("client_access", Boolean, nullable=False, server_default=false()),
    # credential kinds: how the proxy stamps, how a credential is proven, a GitHub App's key
    Column("stamp", JSON, nullable=True),
    Column("verify_request", JSON, nullable=True),
    Column("app_id", String(64), nullable=True),
    Column("private_key_ct", LargeBinary, nullable=True),
    # extra token-request parameters (Auth0's ``audience``, RFC 8707 ``resource``)
    Column("token_params", JSON, nullable=True),
    # the provider refused the integration's client (invalid_client, unauthorized_client):
    # status "failing" until a refresh at retry_at (bounded backoff) succeeds
    Column("failure_code", String(64), nullable=True),
    Column("failure_description", String(500), nullable=True),
    Column("failed_at", Double, nullable=True),
    Column("retry_at", Double, nullable=True),
    Column("failure_attempts", Integer, nullable=False, server_default="0"),
    PrimaryKeyConstraint("environment_id", "id"),
)

grants = Table(
    "grants",
    metadata,
    Column("id", ID, primary_key=True),
    Column("environment_id", ID, ForeignKey("environments.id"), nullable=False),
    Column("integration_id", String(63), nullable=False),
    Column("provider", String(63), nullable=False),
    Column("user_id", String(255), nullable=False),
    # '' when the provider names no account, so the uniqueness below also holds then
    Column("provider_account_id", String(255), nullable=False),
    Column("status", String(16), nullable=False),
    Column("scopes", JSON, nullable=False),
    Column("token_type", String(40), nullable=False),
    Column("access_token_ct", LargeBinary, nullable=True),
    Column("refresh_token_ct", LargeBinary, nullable=True),
    Column("id_token_ct", LargeBinary, nullable=True),
    Column("access_token_expires_at", Double, nullable=True),
    # generation of the stored tokens: bumped by every token write (fencing), part of the AAD
    Column("version", Integer, nullable=False),
    Column("last_refreshed_at", Double, nullable=True),
    Column("refresh_due_at", Double, nullable=True),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_until", Double, nullable=True),
    Column("refresh_attempts", Integer, nullable=False),
    Column("retry_at", Double, nullable=True),
    Column("failure_code", String(64), nullable=True),
    Column("failure_description", String(500), nullable=True),
    Column("failed_at", Double, nullable=True),
    # non-secret extras of the token response the provider's API needs (e.g. instance_url)
    Column("token_extra", JSON, nullable=False),
    Column("api_base_url", Text, nullable=True),
    Column("created_via", String(16), nullable=False),
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
    Column("revoked_at", Double, nullable=True),
    # lifecycle signals: when the refresh token dies; the deadline a grant.expiring warning
    # is pending for (set only when a refresh cannot push it back); the deadline last warned
    # of (so one expiry is announced once); the next health probe
    Column("refresh_token_expires_at", Double, nullable=True),
    Column("expiry_warn_at", Double, nullable=True),
    Column("expiry_warned_for", Double, nullable=True),
    Column("probe_due_at", Double, nullable=True),
    # non-code kinds: the kind's secret material (API key, password, client secret, private
    # key, OAuth 1.0a token secret ...) as one sealed JSON object
    Column("credentials_ct", LargeBinary, nullable=True),
    UniqueConstraint("environment_id", "integration_id", "user_id", "provider_account_id"),
    Index("ix_grants_due", "status", "refresh_due_at"),
    Index("ix_grants_env_created", "environment_id", "created_at"),
    Index("ix_grants_env_integration", "environment_id", "integration_id"),
    Index("ix_grants_expiry_warn", "status", "expiry_warn_at"),
    Index("ix_grants_probe_due", "status", "probe_due_at"),
    # key rotation's keyset pagination
    Index("ix_grants_env_id", "environment_id", "id"),
)

connect_sessions = Table(
    "connect_sessions",
    metadata,
    Column("id", ID, primary_key=True),
    Column("environment_id", ID, ForeignKey("environments.id"), nullable=False),
    Column("integration_id", String(63), nullable=False),
    Column("user_id", String(255), nullable=False),
    Column("return_to", Text, nullable=False),
    Column("scopes", JSON, nullable=True),
    # pending -> authorizing -> exchanging -> completed | failed
    Column("status", String(16), nullable=False),
    Column("url_token_hash", LargeBinary(32), nullable=False, unique=True),
    Column("state_hash", LargeBinary(32), nullable=True, unique=True),
    Column("verifier_ct", LargeBinary, nullable=True),
    Column("nonce_hash", LargeBinary(32), nullable=True),
    Column("expected_issuer", Text, nullable=True),
    Column("consent", Boolean, nullable=False),
    Column("reconnect_grant_id", ID, nullable=True),
    Column("grant_id", ID, nullable=True),
    Column("error", String(64), nullable=True),
    Column("error_description", String(500), nullable=True),
    Column("created_by", String(64), nullable=True),
    Column("created_at", Double, nullable=False),
    Column("expires_at", Double, nullable=False),
    Column("completed_at", Double, nullable=True),
    Column("export_ct", LargeBinary, nullable=True),
    Column("export_expires_at", Double, nullable=True),
    # none | available | retrieved | expired
    Column("export_status", String(12), nullable=False),
    # key rotation's keyset pagination
    Index("ix_connect_sessions_env_id", "environment_id", "id"),
    # the retention purge (ended sessions)
    Index("ix_connect_sessions_expires", "expires_at"),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column("id", SERIAL, primary_key=True, autoincrement=True),
    Column("environment_id", ID, nullable=False),
    Column("at", Double, nullable=False),
    # "key:<id>", "user:<user_id>" (user ids are up to 255 characters), ...
    Column("actor", String(300), nullable=False),
    Column("action", String(64), nullable=False),
    Column("grant_id", ID, nullable=True),
    Column("integration_id", String(63), nullable=True),
    Column("detail", JSON, nullable=False),
    # hash chain (tamper evidence), filled by the sealer in the order it seals (chain_seq:
    # the event's position in its environment's chain; not the id order, which a slow
    # transaction can overtake)
    Column("prev_hash", String(64), nullable=True),
    Column("hash", String(64), nullable=True),
    Column("chain_seq", BigInteger, nullable=True),
    Index("ix_audit_env_grant", "environment_id", "grant_id", "id"),
    # not unique: on PostgreSQL the table is partitioned by month of ``at`` (migration 0015,
    # ``store.auditparts``; its primary key there is (id, at)), and a partitioned table's
    # unique indexes must hold the partition key. The sealer's lock keeps positions
    # unique; ``audit verify`` would name a duplicate
    Index("ix_audit_env_chain", "environment_id", "chain_seq"),
    Index(
        "ix_audit_unsealed",
        "id",
        postgresql_where=text("hash IS NULL"),
        sqlite_where=text("hash IS NULL"),
    ),
    Index("ix_audit_env_id", "environment_id", "id"),
    Index("ix_audit_env_action_at", "environment_id", "action", "at"),
)

#: where each environment's audit chain starts after the retention purge pruned its oldest
#: events: the last pruned event (position, id, seal), MACed with the chain key so that
#: ``audit verify`` can start from it and a forged or edited checkpoint is detected
audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("environment_id", ID, primary_key=True),
    Column("chain_seq", BigInteger, nullable=False),
    Column("event_id", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("at", Double, nullable=False),
    # events pruned so far, in total
    Column("pruned", BigInteger, nullable=False),
    Column("mac", String(64), nullable=False),
    Column("updated_at", Double, nullable=False),
)

webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("id", ID, primary_key=True),
    Column("environment_id", ID, ForeignKey("environments.id"), nullable=False),
    Column("url", String(2000), nullable=False),
    Column("events", JSON, nullable=False),
    # the integrations whose events it receives (those of the key that created it);
    # NULL: every integration of the environment
    Column("integration_ids", JSON, nullable=True),
    Column("secret_ct", LargeBinary, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("deleted_at", Double, nullable=True),
    # key rotation's keyset pagination
    Index("ix_webhook_endpoints_env_id", "environment_id", "id"),
)

webhook_events = Table(
    "webhook_events",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("environment_id", ID, nullable=False),
    Column("type", String(40), nullable=False),
    Column("grant_id", ID, nullable=True),
    Column("payload", JSON, nullable=False),
    Column("created_at", Double, nullable=False),
    # the retention purge
    Index("ix_webhook_events_created", "created_at"),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", SERIAL, primary_key=True, autoincrement=True),
    Column("event_id", String(40), ForeignKey("webhook_events.id"), nullable=False),
    Column("endpoint_id", ID, ForeignKey("webhook_endpoints.id"), nullable=False),
    Column("environment_id", ID, nullable=False),
    # pending | succeeded | failed
    Column("status", String(12), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", Double, nullable=True),
    Column("lease_until", Double, nullable=True),
    Column("last_status", Integer, nullable=True),
    Column("last_error", String(300), nullable=True),
    Column("created_at", Double, nullable=False),
    Column("delivered_at", Double, nullable=True),
    Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    Index("ix_webhook_deliveries_endpoint", "endpoint_id", "id"),
    # the retention purge: finished deliveries by age, and "does the event still have any"
    Index("ix_webhook_deliveries_finished", "status", "created_at"),
    Index("ix_webhook_deliveries_event", "event_id"),
)

provider_event_ids = Table(
    "provider_event_ids",
    metadata,
    # ids of provider notifications already acted on (SET jti, Slack/GitHub delivery ids):
    # a replay is refused until the row expires (after the scheme's own freshness window)
    Column("environment_id", ID, nullable=False),
    Column("integration_id", String(63), nullable=False),
    Column("event_id", String(255), nullable=False),
    Column("expires_at", Double, nullable=False),
    PrimaryKeyConstraint("environment_id", "integration_id", "event_id"),
    Index("ix_provider_event_ids_expires", "expires_at"),
)

rate_limits = Table(
    "rate_limits",
    metadata,
    Column("bucket", String(120), primary_key=True),
    Column("tokens", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
)

#: admin UI sessions ended by sign-out before their cookie expires (the cookie is
#: stateless; this is what makes sign-out end it on the server)
ui_sign_outs = Table(
    "ui_sign_outs",
    metadata,
    # SHA-256 of the session nonce
    Column("nonce_hash", LargeBinary(32), primary_key=True),
    Column("expires_at", Double, nullable=False),
)

#: the keyring (Vault's keyring): key-encryption keys and the derivation secret, each
#: stored only wrapped under a root key (never in clear). ``environment_id`` NULL is the
#: shared ring (the default root); else the ring of an environment with its own root.
keyring_keys = Table(
    "keyring_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("environment_id", ID, ForeignKey("environments.id"), nullable=True),
    # kek (wraps data keys) | derive (the audit chain and UI session keys derive from it)
    Column("purpose", String(16), nullable=False),
    Column("root_key_id", String(32), nullable=False),
    Column("wrapped", LargeBinary, nullable=False),
    Column("created_at", Double, nullable=False),
    #: processes start sealing under a new key at this time (they all load it first)
    Column("activate_at", Double, nullable=False),
    Column("retired_at", Double, nullable=True),
    #: data keys wrapped under it so far, added up by every process (the nonce budget)
    Column("wraps", BigInteger, nullable=False, server_default="0"),
)

# the app's own login systems, whose JWTs identify end users (RFC 8693 subject tokens)
subject_issuers = Table(
    "subject_issuers",
    metadata,
    Column("environment_id", ID, ForeignKey("environments.id"), nullable=False),
    Column("id", String(63), nullable=False),
    Column("issuer", String(1000), nullable=False),
    Column("jwks_uri", String(2000), nullable=False),
    Column("audience", String(1000), nullable=False),
    Column("user_id_claim", String(100), nullable=False),
    Column("allowed_origins", JSON, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
    PrimaryKeyConstraint("environment_id", "id"),
    Index("ix_subject_issuers_issuer", "issuer"),
)

# short-lived bearers that stand for one end user; only the SHA-256 of the secret is kept
end_user_tokens = Table(
    "end_user_tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("environment_id", ID, ForeignKey("environments.id"), nullable=False),
    Column("user_id", String(255), nullable=False),
    Column("integration_ids", JSON, nullable=True),
    Column("secret_hash", LargeBinary(32), nullable=False),
    Column("created_by", String(64), nullable=True),
    Column("created_at", Double, nullable=False),
    Column("expires_at", Double, nullable=False),
    Column("revoked_at", Double, nullable=True),
    Index("ix_end_user_tokens_env_user", "environment_id", "user_id"),
    Index("ix_end_user_tokens_expires", "expires_at"),
)

#: provider revocations (RFC 7009) a DELETE could not finish: the token stays sealed here
#: (never in the grant, which is revoked at once) until the provider answers
revocation_outbox = Table(
    "revocation_outbox",
    metadata,
    Column("id", ID, primary_key=True),
    Column("environment_id", ID, nullable=False),
    Column("grant_id", ID, nullable=False),
    Column("integration_id", String(63), nullable=False),
    Column("token_type_hint", String(20), nullable=False),
    # vault ciphertext (AAD bound to this row); NULL once done
    Column("token_ct", LargeBinary, nullable=True),
    # pending | succeeded | failed | unsupported
    Column("status", String(12), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", Double, nullable=True),
    Column("lease_until", Double, nullable=True),
    Column("last_error", String(200), nullable=True),
    Column("created_at", Double, nullable=False),
    Column("done_at", Double, nullable=True),
    Index("ix_revocation_outbox_due", "status", "next_attempt_at"),
)

#: per-provider concurrency across every worker: a refresh call to a provider runs only
#: under one of its slots, each an owner-checked lease (database time) held by one worker
refresh_slots = Table(
    "refresh_slots",
    metadata,
    Column("provider", String(63), primary_key=True),
    Column("slot", Integer, primary_key=True),
    Column("owner", String(64), nullable=True),
    Column("lease_until", Double, nullable=True),
)
