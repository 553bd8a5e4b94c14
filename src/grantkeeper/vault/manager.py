"""The key hierarchy at run time: root keys -> the keyring (in the database) -> data keys.

Like Vault's barrier: a root key (local, AWS KMS, PKCS#11; ``vault.roots``) wraps the
keyring's keys, which are stored only wrapped (table ``keyring_keys``); at start the
keyring is unwrapped once and held in memory, and every value's data key is wrapped
under a keyring key. Token reads never call a root key.

* **Rings.** Environments without a root of their own share one ring, wrapped under
  the first ``GRANTKEEPER_MASTER_KEYS`` entry (``keys rotate`` moves it there). An
  environment created with ``--root-key`` has a ring of its own under that root: when
  that root is disabled, destroyed or unreachable, only that environment's keys are
  dropped (503 ``keys_unavailable``); the others go on.
* **Start.** Anything wrong with the shared ring (a root missing from the
  configuration, unreachable, or not the key that wrapped it) refuses to start with
  one line naming the key id and backend.
* **Re-check.** Every ``GRANTKEEPER_KEYRING_CHECK_INTERVAL`` seconds each ring's root
  is asked to unwrap again: a disabled tenant key takes effect, and a re-enabled one
  recovers, without a restart. New keyring keys (rolled or rotated by another
  process) are loaded then; a new key seals only from its ``activate_at``, two
  intervals later, so every process can open what it seals by then. A shared root
  that stops answering while running changes nothing: the keyring is in memory.
* **Nonce budget.** Every wrap under a keyring key is counted and added up in the
  database across processes; at ``GRANTKEEPER_KEK_MAX_WRAPS`` a new key is rolled
  (random 96-bit nonces: NIST SP 800-38D allows 2^32 per key).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.ext.asyncio import AsyncEngine

from grantkeeper.config import RootSpec, Settings, parse_root_keys
from grantkeeper.errors import ConfigError, GrantkeeperError, RootKeyUnavailable
from grantkeeper.store import keyring as store
from grantkeeper.store.db import reading
from grantkeeper.store.keyring import KeyringRow
from grantkeeper.vault.envelope import KeyState, Ring, Vault
from grantkeeper.vault.keyring import Keyring, load_keyring
from grantkeeper.vault.roots import RootKey, open_root

__all__ = ["KeyManager", "RootStatus"]

log = logging.getLogger(__name__)

SHARED = "*"  # the encryption-context name of the shared ring
#: the hard stop: a keyring key never wraps more than this (2^32 with a safety margin)
HARD_LIMIT = 2**32 - 2**20


@dataclass
class RootStatus:
    id: str
    backend: str
    where: str
    state: str = "unused"  # ok | unavailable | unused
    reason: str | None = None
    environments: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "backend": self.backend,
            "where": self.where,
            "state": self.state,
            **({"reason": self.reason} if self.reason else {}),
            "environments": sorted(self.environments),
        }


def _context(row_env: str | None, key_id: str) -> dict[str, str]:
    return {"grantkeeper:environment": row_env or SHARED, "grantkeeper:keyring-key": key_id}


def _new_id() -> str:
    return "kr" + secrets.token_hex(6)


class KeyManager:
    """Loads, re-checks, rolls and rotates the keyring; installs it into ``vault``."""

    def __init__(
        self, settings: Settings, specs: list[RootSpec], roots: Mapping[str, RootKey]
    ) -> None:
        self.settings = settings
        self.specs = specs
        self.roots = dict(roots)
        self.vault = Vault(_legacy_keyring(settings))
        self.status = {
            s.id: RootStatus(s.id, s.backend, self.roots[s.id].describe()) for s in specs
        }
        #: keyring key id -> unwrapped material
        self._material: dict[str, bytes] = {}
        self._rows: list[KeyringRow] = []
        self._totals: dict[str, int] = {}
        self._env_roots: dict[str, str] = {}
        self._env_down: dict[str, str] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyManager:
        if settings.master_keys is not None:
            specs = parse_root_keys(settings.master_keys.get_secret_value())
        else:  # the development key file (SQLite only)
            specs = [RootSpec(k, "local", material=m) for k, m in load_keyring(settings).keys]
        return cls(settings, specs, {s.id: open_root(s, settings) for s in specs})

    @property
    def first_root(self) -> RootKey:
        return self.roots[self.specs[0].id]

    @property
    def activation_delay(self) -> float:
        return 2 * self.settings.keyring_check_interval + 1

    # ------------------------------------------------------------------ start

    async def start(self, engine: AsyncEngine) -> None:
        """Unwrap the keyring (creating it on first use). Raises with one line naming the key
        id and backend when the shared ring cannot be opened: the process must not start."""
        await self._bootstrap(engine)
        await self.reload(engine, at_start=True)

    async def _bootstrap(self, engine: AsyncEngine) -> None:
        async with reading(engine) as conn:
            rows = await store.list_rows(conn)
            env_roots = await store.environment_roots(conn)
        have_shared = any(r.environment_id is None and r.purpose == "kek" for r in rows)
        have_derive = any(r.purpose == "derive" for r in rows)
        missing_envs = [
            e for e, root in env_roots.items() if not any(r.environment_id == e for r in rows)
        ]
        if have_shared and have_derive and not missing_envs:
            return
        async with engine.begin() as conn:
            await store.lock(conn)
            rows = await store.list_rows(conn)
            now = time.time()
            if not any(r.environment_id is None and r.purpose == "kek" for r in rows):
                await store.insert_row(
                    conn, await self._new_row(None, "kek", self.first_root, now, 0.0)
                )
            if not any(r.purpose == "derive" for r in rows):
                # continuity: before the keyring, derived keys came from the first local key
                legacy = self.vault.keyring
                secret = (
                    legacy.keys[0][1]
                    if legacy is not None and self.specs[0].backend == "local"
                    else None
                )
                await store.insert_row(
                    conn, await self._new_row(None, "derive", self.first_root, now, 0.0, secret)
                )
            for env in missing_envs:
                if not any(r.environment_id == env for r in rows):
                    root = self.roots.get(env_roots[env])
                    if root is not None:
                        await store.insert_row(
                            conn, await self._new_row(env, "kek", root, now, 0.0)
                        )

    async def _new_row(
        self,
        env: str | None,
        purpose: str,
        root: RootKey,
        now: float,
        activate_at: float,
        secret: bytes | None = None,
    ) -> KeyringRow:
        kid = _new_id()
        material = secret if secret is not None else os.urandom(32)
        wrapped = await root.wrap(material, _context(env, kid))
        self.status[root.id].state, self.status[root.id].reason = "ok", None
        self._material[kid] = material
        return KeyringRow(kid, env, purpose, root.id, wrapped, now, activate_at, None, 0)

    # ------------------------------------------------------------------ load / re-check

    async def reload(self, engine: AsyncEngine, *, at_start: bool = False) -> None:
        """Read the keyring, unwrap what is new, re-check each ring's root, install."""
        async with reading(engine) as conn:
            rows = await store.list_rows(conn)
            env_roots = await store.environment_roots(conn)
        self._rows = rows
        self._env_roots = env_roots
        self._totals.update({r.id: max(r.wraps, self._totals.get(r.id, 0)) for r in rows})
        for st in self.status.values():
            st.environments = [e for e, rid in env_roots.items() if rid == st.id]
        rings: dict[str | None, list[KeyringRow]] = {}
        for r in rows:
            if r.purpose == "kek" or (r.purpose == "derive" and r.environment_id is None):
                rings.setdefault(r.environment_id, []).append(r)
        env_down: dict[str, str] = {}
        fresh: dict[str, bytes] = {}
        for env, ring_rows in rings.items():
            try:
                await self._check_ring(env, ring_rows, fresh, recheck=not at_start)
            except (RootKeyUnavailable, ConfigError) as exc:
                if env is None:
                    if at_start or not self._material:
                        raise
                    # the shared root stopped answering: the keyring in memory goes on
                    log.error("keyring: %s; serving from the keyring in memory", exc.detail)
                    continue
                env_down[env] = exc.detail
                if env not in self._env_down:
                    log.error("environment %s: keys unavailable: %s", env, exc.detail)
        for env in set(self._env_down) - set(env_down):
            log.warning("environment %s: keys available again", env)
        self._env_down = env_down
        self._material.update(fresh)
        for env in env_down:  # drop what a disabled or destroyed root wrapped
            for r in rings.get(env, []):
                self._material.pop(r.id, None)
        self._install()

    async def _check_ring(
        self, env: str | None, rows: list[KeyringRow], out: dict[str, bytes], *, recheck: bool
    ) -> None:
        probe_done = False
        for r in rows:
            root = self.roots.get(r.root_key_id)
            if root is None:
                raise ConfigError(
                    f"keyring key '{r.id}' is wrapped under root key '{r.root_key_id}', "
                    "which is not in GRANTKEEPER_MASTER_KEYS"
                )
            status = self.status[root.id]
            if r.id in self._material and (probe_done or not recheck):
                continue
            try:
                out[r.id] = await root.unwrap(r.wrapped, _context(r.environment_id, r.id))
            except RootKeyUnavailable as exc:
                status.state, status.reason = "unavailable", exc.reason
                raise
            status.state, status.reason = "ok", None
            probe_done = True

    def _install(self) -> None:
        rows = [r for r in self._rows if r.id in self._material]
        v2 = {r.id: AESGCM(self._material[r.id]) for r in rows if r.purpose == "kek"}
        by_env: dict[str | None, list[tuple[float, str]]] = {}
        for r in rows:
            if r.purpose == "kek" and r.retired_at is None:
                by_env.setdefault(r.environment_id, []).append((r.activate_at, r.id))
        shared = Ring(tuple(sorted(by_env.pop(None, [])))) if None in by_env else None
        env_rings: dict[bytes, Ring | None] = {
            e.encode(): Ring(tuple(sorted(s))) for e, s in by_env.items() if e is not None
        }
        down: dict[str, str] = {}
        env_down: dict[bytes, str] = {}
        for env, reason in self._env_down.items():
            env_rings[env.encode()] = None
            env_down[env.encode()] = reason
        for env in self._env_roots:
            env_rings.setdefault(env.encode(), None)
            env_down.setdefault(env.encode(), f"the keyring of environment {env} is not loaded")
        for r in self._rows:
            if r.id not in self._material and r.environment_id is not None:
                down[r.id] = self._env_down.get(r.environment_id, "its root key is unavailable")
        derive = next(
            (
                self._material[r.id]
                for r in rows
                if r.purpose == "derive" and r.environment_id is None
            ),
            None,
        )
        old = self.vault.state
        self.vault.install(
            KeyState(
                v1=old.v1,
                v1_primary=old.v1_primary,
                v2=v2,
                shared=shared,
                env_rings=env_rings,
                down=down,
                env_down=env_down,
                derive=derive,
                exhausted=frozenset(k for k, n in self._totals.items() if n >= HARD_LIMIT),
            )
        )

    def environment_unavailable(self, environment_id: str) -> str | None:
        return self._env_down.get(environment_id)

    # ------------------------------------------------------------------ nonce budget

    async def count_wraps(self, engine: AsyncEngine) -> None:
        """Add this process's wrap counts to the database; roll keys near their budget."""
        counts = {k: n for k, n in self.vault.wraps.items() if n > 0}
        self.vault.wraps.subtract(counts)
        try:
            if counts:
                async with engine.begin() as conn:
                    self._totals = await store.add_wraps(conn, counts)
            else:  # nothing to add: no write transaction (SQLite's write lock) for nothing
                async with reading(engine) as conn:
                    self._totals = await store.add_wraps(conn, {})
        except Exception:
            self.vault.wraps.update(counts)  # counted next time
            raise
        now = time.time()
        limit = self.settings.kek_max_wraps
        current: dict[str | None, str] = {}
        st = self.vault.state
        if st.shared is not None:
            current[None] = st.shared.current(now)
        for env_b, ring in st.env_rings.items():
            if ring is not None:
                current[env_b.decode()] = ring.current(now)
        for env, kid in current.items():
            if self._totals.get(kid, 0) < limit:
                continue
            newest = max(
                (r for r in self._rows if r.environment_id == env and r.purpose == "kek"),
                key=lambda r: (r.activate_at, r.id),
            )
            if newest.id != kid:
                continue  # a successor is already waiting to activate
            root = self.roots.get(newest.root_key_id)
            if root is None:
                continue
            await self._roll(engine, env, root, now, kid)
        if any(n >= HARD_LIMIT for n in self._totals.values()):
            self._install()

    async def _roll(
        self, engine: AsyncEngine, env: str | None, root: RootKey, now: float, old: str
    ) -> None:
        async with engine.begin() as conn:
            await store.lock(conn)
            rows = await store.list_rows(conn)
            ring = [r for r in rows if r.environment_id == env and r.purpose == "kek"]
            if max(ring, key=lambda r: (r.activate_at, r.id)).id != old:
                return  # another process rolled it first
            row = await self._new_row(env, "kek", root, now, now + self.activation_delay)
            await store.insert_row(conn, row)
        log.warning(
            "keyring key %s reached its nonce budget (%d wraps): rolled %s (active in %.0f s)",
            old,
            self._totals.get(old, 0),
            row.id,
            self.activation_delay,
        )

    # ------------------------------------------------------------------ the periodic task

    async def run(self, engine: AsyncEngine, stop: asyncio.Event) -> None:
        """Re-check roots, load new keyring keys and count wraps until ``stop``."""
        interval = self.settings.keyring_check_interval
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), interval)
                return
            except TimeoutError:
                pass
            try:
                await self.count_wraps(engine)
                await self.reload(engine)
            except (GrantkeeperError, OSError) as exc:
                log.error("keyring re-check failed: %s", getattr(exc, "detail", type(exc).__name__))
            except Exception as exc:  # noqa: BLE001 - the database may be down; try again later
                log.error("keyring re-check failed: %s", type(exc).__name__)

    # ------------------------------------------------------------------ rotation

    async def rotate_keyring(self, engine: AsyncEngine) -> dict[str, Any]:
        """Rewrap every keyring key of the shared ring (and the derivation secret) under the
        first root, each environment ring under its environment's root, and add a new key
        to every ring (active after ``activation_delay``). Returns what it did."""
        now = time.time()
        rewrapped = 0
        new: list[str] = []
        activate_at = now + self.activation_delay
        async with engine.begin() as conn:
            await store.lock(conn)
            rows = await store.list_rows(conn)
            env_roots = await store.environment_roots(conn)
            rings: set[str | None] = set()
            for r in rows:
                target = (
                    self.roots.get(env_roots[r.environment_id])
                    if r.environment_id in env_roots
                    else self.first_root
                )
                if target is None:
                    continue
                if r.purpose == "kek":
                    rings.add(r.environment_id)
                if r.id not in self._material:
                    continue  # its root is unavailable: left as it is
                if r.root_key_id != target.id:
                    wrapped = await target.wrap(
                        self._material[r.id], _context(r.environment_id, r.id)
                    )
                    await store.set_wrapped(conn, r.id, target.id, wrapped)
                    rewrapped += 1
            for env in rings:
                if env is not None and env in self._env_down:
                    continue
                target = self.roots.get(env_roots[env]) if env is not None else self.first_root
                if target is None:
                    continue
                row = await self._new_row(env, "kek", target, now, activate_at)
                await store.insert_row(conn, row)
                new.append(row.id)
        return {"keyring_rewrapped": rewrapped, "new_keys": new, "activate_at": activate_at}

    async def retire_others(self, engine: AsyncEngine, keep: set[str]) -> list[str]:
        """Mark every keyring key not in ``keep`` retired (kept, wrapped: nothing is lost),
        in the rings that have a key in ``keep`` (a ring whose root was down keeps its keys)."""
        async with engine.begin() as conn:
            rows = await store.list_rows(conn)
            rings = {r.environment_id for r in rows if r.id in keep}
            ids = [
                r.id
                for r in rows
                if r.purpose == "kek"
                and r.retired_at is None
                and r.id not in keep
                and r.environment_id in rings
            ]
            await store.retire(conn, ids, time.time())
        return ids

    async def create_environment_ring(
        self, engine: AsyncEngine, environment_id: str, root_id: str
    ) -> str:
        """Give an environment its own root: a first keyring key wrapped under it."""
        root = self.roots.get(root_id)
        if root is None:
            raise ConfigError(f"root key '{root_id}' is not in GRANTKEEPER_MASTER_KEYS")
        now = time.time()
        row = await self._new_row(environment_id, "kek", root, now, 0.0)
        async with engine.begin() as conn:
            await store.set_environment_root(conn, environment_id, root_id)
            await store.insert_row(conn, row)
        return row.id

    def describe(self) -> list[dict[str, Any]]:
        return [self.status[s.id].as_dict() for s in self.specs]


def _legacy_keyring(settings: Settings) -> Keyring | None:
    """The local root keys: they open format-v1 values (databases from before the keyring)."""
    if settings.master_keys is not None:
        local = [
            (s.id, s.material)
            for s in parse_root_keys(settings.master_keys.get_secret_value())
            if s.backend == "local"
        ]
        return Keyring(tuple(local)) if local else None
    return load_keyring(settings)
