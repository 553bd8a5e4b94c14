"""Hazardous materials: AES-256-GCM and the wire formats. Only ``vault/`` imports this.

Wire formats v1 and v2 (all integers unsigned, big-endian)::

    version:1 = 0x01 | 0x02
    kid_len:1 | kid:kid_len          key-encryption key id (ASCII)
    wrap_nonce:12 | wrapped_dek:48   the record's 256-bit data key under the KEK
    nonce:12 | ciphertext || tag:16  the secret under the data key

A fresh data key per sealed value (Tink's envelope AEAD). The data key is
wrapped with associated data ``b"gk1-dek|" + aad`` and the value sealed with
``b"gk1-data|" + aad``, where ``aad`` names the environment, table, record,
field and version: a ciphertext moved anywhere else does not open. The header
(version, kid) is a hint only; a wrong hint just fails to authenticate.

v1: ``kid`` names a root key of ``GRANTKEEPER_MASTER_KEYS`` itself (before the keyring).
v2: ``kid`` names a key of the keyring (stored wrapped under a root key in the
database); the associated data prefixes are ``gk2-dek|`` and ``gk2-data|``, so a v1
body relabelled as v2 (or the reverse) does not open.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from grantkeeper.errors import DecryptionFailed, UnknownKeyId

VERSION = 1
V2 = 2
NONCE = 12
DEK_LEN = 32
WRAPPED = DEK_LEN + 16
# (dek aad prefix, data aad prefix) by format version
_PREFIX = {1: (b"gk1-dek|", b"gk1-data|"), 2: (b"gk2-dek|", b"gk2-data|")}


def header_kid(blob: bytes) -> str:
    """The key id a ciphertext claims; raises DecryptionFailed on a malformed header."""
    if len(blob) < 2 or blob[0] not in _PREFIX:
        raise DecryptionFailed()
    n = blob[1]
    if n == 0 or len(blob) < 2 + n + NONCE + WRAPPED + NONCE + 16:
        raise DecryptionFailed()
    try:
        return blob[2 : 2 + n].decode("ascii")
    except UnicodeDecodeError:
        raise DecryptionFailed() from None


def seal(kid: str, kek: AESGCM, plaintext: bytes, aad: bytes, version: int = VERSION) -> bytes:
    dek_aad, data_aad = _PREFIX[version]
    dek = AESGCM.generate_key(bit_length=256)
    wnonce = os.urandom(NONCE)
    wrapped = kek.encrypt(wnonce, dek, dek_aad + aad)
    nonce = os.urandom(NONCE)
    body = AESGCM(dek).encrypt(nonce, plaintext, data_aad + aad)
    k = kid.encode("ascii")
    return b"".join((bytes((version, len(k))), k, wnonce, wrapped, nonce, body))


def _split(blob: bytes) -> tuple[str, bytes, bytes, bytes, bytes]:
    kid = header_kid(blob)
    p = 2 + len(kid)
    wnonce = blob[p : p + NONCE]
    wrapped = blob[p + NONCE : p + NONCE + WRAPPED]
    nonce = blob[p + NONCE + WRAPPED : p + NONCE + WRAPPED + NONCE]
    body = blob[p + NONCE + WRAPPED + NONCE :]
    return kid, wnonce, wrapped, nonce, body


def open_(keks: Mapping[str, AESGCM], blob: bytes, aad: bytes) -> bytes:
    """Open with ``keks`` (the key-encryption keys of the blob's format version)."""
    kid, wnonce, wrapped, nonce, body = _split(blob)
    kek = keks.get(kid)
    if kek is None:
        raise UnknownKeyId(f"ciphertext sealed under key id '{kid}', which is not loaded")
    dek_aad, data_aad = _PREFIX[blob[0]]
    try:
        dek = kek.decrypt(wnonce, wrapped, dek_aad + aad)
        return AESGCM(dek).decrypt(nonce, body, data_aad + aad)
    except InvalidTag:
        raise DecryptionFailed() from None


def rewrap(
    keks: Mapping[str, AESGCM],
    new_kid: str,
    new_kek: AESGCM,
    blob: bytes,
    aad: bytes,
    version: int = VERSION,
) -> bytes:
    """Re-wrap the data key under ``new_kek`` (format ``version``); the value is untouched.

    A v1 value moved to v2 is re-sealed instead: its body is bound to the v1 prefix.
    """
    kid, wnonce, wrapped, nonce, body = _split(blob)
    kek = keks.get(kid)
    if kek is None:
        raise UnknownKeyId(f"ciphertext sealed under key id '{kid}', which is not loaded")
    dek_aad, data_aad = _PREFIX[blob[0]]
    try:
        dek = kek.decrypt(wnonce, wrapped, dek_aad + aad)
        # prove the value opens before committing to the new wrapping
        plaintext = AESGCM(dek).decrypt(nonce, body, data_aad + aad)
    except InvalidTag:
        raise DecryptionFailed() from None
    if version != blob[0]:
        return seal(new_kid, new_kek, plaintext, aad, version)
    nw = os.urandom(NONCE)
    k = new_kid.encode("ascii")
    new_wrapped = new_kek.encrypt(nw, dek, _PREFIX[version][0] + aad)
    return b"".join((bytes((version, len(k))), k, nw, new_wrapped, nonce, body))
