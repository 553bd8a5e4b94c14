"""docs/http-api.md is generated from the OpenAPI schema and must be up to date."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_http_docs", ROOT / "scripts" / "gen_http_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_http_docs_are_up_to_date() -> None:
    gen = _generator()
    expected = gen.render(gen.openapi())
    current = (ROOT / "docs" / "http-api.md").read_text(encoding="utf-8")
    assert current == expected, "docs/http-api.md is stale: run python scripts/gen_http_docs.py"


def test_every_endpoint_is_documented() -> None:
    gen = _generator()
    spec = gen.openapi()
    text = (ROOT / "docs" / "http-api.md").read_text(encoding="utf-8")
    for path, item in spec["paths"].items():
        for method in item:
            assert f"### `{method.upper()} {path}`" in text


def test_operations_lists_every_setting() -> None:
    from grantkeeper.config import Settings

    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    missing = [name for name in Settings.model_fields if f"`GRANTKEEPER_{name.upper()}`" not in text]
    assert not missing, f"docs/operations.md does not document: {missing}"
