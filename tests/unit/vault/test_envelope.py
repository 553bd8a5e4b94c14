"""The vault barrier (ported from hashicorp/vault ``barrier_aes_gcm_test.go``) plus properties.

P1 explicit unknown key id, P2 AAD binding, P3 unique ciphertexts, P4 rewrap,
P6 any flipped byte fails.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grantkeeper.errors import ConfigError, DecryptionFailed, UnknownKeyId
from grantkeeper.vault import Keyring, Vault, _aead, aad_for

K1 = os.urandom(32)
K2 = os.urandom(32)
ENV = "6c1d0f5e-0000-4000-8000-000000000001"
OTHER_ENV = "6c1d0f5e-0000-4000-8000-000000000002"
GRANT = "0b7a3c1e-9d2f-4e6a-8b1c-2d3e4f5a6b7c"
OTHER_GRANT = "0b7a3c1e-9d2f-4e6a-8b1c-2d3e4f5a6b7d"
SECRET = b"1//0g-refresh-token-\x00\xff-secret"


def vault(*keys: tuple[str, bytes]) -> Vault:
    return Vault(Keyring(keys or (("k1", K1),)))


def aad(env: str = ENV, table: str = "grants", rid: str = GRANT, field: str = "refresh_token", version: int = 0) -> bytes:
    return aad_for(env, table, rid, field, version)


def regions(blob: bytes) -> dict[str, range]:
    """Byte ranges of the v1 wire format (see ``_aead``'s docstring)."""
    n = blob[1]
    p = 2 + n
    return {
        "version": range(0, 1),
        "kid_len": range(1, 2),
        "kid": range(2, p),
        "wrap_nonce": range(p, p + 12),
        "wrapped_key": range(p + 12, p + 12 + 48),
        "nonce": range(p + 60, p + 72),
        "body": range(p + 72, len(blob) - 16),
        "tag": range(len(blob) - 16, len(blob)),
    }


# ------------------------------------------------------------------ Confidential


def test_confidential_stored_bytes_do_not_contain_plaintext() -> None:
    v = vault()
    blob = v.seal(SECRET, aad())
    assert SECRET not in blob
    assert SECRET[:8] not in blob
    assert v.open(blob, aad()) == SECRET


def test_str_plaintext_round_trips() -> None:
    v = vault()
    blob = v.seal("ya29.tökén", aad())
    assert v.open_str(blob, aad()) == "ya29.tökén"


# ------------------------------------------------------------------ Integrity


@pytest.mark.parametrize("region", ["version", "kid_len", "kid", "wrap_nonce", "wrapped_key", "nonce", "body", "tag"])
def test_integrity_flipping_any_region_fails(region: str) -> None:
    v = vault()
    blob = v.seal(SECRET, aad())
    for i in regions(blob)[region]:
        bad = bytearray(blob)
        bad[i] ^= 0x01
        with pytest.raises(DecryptionFailed):
            v.open(bytes(bad), aad())


def test_integrity_byte_15_like_vault() -> None:
    v = vault()
    blob = bytearray(v.seal(b"test", aad()))
    blob[15] ^= 0xFF
    with pytest.raises(DecryptionFailed):
        v.open(bytes(blob), aad())


@pytest.mark.parametrize("cut", [0, 1, 2, 10, 40, 80, -1, -16, -17])
def test_truncated_ciphertext_fails(cut: int) -> None:
    v = vault()
    blob = v.seal(SECRET, aad())
    with pytest.raises(DecryptionFailed):
        v.open(blob[:cut], aad())


def test_extended_ciphertext_fails() -> None:
    v = vault()
    blob = v.seal(SECRET, aad())
    with pytest.raises(DecryptionFailed):
        v.open(blob + b"\x00", aad())


def test_integrity_error_is_opaque() -> None:
    v = vault()
    blob = bytearray(v.seal(SECRET, aad()))
    blob[-1] ^= 1
    with pytest.raises(DecryptionFailed) as info:
        v.open(bytes(blob), aad())
    assert type(info.value) is DecryptionFailed
    assert info.value.code == "keys_unavailable" and info.value.status == 503  # v2 contract: never 500
    assert SECRET.decode(errors="ignore") not in str(info.value)


# ------------------------------------------------------------------ MoveIntegrity (P2)


@pytest.mark.parametrize(
    "moved",
    [
        pytest.param({"rid": OTHER_GRANT}, id="other-row"),
        pytest.param({"field": "access_token"}, id="other-field"),
        pytest.param({"version": 1}, id="other-version"),
        pytest.param({"env": OTHER_ENV}, id="other-environment"),
        pytest.param({"table": "integrations"}, id="other-table"),
    ],
)
def test_move_integrity(moved: dict[str, object]) -> None:
    v = vault()
    blob = v.seal(SECRET, aad())
    with pytest.raises(DecryptionFailed):
        v.open(blob, aad(**moved))  # type: ignore[arg-type]


def test_swapping_access_and_refresh_token_fails() -> None:
    v = vault()
    access = v.seal(b"access", aad(field="access_token"))
    refresh = v.seal(b"refresh", aad(field="refresh_token"))
    with pytest.raises(DecryptionFailed):
        v.open(access, aad(field="refresh_token"))
    with pytest.raises(DecryptionFailed):
        v.open(refresh, aad(field="access_token"))


def test_swapping_wrapped_keys_between_records_fails() -> None:
    """A mix of one record's header with another's body never opens."""
    v = vault()
    a = v.seal(b"alice-token", aad(rid=GRANT))
    b = v.seal(b"bob-token!!", aad(rid=OTHER_GRANT))
    ra = regions(a)
    spliced = a[: ra["nonce"].start] + b[ra["nonce"].start :]
    for target in (GRANT, OTHER_GRANT):
        with pytest.raises(DecryptionFailed):
            v.open(spliced, aad(rid=target))


# ------------------------------------------------------------------ Encrypt_Unique (P3)


def test_encrypt_unique() -> None:
    v = vault()
    blobs = {v.seal(SECRET, aad()) for _ in range(50)}
    assert len(blobs) == 50
    # fresh data key and nonces every time: no region repeats
    for region in ("wrap_nonce", "wrapped_key", "nonce", "tag"):
        seen = {bytes(b[i] for i in regions(b)[region]) for b in blobs}
        assert len(seen) == 50, region


# ------------------------------------------------------------------ key ids (P1)


def test_header_names_primary_key_id() -> None:
    v = vault(("k2", K2), ("k1", K1))
    blob = v.seal(SECRET, aad())
    assert blob[0] == 1
    assert blob[2 : 2 + blob[1]] == b"k2"
    assert v.key_id(blob) == "k2"


def test_unknown_key_id_is_explicit() -> None:
    blob = vault(("k2", K2)).seal(SECRET, aad())
    with pytest.raises(UnknownKeyId) as info:
        vault(("k1", K1)).open(blob, aad())
    assert info.value.code == "keys_unavailable"
    assert "k2" in str(info.value)


def test_wrong_material_under_same_id_fails() -> None:
    blob = vault(("k1", K1)).seal(SECRET, aad())
    with pytest.raises(DecryptionFailed) as info:
        vault(("k1", K2)).open(blob, aad())
    assert type(info.value) is DecryptionFailed


def test_key_material_never_in_repr() -> None:
    v = vault(("k1", K1))
    assert K1.hex() not in repr(v) and repr(K1) not in repr(v)
    assert "k1" in repr(v)


def test_empty_keyring_refused() -> None:
    with pytest.raises(ConfigError):
        Keyring(())


# ------------------------------------------------------------------ Rotate / Rekey (P4)


def test_rotate_old_data_stays_readable() -> None:
    old = vault(("k1", K1))
    blob = old.seal(SECRET, aad())
    rotated = vault(("k2", K2), ("k1", K1))
    assert rotated.open(blob, aad()) == SECRET  # old key still decrypts
    assert rotated.needs_rewrap(blob)
    fresh = rotated.seal(b"new", aad(rid=OTHER_GRANT))
    assert rotated.key_id(fresh) == "k2"
    assert not rotated.needs_rewrap(fresh)


def test_rewrap_then_drop_old_key_loses_nothing() -> None:
    blob = vault(("k1", K1)).seal(SECRET, aad())
    rotated = vault(("k2", K2), ("k1", K1))
    rewrapped = rotated.rewrap(blob, aad())
    assert rotated.key_id(rewrapped) == "k2"
    # only the wrapped data key changed; the sealed value itself is untouched
    r_old, r_new = regions(blob), regions(rewrapped)
    assert blob[r_old["nonce"].start :] == rewrapped[r_new["nonce"].start :]
    only_new = vault(("k2", K2))
    assert only_new.open(rewrapped, aad()) == SECRET
    with pytest.raises(UnknownKeyId):
        only_new.open(blob, aad())


def test_rewrap_is_idempotent() -> None:
    blob = vault(("k1", K1)).seal(SECRET, aad())
    rotated = vault(("k2", K2), ("k1", K1))
    once = rotated.rewrap(blob, aad())
    assert rotated.rewrap(once, aad()) is once
    assert rotated.open(once, aad()) == SECRET


def test_rewrap_refuses_tampered_or_moved_ciphertext() -> None:
    blob = vault(("k1", K1)).seal(SECRET, aad())
    rotated = vault(("k2", K2), ("k1", K1))
    with pytest.raises(DecryptionFailed):
        rotated.rewrap(blob, aad(rid=OTHER_GRANT))
    bad = bytearray(blob)
    bad[-1] ^= 1
    with pytest.raises(DecryptionFailed):
        rotated.rewrap(bytes(bad), aad())


def test_rewrap_with_unknown_key_id_is_explicit() -> None:
    blob = vault(("k0", K1)).seal(SECRET, aad())
    with pytest.raises(UnknownKeyId):
        vault(("k2", K2), ("k1", K1)).rewrap(blob, aad())


def test_keyring_parse_and_primary() -> None:
    import base64

    ring = Keyring.parse(f"b:{base64.b64encode(K2).decode()}, a:{base64.b64encode(K1).decode()}")
    assert ring.primary_id == "b" and ring.ids == ("b", "a")
    assert Vault(ring).primary_key_id == "b"


# ------------------------------------------------------------------ properties (fuzzing the header)


@settings(max_examples=150, deadline=None)
@given(
    plaintext=st.binary(max_size=2048),
    env=st.text(min_size=1, max_size=40),
    rid=st.text(min_size=1, max_size=40),
    field=st.sampled_from(["access_token", "refresh_token", "id_token", "client_secret", "secret"]),
    version=st.integers(min_value=0, max_value=2**31),
)
def test_property_seal_open_round_trip(plaintext: bytes, env: str, rid: str, field: str, version: int) -> None:
    v = vault()
    a = aad_for(env, "grants", rid, field, version)
    assert v.open(v.seal(plaintext, a), a) == plaintext


_V = vault()
_BLOB = _V.seal(SECRET, aad())


@settings(max_examples=400, deadline=None)
@given(index=st.integers(min_value=0, max_value=len(_BLOB) - 1), delta=st.integers(min_value=1, max_value=255))
def test_property_any_single_byte_mutation_fails(index: int, delta: int) -> None:
    bad = bytearray(_BLOB)
    bad[index] = (bad[index] + delta) % 256
    with pytest.raises(DecryptionFailed):
        _V.open(bytes(bad), aad())


@settings(max_examples=300, deadline=None)
@given(junk=st.binary(max_size=200))
def test_property_arbitrary_bytes_never_open_and_only_raise_decryption_failed(junk: bytes) -> None:
    with pytest.raises(DecryptionFailed):
        _V.open(junk, aad())


@settings(max_examples=100, deadline=None)
@given(other=st.sampled_from(["rid", "field", "version", "env"]))
def test_property_move_fails(other: str) -> None:
    moved = {"rid": {"rid": OTHER_GRANT}, "field": {"field": "id_token"}, "version": {"version": 9}, "env": {"env": OTHER_ENV}}[other]
    with pytest.raises(DecryptionFailed):
        _V.open(_BLOB, aad(**moved))  # type: ignore[arg-type]


def test_header_kid_rejects_garbage() -> None:
    for junk in (b"", b"\x01", b"\x03\x02k1" + bytes(100), b"\x01\x00" + bytes(100), b"\x01\x02\xff\xfe" + bytes(100)):
        with pytest.raises(DecryptionFailed):
            _aead.header_kid(junk)
