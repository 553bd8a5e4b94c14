"""Envelope encryption bound to where a value lives."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from grantkeeper.vault import _aead
from grantkeeper.vault.keyring import Keyring

__all__ = ["Vault", "aad_for"]


def aad_for(environment_id: str, table: str, record_id: str, field: str, version: int = 0) -> bytes:
    """Associated data: the value's environment, row, column and generation.

    Ids only, never secrets (like a KMS encryption context).
    """
    return f"{environment_id}|{table}|{record_id}|{field}|{version}".encode()


class Vault:
    """The single point of encryption and decryption (Vault's barrier).

    ``seal``/``open`` are the recipe; everything underneath is in ``_aead``.
    """

    __slots__ = ("_keks", "_primary", "_primary_id", "keyring")

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self._keks = {kid: AESGCM(material) for kid, material in keyring.keys}
        self._primary_id = keyring.primary_id
        self._primary = self._keks[self._primary_id]

    def __repr__(self) -> str:
        return f"Vault({self.keyring!r})"

    @property
    def primary_key_id(self) -> str:
        return self._primary_id

    def derive_key(self, purpose: bytes, length: int = 32) -> bytes:
        """A key for ``purpose`` (e.g. ``b"ui-session"``), HKDF-SHA256 from the primary KEK.

        Domain-separated by ``purpose``; it changes when the primary key changes, so
        rotating the primary key also ends everything signed with a derived key.
        """
        material = self.keyring.keys[0][1]
        hkdf = HKDF(
            algorithm=hashes.SHA256(), length=length, salt=b"grantkeeper/derive/v1", info=purpose
        )
        return hkdf.derive(material)

    def seal(self, plaintext: bytes | str, aad: bytes) -> bytes:
        data = plaintext.encode() if isinstance(plaintext, str) else plaintext
        return _aead.seal(self._primary_id, self._primary, data, aad)

    def open(self, blob: bytes, aad: bytes) -> bytes:
        """Raises ``DecryptionFailed`` (or its ``UnknownKeyId``) on any failure."""
        return _aead.open_(self._keks, blob, aad)

    def open_str(self, blob: bytes, aad: bytes) -> str:
        return self.open(blob, aad).decode()

    def key_id(self, blob: bytes) -> str:
        return _aead.header_kid(blob)

    def needs_rewrap(self, blob: bytes) -> bool:
        return _aead.header_kid(blob) != self._primary_id

    def rewrap(self, blob: bytes, aad: bytes) -> bytes:
        """The same value with its data key wrapped under the primary key (idempotent)."""
        if not self.needs_rewrap(blob):
            return blob
        return _aead.rewrap(self._keks, self._primary_id, self._primary, blob, aad)
