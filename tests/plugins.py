"""A third party's adapter package, installed as pip would leave it (a module and a
``.dist-info`` with its entry points), to test what the core asks of adapters it does not
know: declared formats, served schemes, abilities it lacks.

``acme_sender``: destination ``acme_sink`` (takes ndjson, uncompressed or gzip; can neither
``check`` nor ``purge``), source ``acme`` (serves ``acme://`` URIs from a dict)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sender import registry

_MODULE = """
from typing import Literal

from sender.config import DestinationOptions, SourceOptions
from sender.errors import SourceError
from sender.model import ObjectInfo, Receipt
from sender.ports import Resource

RECEIVED = []


class AcmeSink(Resource):
    formats = frozenset({"ndjson"})
    codecs = frozenset({"none", "gzip"})

    class Options(DestinationOptions):
        type: Literal["acme_sink"] = "acme_sink"

    def __init__(self, name, options):
        self.name, self.options = name, options

    async def deliver(self, chunk):
        RECEIVED.append(chunk)
        return Receipt(location=f"acme://{self.name}/{chunk.chunk_id}")


class AcmeSource(Resource):
    schemes = frozenset({"acme"})

    class Options(SourceOptions):
        type: Literal["acme"] = "acme"

    def __init__(self, name, options):
        self.name, self.options = name, options

    async def list(self, uri):
        raise SourceError(f"{uri}: acme holds nothing")

    async def open(self, obj):
        raise SourceError(obj.uri)
        yield b""

    async def read_range(self, obj, start, length):
        raise SourceError(obj.uri)
"""

_ENTRY_POINTS = """\
[sender.destinations]
acme_sink = acme_sender:AcmeSink

[sender.sources]
acme = acme_sender:AcmeSource
"""


def write_plugin(folder: Path) -> Path:
    """Install ``acme_sender`` under ``folder``; put ``folder`` on ``sys.path`` (or
    ``PYTHONPATH``) to use it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "acme_sender.py").write_text(_MODULE)
    info = folder / "acme_sender-1.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-sender\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(_ENTRY_POINTS)
    return folder


@pytest.fixture
def acme_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``acme_sender`` installed for this test only; its folder (for a subprocess's
    ``PYTHONPATH``)."""
    folder = write_plugin(tmp_path / "site-packages")
    monkeypatch.syspath_prepend(str(folder))
    importlib.invalidate_caches()
    registry._load.cache_clear()
    yield folder
    registry._load.cache_clear()
    sys.modules.pop("acme_sender", None)
