"""docs/providers.md and docs/provider-schema.json are generated and must be up to date."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from grantkeeper.providers import load_catalog

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "scripts" / "gen_provider_docs.py"


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_provider_docs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_provider_docs", module)
    spec.loader.exec_module(module)
    return module


def test_committed_docs_match_the_generator() -> None:
    gen = load_generator()
    for path, text in gen.outputs().items():
        assert path.exists(), f"{path} is missing: run scripts/gen_provider_docs.py"
        assert path.read_text(encoding="utf-8") == text, (
            f"{path.name} is stale: run scripts/gen_provider_docs.py"
        )


def test_check_mode_passes() -> None:
    assert load_generator().main(["--check"]) == 0


def test_docs_list_every_provider_with_its_quirks_and_sources() -> None:
    text = (ROOT / "docs" / "providers.md").read_text(encoding="utf-8")
    for spec in load_catalog().all():
        assert f"\n### {spec.name}\n" in text
        assert f"| [{spec.name}](#{spec.name}) |" in text
        for quirk in spec.quirks:
            assert f"**{quirk.id}**" in text
            assert f"[source]({quirk.source})" in text
        for url in spec.sources:
            assert f"<{url}>" in text


def test_duration_formatting() -> None:
    gen = load_generator()
    assert gen.duration(7776000) == "90 d"
    assert gen.duration(7200) == "2 h"
    assert gen.duration(1800) == "30 min"
    assert gen.duration(61) == "61 s"
