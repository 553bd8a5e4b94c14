"""Every SECURITY.md item maps to tests that exist (tests/security/README.md)."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAPPING = Path(__file__).with_name("README.md")
EXPECTED = (
    [f"C{i}" for i in range(1, 16)]
    + [f"P{i}" for i in range(1, 8)]
    + [f"R{i}" for i in range(1, 7)]
    + [f"A{i}" for i in range(1, 32)]
)
_ROW = re.compile(r"^\|\s*([CPRA]\d+)\s*\|(.*)\|\s*$")
_REF = re.compile(r"`([\w/.-]+\.py)::(\w+)`")


def _rows() -> dict[str, list[tuple[str, str]]]:
    rows: dict[str, list[tuple[str, str]]] = {}
    for line in MAPPING.read_text().splitlines():
        m = _ROW.match(line)
        if m:
            assert m.group(1) not in rows, f"{m.group(1)} listed twice"
            rows[m.group(1)] = _REF.findall(m.group(2))
    return rows


@cache
def _test_functions(path: str) -> frozenset[str]:
    tree = ast.parse((ROOT / path).read_text())
    return frozenset(
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")
    )


def test_every_item_has_a_test() -> None:
    rows = _rows()
    assert sorted(rows) == sorted(EXPECTED), set(EXPECTED) ^ set(rows)
    assert not [item for item, refs in rows.items() if not refs]


def test_every_named_test_exists() -> None:
    missing = []
    for item, refs in _rows().items():
        for path, name in refs:
            if not (ROOT / path).is_file() or name not in _test_functions(path):
                missing.append(f"{item}: {path}::{name}")
    assert not missing, "tests named in tests/security/README.md do not exist:\n" + "\n".join(missing)


def test_every_named_test_is_collected() -> None:
    """The named files are test modules pytest collects (under testpaths, test_*.py)."""
    for refs in _rows().values():
        for path, _ in refs:
            assert path.startswith("tests/") and Path(path).name.startswith("test_"), path
