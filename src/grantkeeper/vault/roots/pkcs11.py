"""A root key in an HSM over PKCS#11: ``id:pkcs11:token=<label>;object=<key label>``.

The key is an AES key object inside the token (created non-extractable, see
docs/operations.md); wrapping is AES-GCM computed by the HSM (``CKM_AES_GCM``) with
a random 96-bit IV and the encryption context as associated data:
``iv:12 | ciphertext || tag:16``. The module is ``GRANTKEEPER_PKCS11_MODULE``, the
user PIN ``GRANTKEEPER_PKCS11_PIN`` (or ``pin-value`` in the URI's query).

python-pkcs11 is synchronous: calls run in a worker thread, one at a time per
module (a session per call keeps a restarted HSM usable without a restart here).
Destroying the key object in the token is a real crypto-shred: what its keyring
wrapped can never be opened again.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

from grantkeeper.config import pkcs11_attrs
from grantkeeper.errors import RootKeyUnavailable
from grantkeeper.vault.roots import context_bytes

__all__ = ["Pkcs11Root"]

_LIBS: dict[str, Any] = {}
_LIBS_LOCK = threading.Lock()


def _lib(path: str) -> Any:
    """One loaded module per path per process (PKCS#11 ``C_Initialize`` happens once)."""
    import pkcs11

    with _LIBS_LOCK:
        if path not in _LIBS:
            _LIBS[path] = pkcs11.lib(path)
        return _LIBS[path]


class Pkcs11Root:
    backend = "pkcs11"

    def __init__(
        self, root_id: str, uri: str, *, module: str | None, pin: str | None, timeout: float
    ) -> None:
        self.id = root_id
        self.uri = uri
        attrs = pkcs11_attrs(uri)
        query = parse_qs(uri.partition("?")[2])
        self._token = attrs["token"]
        self._label = attrs.get("object")
        self._key_id = bytes.fromhex(attrs["id"].replace("%", "")) if "id" in attrs else None
        self._module = module or next(iter(query.get("module-path", [])), None)
        self._pin = pin or next(iter(query.get("pin-value", [])), None)
        self._timeout = timeout
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Pkcs11Root({self.id!r}, token={self._token!r}, object={self._label!r})"

    def describe(self) -> str:
        return f"PKCS#11 token '{self._token}' object '{self._label or self._key_id!r}'"

    def _err(self, reason: str, what: str) -> RootKeyUnavailable:
        return RootKeyUnavailable(
            self.id,
            self.backend,
            reason,
            f"root key '{self.id}' (pkcs11, {self.describe()}) {what}",
        )

    def _run(self, encrypt: bool, data: bytes, aad: bytes) -> bytes:
        if not self._module:
            raise self._err("unreachable", "needs GRANTKEEPER_PKCS11_MODULE (the HSM's library)")
        try:
            import pkcs11
            from pkcs11 import GCMParams, KeyType, Mechanism, ObjectClass
            from pkcs11 import exceptions as px
        except ImportError:
            raise self._err(
                "unreachable", "needs python-pkcs11: pip install 'grantkeeper[pkcs11]'"
            ) from None
        with self._lock:
            try:
                token = _lib(self._module).get_token(token_label=self._token)
                with token.open(user_pin=self._pin) as session:
                    kw: dict[str, Any] = {
                        "key_type": KeyType.AES,
                        "object_class": ObjectClass.SECRET_KEY,
                    }
                    if self._label is not None:
                        kw["label"] = self._label
                    if self._key_id is not None:
                        kw["id"] = self._key_id
                    key = session.get_key(**kw)
                    if encrypt:
                        iv = os.urandom(12)
                        return iv + bytes(
                            key.encrypt(
                                data,
                                mechanism=Mechanism.AES_GCM,
                                mechanism_param=GCMParams(iv, aad, 128),
                            )
                        )
                    return bytes(
                        key.decrypt(
                            data[12:],
                            mechanism=Mechanism.AES_GCM,
                            mechanism_param=GCMParams(data[:12], aad, 128),
                        )
                    )
            except (px.NoSuchKey, px.MultipleObjectsReturned):
                raise self._err("denied", "is not in the token (destroyed?)") from None
            except (px.NoSuchToken, px.TokenNotPresent, px.TokenNotRecognised, px.DeviceRemoved):
                raise self._err("unreachable", "token is not present") from None
            except (
                px.PinIncorrect,
                px.PinExpired,
                px.PinLocked,
                px.PinInvalid,
                px.UserNotLoggedIn,
                px.UserPinNotInitialized,
            ):
                raise self._err("denied", "refused: PIN or key permissions") from None
            except (
                px.EncryptedDataInvalid,
                px.EncryptedDataLenRange,
                px.FunctionFailed,
                px.DataInvalid,
                px.DataLenRange,
            ):
                raise self._err("wrong_key", "did not open the keyring") from None
            except (pkcs11.PKCS11Error, OSError, RuntimeError) as exc:
                raise self._err("unreachable", f"failed ({type(exc).__name__})") from None

    async def _call(self, encrypt: bool, data: bytes, context: Mapping[str, str]) -> bytes:
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(self._run, encrypt, data, context_bytes(context)), self._timeout
            )
        except TimeoutError:
            raise self._err("unreachable", "did not answer in time") from None

    async def wrap(self, plaintext: bytes, context: Mapping[str, str]) -> bytes:
        return await self._call(True, plaintext, context)

    async def unwrap(self, blob: bytes, context: Mapping[str, str]) -> bytes:
        return await self._call(False, blob, context)
