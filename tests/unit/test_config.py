"""Settings fail closed, with one-line messages that never contain key material."""

from __future__ import annotations

import base64
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from grantkeeper.config import Settings, parse_master_keys
from grantkeeper.errors import ConfigError
from grantkeeper.vault import Keyring, load_keyring

PG = "postgresql+asyncpg://gk@127.0.0.1:5432/gk"


def b64(n: int, fill: int = 7) -> str:
    return base64.b64encode(bytes([fill]) * n).decode()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for k in list(os.environ):
        if k.startswith("GRANTKEEPER_"):
            monkeypatch.delenv(k)
    yield


# ------------------------------------------------------------------ master key parsing


def test_parse_master_keys_order_and_whitespace() -> None:
    keys = parse_master_keys(f" k2:{b64(32, 2)} , k1:{b64(32, 1)} ,")
    assert [k for k, _ in keys] == ["k2", "k1"]
    assert keys[0][1] == bytes([2]) * 32


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ("prod-2026:" + "A" * 10 + "!!", "prod-2026"),  # not base64
        ("prod-2026:" + b64(16), "prod-2026"),  # 16 bytes
        ("prod-2026:" + b64(33), "prod-2026"),  # 33 bytes
        ("prod-2026:" + b64(32) + ",prod-2026:" + b64(32, 9), "prod-2026"),  # twice
    ],
)
def test_key_errors_name_the_id_never_the_material(raw: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_master_keys(raw)
    msg = str(info.value)
    assert needle in msg
    assert "\n" not in msg
    for part in raw.split(","):
        material = part.partition(":")[2]
        assert material not in msg


@pytest.mark.parametrize("raw", [b64(32), "bad id:" + b64(32), ":" + b64(32), "x" * 33 + ":" + b64(32)])
def test_malformed_entry_does_not_echo_the_entry(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_master_keys(raw)
    assert b64(32) not in str(info.value)
    assert "entry 1" in str(info.value)


@pytest.mark.parametrize("raw", ["", " ", ",", " , , "])
def test_empty_key_list_refused(raw: str) -> None:
    with pytest.raises(ConfigError):
        parse_master_keys(raw)


def test_malformed_master_keys_refuse_settings() -> None:
    with pytest.raises(ConfigError) as info:
        Settings(master_keys=f"k1:{b64(31)}")  # type: ignore[arg-type]
    assert "k1" in str(info.value) and b64(31) not in str(info.value)


def test_master_keys_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRANTKEEPER_MASTER_KEYS", f"k9:{b64(32)}")
    s = Settings()
    assert load_keyring(s).ids == ("k9",)
    assert b64(32) not in repr(s) and b64(32) not in str(s.model_dump())


# ------------------------------------------------------------------ fail closed


def test_postgres_without_master_keys_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        Settings(database_url=PG)
    assert "GRANTKEEPER_MASTER_KEYS" in str(info.value)


def test_postgres_without_master_keys_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRANTKEEPER_DATABASE_URL", PG)
    with pytest.raises(ConfigError):
        Settings()


def test_postgres_with_master_keys_is_fine() -> None:
    s = Settings(database_url=PG, master_keys=f"k1:{b64(32)}")  # type: ignore[arg-type]
    assert not s.is_sqlite and s.sqlite_path() is None and s.resolved_key_file() is None


def test_lease_must_exceed_http_timeout() -> None:
    with pytest.raises(ConfigError) as info:
        Settings(refresh_lease_seconds=10, http_timeout=10)
    assert "GRANTKEEPER_REFRESH_LEASE_SECONDS" in str(info.value)
    with pytest.raises(ConfigError):
        Settings(refresh_lease_seconds=5, http_timeout=30)
    assert Settings(refresh_lease_seconds=11, http_timeout=10).refresh_lease_seconds == 11


@pytest.mark.parametrize("url", ["ftp://x.example", "example.com", "http://", "javascript:alert(1)"])
def test_public_url_must_be_absolute_http(url: str) -> None:
    with pytest.raises(ValidationError):
        Settings(public_url=url)


def test_public_url_trailing_slash_and_callback() -> None:
    s = Settings(public_url="https://vault.example.com/")
    assert s.public_url == "https://vault.example.com"
    assert s.callback_url == "https://vault.example.com/oauth/callback"


@pytest.mark.parametrize(("name", "value"), [("db_pool_size", 0), ("max_body_bytes", 10), ("http_timeout", 0)])
def test_out_of_range_values_refused(name: str, value: object) -> None:
    with pytest.raises(ValidationError):
        Settings(**{name: value})  # type: ignore[arg-type]


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(ValidationError):
        s.public_url = "https://x.example"  # type: ignore[misc]


# ------------------------------------------------------------------ development key file


def test_sqlite_dev_key_file_created_once_with_mode_0600(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "data" / "gk.db"
    s = Settings(database_url=f"sqlite+aiosqlite:///{db}")
    key_file = s.resolved_key_file()
    assert key_file == db.with_name("gk.db.key")
    with caplog.at_level(logging.WARNING):
        ring = load_keyring(s)
    assert "DEVELOPMENT key file" in caplog.text
    assert key_file is not None and key_file.exists()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    material = key_file.read_text().strip().partition(":")[2]
    assert material not in caplog.text
    # reused, not regenerated
    again = load_keyring(s)
    assert again.keys == ring.keys


def test_corrupt_key_file_refuses_to_start(tmp_path: Path) -> None:
    kf = tmp_path / "gk.keys"
    kf.write_text("dev1:not-base64!!\n")
    s = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'gk.db'}", key_file=kf)
    with pytest.raises(ConfigError) as info:
        load_keyring(s)
    assert "dev1" in str(info.value) and "not-base64" not in str(info.value)


def test_memory_sqlite_without_keys_has_no_key_file() -> None:
    s = Settings(database_url="sqlite+aiosqlite:///:memory:")
    with pytest.raises(ConfigError):
        load_keyring(s)


def test_master_keys_take_precedence_over_key_file(tmp_path: Path) -> None:
    s = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'gk.db'}",
        master_keys=f"env1:{b64(32)}",  # type: ignore[arg-type]
    )
    assert load_keyring(s).ids == ("env1",)
    assert not (tmp_path / "gk.db.key").exists()


def test_keyring_repr_hides_material() -> None:
    ring = Keyring.parse(f"a:{b64(32, 65)}")
    assert "AAAA" not in repr(ring) and b64(32, 65) not in repr(ring)


def test_root_key_entries_of_every_backend_parse() -> None:
    from grantkeeper.config import parse_root_keys

    arn = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    roots = parse_root_keys(f"k1:aws-kms:{arn}, h1:pkcs11:token=acc;object=root, l1:{b64(32, 7)}")
    assert [(r.id, r.backend) for r in roots] == [("k1", "aws-kms"), ("h1", "pkcs11"), ("l1", "local")]
    assert roots[0].locator == arn and roots[1].locator == "pkcs11:token=acc;object=root"
    assert "material" not in repr(roots[2]) and b64(32, 7) not in repr(roots)


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ("k1:aws-kms:not-an-arn", "k1"),
        ("h1:pkcs11:token=acc", "h1"),
        ("h1:pkcs11:object=root", "h1"),
        ("h1:pkcs11:token", "h1"),
    ],
)
def test_malformed_kms_and_hsm_entries_name_the_key(raw: str, named: str) -> None:
    from grantkeeper.config import parse_root_keys

    with pytest.raises(ConfigError, match=named):
        parse_root_keys(raw)
