"""Frozen vectors pin wire format v2 (keyring keys; ``tests/vectors/envelope_v2.json``).

Generated once and committed; this test only reads them. v2 has v1's layout with
version byte 0x02, a keyring key id, and the associated data prefixes ``gk2-dek|`` and
``gk2-data|``. A failure here means stored databases would no longer open.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from grantkeeper.errors import DecryptionFailed
from grantkeeper.vault import KeyState, Vault
from grantkeeper.vault.envelope import Ring

DATA = json.loads((Path(__file__).parents[2] / "vectors" / "envelope_v2.json").read_text())
KEYS = {kid: base64.b64decode(v) for kid, v in DATA["keys"].items()}
VECTORS: list[dict[str, Any]] = DATA["vectors"]


def _vault() -> Vault:
    v = Vault()
    v.install(
        KeyState(
            v2={k: AESGCM(m) for k, m in KEYS.items()},
            shared=Ring(((0.0, "kr000000000001"), (1.0, "kr000000000002"))),
        )
    )
    return v


def test_vector_file_is_complete() -> None:
    assert DATA["format"] == "grantkeeper envelope v2"
    assert {v["name"] for v in VECTORS} >= {"empty", "ascii", "utf8", "long", "v1-ascii-rotated-to-v2"}


@pytest.mark.parametrize("vec", VECTORS, ids=lambda v: str(v["name"]))
def test_vault_opens_frozen_vector(vec: dict[str, Any]) -> None:
    blob = base64.b64decode(vec["ciphertext_b64"])
    assert _vault().open(blob, vec["aad"].encode()) == base64.b64decode(vec["plaintext_b64"])
    assert blob[0] == 0x02 and _vault().key_id(blob) == vec["key_id"]


@pytest.mark.parametrize("vec", VECTORS, ids=lambda v: str(v["name"]))
def test_format_decodes_with_plain_aes_gcm(vec: dict[str, Any]) -> None:
    blob = base64.b64decode(vec["ciphertext_b64"])
    aad = vec["aad"].encode()
    n = blob[1]
    p = 2 + n
    dek = AESGCM(KEYS[vec["key_id"]]).decrypt(blob[p : p + 12], blob[p + 12 : p + 60], b"gk2-dek|" + aad)
    pt = AESGCM(dek).decrypt(blob[p + 60 : p + 72], blob[p + 72 :], b"gk2-data|" + aad)
    assert pt == base64.b64decode(vec["plaintext_b64"])


@pytest.mark.parametrize("vec", VECTORS, ids=lambda v: str(v["name"]))
def test_relabelled_as_v1_does_not_open(vec: dict[str, Any]) -> None:
    blob = bytearray(base64.b64decode(vec["ciphertext_b64"]))
    blob[0] = 0x01
    v = Vault()
    v.install(KeyState(v1={k: AESGCM(m) for k, m in KEYS.items()}))
    with pytest.raises(DecryptionFailed):
        v.open(bytes(blob), vec["aad"].encode())


def test_new_seals_use_the_newest_active_key_and_are_v2() -> None:
    blob = _vault().seal(b"fresh", b"env-1|grants|g|access_token|0")
    assert blob[0] == 0x02 and _vault().key_id(blob) == "kr000000000002"
