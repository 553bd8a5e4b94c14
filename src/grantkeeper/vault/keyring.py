"""The immutable keyring of key-encryption keys (Vault's keyring terms)."""

from __future__ import annotations

import base64
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from grantkeeper.config import Settings, parse_master_keys
from grantkeeper.errors import ConfigError

__all__ = ["Keyring", "generate_key_spec", "load_keyring"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, repr=False)
class Keyring:
    """Ordered key-encryption keys; the first one encrypts, all decrypt.

    Never modified in place: ``with_primary`` returns a new ring.
    """

    keys: tuple[tuple[str, bytes], ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise ConfigError("the keyring holds no key")

    @property
    def primary_id(self) -> str:
        return self.keys[0][0]

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.keys)

    def __repr__(self) -> str:  # never show key material
        return f"Keyring(ids={self.ids!r}, primary={self.primary_id!r})"

    @classmethod
    def parse(cls, raw: str) -> Keyring:
        return cls(tuple(parse_master_keys(raw)))


def generate_key_spec(kid: str) -> str:
    """A new ``id:base64`` master key entry."""
    return f"{kid}:{base64.b64encode(os.urandom(32)).decode()}"


def load_keyring(settings: Settings) -> Keyring:
    """From ``GRANTKEEPER_MASTER_KEYS``, or (SQLite development only) the key file.

    The key file is created on first use with mode 0600 and a loud warning.
    """
    if settings.master_keys is not None:
        return Keyring.parse(settings.master_keys.get_secret_value())
    path = settings.resolved_key_file()
    if path is None:
        raise ConfigError("GRANTKEEPER_MASTER_KEYS is required for this database")
    legacy = settings.legacy_key_file()
    if not path.exists() and legacy is not None and legacy.exists():
        # renamed, never regenerated: a new key would strand every stored token
        legacy.rename(path)
        log.warning("moved the development key file %s to %s", legacy, path)
    if path.exists():
        return Keyring.parse(path.read_text().strip())
    path.parent.mkdir(parents=True, exist_ok=True)
    spec = generate_key_spec("dev1")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(spec + "\n")
    log.warning(
        "GRANTKEEPER_MASTER_KEYS is not set: generated a DEVELOPMENT key file at %s. "
        "Losing it loses every stored token; set GRANTKEEPER_MASTER_KEYS in production.",
        Path(path).resolve(),
    )
    return Keyring.parse(spec)
