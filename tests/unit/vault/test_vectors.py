"""Frozen vectors pin wire format v1 (like ``cryptography_vectors``).

``tests/vectors/envelope_v1.json`` was generated once with fixed keys and is
committed; this test only reads it. A failure here means stored databases would
no longer open: change the format version instead of the vectors.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from grantkeeper.errors import DecryptionFailed
from grantkeeper.vault import Keyring, Vault

DATA = json.loads((Path(__file__).parents[2] / "vectors" / "envelope_v1.json").read_text())
KEYS = {kid: base64.b64decode(v) for kid, v in DATA["keys"].items()}
VECTORS: list[dict[str, Any]] = DATA["vectors"]


def _ids(v: dict[str, Any]) -> str:
    return str(v["name"])


def test_vector_file_is_complete() -> None:
    assert DATA["format"] == "grantkeeper envelope v1"
    assert {v["name"] for v in VECTORS} >= {"empty", "ascii", "utf8", "long", "ascii-rewrapped-k2"}
    assert all(len(k) == 32 for k in KEYS.values())


@pytest.mark.parametrize("vec", VECTORS, ids=_ids)
def test_vault_opens_frozen_vector(vec: dict[str, Any]) -> None:
    vault = Vault(Keyring(tuple(KEYS.items())))
    blob = base64.b64decode(vec["ciphertext_b64"])
    assert vault.open(blob, vec["aad"].encode()) == base64.b64decode(vec["plaintext_b64"])
    assert vault.key_id(blob) == vec["key_id"]


@pytest.mark.parametrize("vec", VECTORS, ids=_ids)
def test_header_layout(vec: dict[str, Any]) -> None:
    """``01 | kid_len | kid | wrap_nonce:12 | wrapped_dek:48 | nonce:12 | ct | tag:16``."""
    blob = base64.b64decode(vec["ciphertext_b64"])
    pt = base64.b64decode(vec["plaintext_b64"])
    kid = vec["key_id"].encode()
    assert blob[0] == 0x01
    assert blob[1] == len(kid)
    assert blob[2 : 2 + len(kid)] == kid
    assert len(blob) == 2 + len(kid) + 12 + 48 + 12 + len(pt) + 16


@pytest.mark.parametrize("vec", VECTORS, ids=_ids)
def test_format_decodes_with_plain_aes_gcm(vec: dict[str, Any]) -> None:
    """The documented format, independently of grantkeeper's code: wrap AAD ``gk1-dek|``+aad,
    data AAD ``gk1-data|``+aad."""
    blob = base64.b64decode(vec["ciphertext_b64"])
    aad = vec["aad"].encode()
    p = 2 + blob[1]
    kek = AESGCM(KEYS[vec["key_id"]])
    dek = kek.decrypt(blob[p : p + 12], blob[p + 12 : p + 60], b"gk1-dek|" + aad)
    assert len(dek) == 32
    pt = AESGCM(dek).decrypt(blob[p + 60 : p + 72], blob[p + 72 :], b"gk1-data|" + aad)
    assert pt == base64.b64decode(vec["plaintext_b64"])


def test_rewrapped_vector_shares_the_sealed_value() -> None:
    by_name = {v["name"]: base64.b64decode(v["ciphertext_b64"]) for v in VECTORS}
    old, new = by_name["ascii"], by_name["ascii-rewrapped-k2"]
    assert old[2 + old[1] + 60 :] == new[2 + new[1] + 60 :]


@pytest.mark.parametrize("vec", VECTORS, ids=_ids)
def test_frozen_vector_refuses_other_aad(vec: dict[str, Any]) -> None:
    vault = Vault(Keyring(tuple(KEYS.items())))
    blob = base64.b64decode(vec["ciphertext_b64"])
    with pytest.raises(DecryptionFailed):
        vault.open(blob, vec["aad"].encode() + b"x")


def test_only_k2_opens_rewrapped_vector() -> None:
    vec = next(v for v in VECTORS if v["name"] == "ascii-rewrapped-k2")
    vault = Vault(Keyring((("k2", KEYS["k2"]),)))
    assert vault.open(base64.b64decode(vec["ciphertext_b64"]), vec["aad"].encode()) == base64.b64decode(
        vec["plaintext_b64"]
    )
