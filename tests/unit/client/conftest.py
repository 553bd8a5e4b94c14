"""Fixtures for the SDK tests; the fakes live in sdk_fakes.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sdk_fakes import API_KEY, BASE_URL, FakeVault, Sleeps

from grantkeeper.client import AsyncClient, Client


@pytest.fixture
def vault() -> FakeVault:
    return FakeVault()


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def client(vault: FakeVault, sleeps: Sleeps) -> Iterator[Client]:
    with Client(BASE_URL, API_KEY, transport=vault.transport(), sleep=sleeps) as c:
        yield c


@pytest.fixture
def aclient_factory(vault: FakeVault, sleeps: Sleeps) -> Callable[..., Any]:
    def make(**kwargs: Any) -> AsyncClient:
        return AsyncClient(
            BASE_URL, API_KEY, transport=vault.transport(), sleep=sleeps.asleep, **kwargs
        )

    return make
