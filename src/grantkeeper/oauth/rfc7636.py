"""PKCE (RFC 7636): S256 only, a fresh 64-character verifier per flow."""

from __future__ import annotations

import secrets

from authlib.oauth2.rfc7636 import create_s256_code_challenge

__all__ = ["new_verifier", "s256_challenge"]


def new_verifier() -> str:
    # 48 random bytes -> 64 base64url characters (43..128 allowed, section 4.1)
    return secrets.token_urlsafe(48)


def s256_challenge(verifier: str) -> str:
    return str(create_s256_code_challenge(verifier))
