"""Ports and adapters, as the source says it: the core (``sender``) never imports the
adapters (``sender_adapters``), which reach it only through their entry points; and the
adapters' private helpers (``sender_adapters._*``: the AWS client cache, the read-ahead
cache, the bucket-source base) are used by adapters alone."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imports(folder: Path) -> Iterator[tuple[str, str]]:
    """(file, imported module) for every import in every module under ``folder``."""
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                yield str(path.relative_to(ROOT)), name


def test_the_core_never_imports_the_adapters() -> None:
    offending = [
        (path, name)
        for path, name in _imports(ROOT / "sender")
        if name == "sender_adapters" or name.startswith("sender_adapters.")
    ]
    assert offending == []


def test_the_adapters_private_helpers_stay_among_the_adapters() -> None:
    outside = [
        (path, name)
        for folder in ("sender", "bench")
        for path, name in _imports(ROOT / folder)
        if name.startswith("sender_adapters._")
    ]
    assert outside == []


def test_the_check_sees_imports_at_all() -> None:
    # a walk that found nothing would make both tests above pass for the wrong reason
    found = {name for _, name in _imports(ROOT / "adapters")}
    assert "sender_adapters._aws" in found and "sender.errors" in found
