"""Envelope encryption bound to where a value lives."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from grantkeeper.errors import KeysUnavailable, UnknownKeyId
from grantkeeper.vault import _aead
from grantkeeper.vault.keyring import Keyring

__all__ = ["KeyState", "Ring", "Vault", "aad_for"]


def aad_for(environment_id: str, table: str, record_id: str, field: str, version: int = 0) -> bytes:
    """Associated data: the value's environment, row, column and generation.

    Ids only, never secrets (like a KMS encryption context). It always starts with the
    environment id and ``|``: the vault picks the environment's keyring from it.
    """
    return f"{environment_id}|{table}|{record_id}|{field}|{version}".encode()


@dataclass(frozen=True)
class Ring:
    """The keyring keys one ring seals under: ``(activate_at, key id)``, oldest first.

    The newest key whose ``activate_at`` has passed seals; a key is loaded by every
    process before it activates (see ``vault.manager``).
    """

    schedule: tuple[tuple[float, str], ...]

    def current(self, now: float) -> str:
        kid = self.schedule[0][1]
        for at, k in self.schedule:
            if at <= now:
                kid = k
        return kid


@dataclass(frozen=True, repr=False)
class KeyState:
    """What the vault holds in memory; replaced whole, never changed in place."""

    #: format v1: root key id -> the local root key itself (databases from before the keyring)
    v1: dict[str, AESGCM] = field(default_factory=dict)
    v1_primary: str | None = None
    #: format v2: keyring key id -> key-encryption key
    v2: dict[str, AESGCM] = field(default_factory=dict)
    #: the ring of every environment without a root of its own
    shared: Ring | None = None
    #: environment id (bytes, as in the AAD) -> its own ring; None: its keys are unavailable
    env_rings: dict[bytes, Ring | None] = field(default_factory=dict)
    #: keyring key id -> why it is not loaded (its root is disabled, destroyed, unreachable)
    down: dict[str, str] = field(default_factory=dict)
    #: environment id -> why its keys are unavailable
    env_down: dict[bytes, str] = field(default_factory=dict)
    #: the derivation secret (audit chain, UI sessions); survives rotation
    derive: bytes | None = None
    #: keyring keys that used up their nonce budget: they seal no more
    exhausted: frozenset[str] = frozenset()

    def __repr__(self) -> str:
        return f"KeyState(v1={sorted(self.v1)!r}, v2={sorted(self.v2)!r})"


class Vault:
    """The single point of encryption and decryption (Vault's barrier).

    ``seal``/``open`` are the recipe; everything underneath is in ``_aead``. Built
    from a :class:`Keyring` of local keys it seals format v1 (tools, tests); the
    ``KeyManager`` installs the keyring loaded from the database (format v2). Opening
    is a dict lookup and AES-GCM: no root key, KMS or HSM is ever called here.
    """

    __slots__ = ("_st", "keyring", "wraps")

    def __init__(self, keyring: Keyring | None = None) -> None:
        self.keyring = keyring
        #: data keys wrapped per keyring key since the manager last counted (nonce budget)
        self.wraps: Counter[str] = Counter()
        st = KeyState()
        if keyring is not None:
            st = KeyState(
                v1={kid: AESGCM(material) for kid, material in keyring.keys},
                v1_primary=keyring.primary_id,
            )
        self._st = st

    def __repr__(self) -> str:
        return f"Vault({self._st!r})"

    def install(self, state: KeyState) -> None:
        """Swap in a new key state (atomic for the event loop: one attribute)."""
        self._st = state

    @property
    def state(self) -> KeyState:
        return self._st

    @property
    def primary_key_id(self) -> str:
        st = self._st
        if st.shared is not None:
            return st.shared.current(time.time())
        if st.v1_primary is None:
            raise KeysUnavailable("no key is loaded")
        return st.v1_primary

    def derive_key(self, purpose: bytes, length: int = 32) -> bytes:
        """A key for ``purpose`` (e.g. ``b"ui-session"``), HKDF-SHA256.

        From the keyring's derivation secret, which keeps its value through root and
        keyring rotation (so audit chains and UI sessions survive a rotation); a vault
        built from local keys only derives from its first key (as before the keyring,
        which is also the value the derivation secret takes when a database moves over).
        """
        st = self._st
        if st.derive is not None:
            material = st.derive
        elif self.keyring is not None:
            material = self.keyring.keys[0][1]
        else:
            raise KeysUnavailable("no key is loaded")
        return _hkdf(material, purpose, length)

    def derived_keys(self, purpose: bytes) -> list[tuple[str, bytes]]:
        """(label, key) for ``purpose``: the current one first, then one per local v1 key
        (what older data may still be signed with)."""
        out = [("keyring", self.derive_key(purpose))]
        if self.keyring is not None:
            for kid, material in self.keyring.keys:
                k = _hkdf(material, purpose, 32)
                if all(k != have for _, have in out):
                    out.append((kid, k))
        return out

    def _target(self, aad: bytes) -> tuple[str, AESGCM, int]:
        st = self._st
        env = aad.partition(b"|")[0]
        ring = st.env_rings.get(env, st.shared)
        if ring is None:
            if env in st.env_rings:
                raise KeysUnavailable(
                    st.env_down.get(env, "the root key of this environment is unavailable")
                )
            if st.v1_primary is None:
                raise KeysUnavailable("no key is loaded")
            return st.v1_primary, st.v1[st.v1_primary], _aead.VERSION
        kid = ring.current(time.time())
        if kid in st.exhausted:
            raise KeysUnavailable(
                f"keyring key '{kid}' used up its nonce budget; rolling a new one"
            )
        kek = st.v2.get(kid)
        if kek is None:
            raise KeysUnavailable(st.down.get(kid, f"keyring key '{kid}' is not loaded"))
        return kid, kek, _aead.V2

    def seal(self, plaintext: bytes | str, aad: bytes) -> bytes:
        data = plaintext.encode() if isinstance(plaintext, str) else plaintext
        kid, kek, version = self._target(aad)
        if version == _aead.V2:
            self.wraps[kid] += 1
        return _aead.seal(kid, kek, data, aad, version)

    def open(self, blob: bytes, aad: bytes) -> bytes:
        """Raises ``DecryptionFailed`` (or its ``UnknownKeyId``), or ``KeysUnavailable``."""
        st = self._st
        try:
            return _aead.open_(st.v2 if blob[:1] == b"\x02" else st.v1, blob, aad)
        except UnknownKeyId:
            reason = st.down.get(_aead.header_kid(blob)) if blob[:1] == b"\x02" else None
            if reason is not None:
                raise KeysUnavailable(reason) from None
            raise

    def open_str(self, blob: bytes, aad: bytes) -> str:
        return self.open(blob, aad).decode()

    def key_id(self, blob: bytes) -> str:
        return _aead.header_kid(blob)

    def needs_rewrap(self, blob: bytes, aad: bytes | None = None) -> bool:
        """Whether ``blob`` is not under the key that seals for its place now."""
        kid, _, version = self._target(aad if aad is not None else b"")
        return blob[:1] != bytes((version,)) or _aead.header_kid(blob) != kid

    def rewrap(self, blob: bytes, aad: bytes) -> bytes:
        """The same value with its data key wrapped under the current key (idempotent)."""
        kid, kek, version = self._target(aad)
        if blob[:1] == bytes((version,)) and _aead.header_kid(blob) == kid:
            return blob
        st = self._st
        keks = st.v2 if blob[:1] == b"\x02" else st.v1
        try:
            out = _aead.rewrap(keks, kid, kek, blob, aad, version)
        except UnknownKeyId:
            reason = st.down.get(_aead.header_kid(blob)) if blob[:1] == b"\x02" else None
            if reason is not None:
                raise KeysUnavailable(reason) from None
            raise
        if version == _aead.V2:
            self.wraps[kid] += 1
        return out


def _hkdf(material: bytes, purpose: bytes, length: int) -> bytes:
    hkdf = HKDF(
        algorithm=hashes.SHA256(), length=length, salt=b"grantkeeper/derive/v1", info=purpose
    )
    return hkdf.derive(material)
