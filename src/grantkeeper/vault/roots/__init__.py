"""Root keys: what wraps the keyring (Vault's seals), behind one small interface.

A root key only ever wraps and unwraps the keyring's few keys (at start, on
rotation, and on the periodic re-check), never a stored value: token reads do not
call the KMS or HSM. Backends:

* ``local``: the 32 key bytes from ``GRANTKEEPER_MASTER_KEYS`` (AES-256-GCM here);
* ``aws-kms``: AWS KMS ``Encrypt``/``Decrypt`` with an encryption context (boto3,
  off the event loop; AWS's standard credential chain and endpoint settings);
* ``pkcs11``: an AES key inside an HSM (AES-GCM in the token, python-pkcs11).

Every failure is a :class:`~grantkeeper.errors.RootKeyUnavailable` naming the
root id and backend, never the key material.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from grantkeeper.config import RootSpec, Settings

__all__ = ["RootKey", "context_bytes", "open_root"]


class RootKey(Protocol):
    """A key that wraps the keyring; ``context`` is bound to each wrapping (AAD)."""

    @property
    def id(self) -> str: ...

    @property
    def backend(self) -> str: ...

    def describe(self) -> str:
        """Where the key lives, for logs and ``/readyz`` (no secret)."""
        ...

    async def wrap(self, plaintext: bytes, context: Mapping[str, str]) -> bytes: ...

    async def unwrap(self, blob: bytes, context: Mapping[str, str]) -> bytes: ...


def context_bytes(context: Mapping[str, str]) -> bytes:
    """A canonical encoding of an encryption context (for backends that take bytes)."""
    return "\n".join(f"{k}={context[k]}" for k in sorted(context)).encode()


def open_root(spec: RootSpec, settings: Settings) -> RootKey:
    """The backend for one ``GRANTKEEPER_MASTER_KEYS`` entry (nothing is contacted yet)."""
    if spec.backend == "aws-kms":
        from grantkeeper.vault.roots.aws_kms import AwsKmsRoot

        return AwsKmsRoot(spec.id, spec.locator, timeout=settings.kms_timeout)
    if spec.backend == "pkcs11":
        from grantkeeper.vault.roots.pkcs11 import Pkcs11Root

        return Pkcs11Root(
            spec.id,
            spec.locator,
            module=settings.pkcs11_module,
            pin=settings.pkcs11_pin.get_secret_value() if settings.pkcs11_pin else None,
            timeout=settings.kms_timeout,
        )
    from grantkeeper.vault.roots.local import LocalRoot

    return LocalRoot(spec.id, spec.material)
