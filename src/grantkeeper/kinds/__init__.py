"""Credential kinds: one module per kind (what a grant of it stores, how it is obtained,
refreshed, stamped and revoked)."""
