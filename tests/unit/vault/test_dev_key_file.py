"""The development key file: named ``<db>.key``; an older ``<db>.keys`` is moved, never replaced."""

from __future__ import annotations

from pathlib import Path

from grantkeeper.config import Settings
from grantkeeper.vault import generate_key_spec, load_keyring


def settings_for(tmp_path: Path) -> Settings:
    return Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'grantkeeper.db'}")


def test_new_key_file_is_named_dot_key(tmp_path: Path) -> None:
    ring = load_keyring(settings_for(tmp_path))
    path = tmp_path / "grantkeeper.db.key"
    assert path.exists() and oct(path.stat().st_mode & 0o777) == "0o600"
    assert load_keyring(settings_for(tmp_path)).keys == ring.keys


def test_key_file_of_an_earlier_version_is_moved_not_regenerated(tmp_path: Path) -> None:
    spec = generate_key_spec("dev1")
    (tmp_path / "grantkeeper.db.keys").write_text(spec + "\n")
    ring = load_keyring(settings_for(tmp_path))
    assert ring.keys[0][1] == load_keyring(Settings(master_keys=spec)).keys[0][1]
    assert not (tmp_path / "grantkeeper.db.keys").exists()
    assert (tmp_path / "grantkeeper.db.key").read_text().strip() == spec
