"""Encryption at rest. Use ``Vault.seal``/``Vault.open``; ``_aead`` is hazmat."""

from grantkeeper.vault.envelope import KeyState, Vault, aad_for
from grantkeeper.vault.keyring import Keyring, generate_key_spec, load_keyring

__all__ = ["KeyState", "Keyring", "Vault", "aad_for", "generate_key_spec", "load_keyring"]
