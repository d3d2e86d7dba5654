"""Chaos suite fixtures; at the end of the session the figures go to var/chaos/."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from sender.config import AppConfig, load_config
from tests.chaos.checks import recorded
from tests.chaos.receiver import ChaosReceiver
from tests.chaos.report import FIGURES, render, save


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    rows = [f.to_dict() for f in recorded()]
    if rows:
        merged = save(rows)
        FIGURES.with_name("reliability.md").write_text(render(merged))


@pytest.fixture
async def chaos_receiver() -> AsyncIterator[ChaosReceiver]:
    async with ChaosReceiver() as server:
        yield server


@pytest.fixture
async def fallback_receiver() -> AsyncIterator[ChaosReceiver]:
    async with ChaosReceiver() as server:
        yield server


@pytest.fixture
def chaos_config(tmp_path: Path) -> Callable[[str], AppConfig]:
    """Write a TOML config (dedented) to ``tmp_path/sender.toml`` and load it."""

    def write(text: str) -> AppConfig:
        path = tmp_path / "sender.toml"
        path.write_text(textwrap.dedent(text))
        return load_config(path)

    return write
