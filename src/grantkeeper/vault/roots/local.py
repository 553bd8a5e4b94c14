"""A root key held in the process's configuration (``id:base64``)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from grantkeeper.errors import RootKeyUnavailable
from grantkeeper.vault.roots import context_bytes

__all__ = ["LocalRoot"]

_PREFIX = b"gk-root-local|"


class LocalRoot:
    """AES-256-GCM under the configured bytes: ``nonce:12 | ciphertext || tag``."""

    backend = "local"

    def __init__(self, root_id: str, material: bytes) -> None:
        self.id = root_id
        self._aead = AESGCM(material)

    def __repr__(self) -> str:
        return f"LocalRoot({self.id!r})"

    def describe(self) -> str:
        return "local key from GRANTKEEPER_MASTER_KEYS"

    async def wrap(self, plaintext: bytes, context: Mapping[str, str]) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext, _PREFIX + context_bytes(context))

    async def unwrap(self, blob: bytes, context: Mapping[str, str]) -> bytes:
        try:
            return self._aead.decrypt(blob[:12], blob[12:], _PREFIX + context_bytes(context))
        except (InvalidTag, ValueError):
            raise RootKeyUnavailable(
                self.id,
                self.backend,
                "wrong_key",
                f"root key '{self.id}' (local) is not the key that wrapped the keyring",
            ) from None
