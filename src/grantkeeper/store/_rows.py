"""Row -> record conversion shared by the store modules."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import RowMapping

__all__ = ["to_record"]

T = TypeVar("T")

_TUPLES = {"scopes", "return_urls", "integration_ids"}


def to_record(cls: type[T], row: RowMapping) -> T:
    values: dict[str, Any] = {}
    for k, v in row.items():
        if k in _TUPLES and isinstance(v, list):
            v = tuple(v)
        values[k] = v
    return cls(**values)
