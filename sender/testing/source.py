"""The contract every ``Source`` must pass, built-in or third-party.

Subclass ``SourceContract`` in a test module and provide two fixtures:

- ``source``: an opened source (``async with``), a fresh one per test. The suite closes it
  itself in the tests about ``aclose``; it must tolerate being closed again afterwards.
- ``seed``: a function ``seed(objects) -> uri`` (plain or ``async``) that writes ``objects``
  — a mapping of relative keys (``"part-0.jsonl"``, ``"nested/x"``, ``"_SUCCESS"``) to bytes
  — under a fresh, empty location the source can read, and returns that location's URI
  without a trailing slash (``s3://bucket/prefix``, ``/tmp/x/batch``).

::

    import pytest
    from sender.testing import SourceContract
    from acme_source import AcmeSource

    @pytest.fixture
    async def source():
        async with AcmeSource("acme", AcmeSource.Options(type="acme")) as source:
            yield source

    @pytest.fixture
    def seed(acme_bucket):
        def write(objects):
            for key, data in objects.items():
                acme_bucket.put(f"batch/{key}", data)
            return f"acme://{acme_bucket.name}/batch"
        return write

    class TestAcmeSource(SourceContract):
        pass

The suite needs pytest-asyncio (the class carries ``pytest.mark.asyncio``). ``max_piece``
is the largest piece ``open`` may yield: the default read size of ``SourceOptions``; a
subclass whose source is configured otherwise sets it. For a URI with an authority
(``scheme://bucket/...``) the suite also reads from a bucket that does not exist, by
replacing the bucket name with ``missing_bucket``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import pytest

from ..errors import AdapterClosed, SourceError
from ..model import ObjectInfo
from ..ports import ServesSchemes, Source

__all__ = ["SourceContract"]

MiB = 1024 * 1024


async def _seeded(seed: Any, objects: Mapping[str, bytes]) -> str:
    uri = seed(dict(objects))
    if inspect.isawaitable(uri):
        uri = await uri
    return str(uri).rstrip("/")


async def _read_all(source: Any, obj: ObjectInfo) -> list[bytes]:
    return [bytes(piece) async for piece in source.open(obj)]


@pytest.mark.asyncio
class SourceContract:
    """What the core relies on from any ``Source``. Needs ``source`` and ``seed`` (module)."""

    max_piece: int = MiB
    missing_bucket: str = "sender-contract-no-such-bucket"

    async def test_source_implements_the_port(self, source: Any) -> None:
        assert isinstance(source, Source)

    async def test_the_source_serves_the_scheme_of_its_uris(self, source: Any, seed: Any) -> None:
        base = await _seeded(seed, {"part-0.jsonl": b"{}\n"})

        # the class declares it: a batch URI goes to the source of its scheme ("" a path)
        assert isinstance(type(source), ServesSchemes)
        assert urlsplit(base).scheme in type(source).schemes

    async def test_listing_is_every_object_sorted_by_uri_markers_and_hidden_files_too(
        self, source: Any, seed: Any
    ) -> None:
        objects = {
            "part-00001.jsonl": b'{"id": 2}\n',
            "part-00000.jsonl": b'{"id": 1}\n',
            "_SUCCESS": b"",
            ".part-00000.jsonl.crc": b"crc",
            "_committed_123": b"{}",
            "nested/part-00002.jsonl": b'{"id": 3}\n',
        }
        base = await _seeded(seed, objects)

        listed = await source.list(base)

        assert [o.uri for o in listed] == sorted(f"{base}/{key}" for key in objects)
        assert {o.uri: o.size for o in listed} == {
            f"{base}/{key}": len(data) for key, data in objects.items()
        }
        assert await source.list(base + "/") == listed  # a trailing slash changes nothing

    async def test_listing_is_deterministic_and_versions_are_stable(
        self, source: Any, seed: Any
    ) -> None:
        base = await _seeded(seed, {f"part-{i:05d}.jsonl": b"x" * i for i in range(12)})

        first = await source.list(base)
        again = await source.list(base)

        assert first == again  # same URIs, sizes and versions
        assert [o.name for o in first] == [f"part-{i:05d}.jsonl" for i in range(12)]

    async def test_a_uri_naming_one_object_lists_that_object(self, source: Any, seed: Any) -> None:
        base = await _seeded(seed, {"one.jsonl": b'{"id": 1}\n', "two.jsonl": b"{}\n"})

        (one,) = await source.list(f"{base}/one.jsonl")

        assert (one.uri, one.size) == (f"{base}/one.jsonl", 10)

    async def test_open_streams_the_bytes_in_bounded_pieces(self, source: Any, seed: Any) -> None:
        data = bytes(range(256)) * (self.max_piece * 5 // 2 // 256) + b"tail"
        base = await _seeded(seed, {"big.bin": data})
        (obj,) = await source.list(f"{base}/big.bin")

        pieces = await _read_all(source, obj)

        assert b"".join(pieces) == data
        assert len(pieces) >= 3  # never the object whole
        assert max(len(p) for p in pieces) <= self.max_piece

    async def test_an_empty_object_streams_nothing(self, source: Any, seed: Any) -> None:
        base = await _seeded(seed, {"_SUCCESS": b""})
        (obj,) = await source.list(f"{base}/_SUCCESS")

        assert b"".join(await _read_all(source, obj)) == b""

    async def test_read_range_reads_from_anywhere_and_less_at_the_end(
        self, source: Any, seed: Any
    ) -> None:
        data = bytes(range(256)) * 64
        base = await _seeded(seed, {"data.parquet": data})
        (obj,) = await source.list(f"{base}/data.parquet")

        assert await source.read_range(obj, 0, 4) == data[:4]
        assert await source.read_range(obj, 1000, 300) == data[1000:1300]
        assert await source.read_range(obj, len(data) - 8, 8) == data[-8:]
        assert await source.read_range(obj, len(data) - 3, 100) == data[-3:]

    async def test_a_missing_path_is_a_source_error(self, source: Any, seed: Any) -> None:
        base = await _seeded(seed, {"part-0.jsonl": b"{}\n"})

        with pytest.raises(SourceError):
            await source.list(f"{base}-missing")
        with pytest.raises(SourceError):
            await source.list(f"{base}/no-such-object.jsonl")

    async def test_an_object_gone_since_listing_is_a_source_error(
        self, source: Any, seed: Any
    ) -> None:
        base = await _seeded(seed, {"part-0.jsonl": b"{}\n"})
        gone = ObjectInfo(f"{base}/deleted.jsonl", 3, "")

        with pytest.raises(SourceError):
            await _read_all(source, gone)
        with pytest.raises(SourceError):
            await source.read_range(gone, 0, 3)

    async def test_a_missing_bucket_is_a_source_error(self, source: Any, seed: Any) -> None:
        base = await _seeded(seed, {"part-0.jsonl": b"{}\n"})
        parts = urlsplit(base)
        if not parts.netloc or parts.scheme == "file":
            pytest.skip("the source's URIs name no bucket")
        elsewhere = parts._replace(netloc=self.missing_bucket).geturl()

        with pytest.raises(SourceError):
            await source.list(elsewhere)
        with pytest.raises(SourceError):
            await _read_all(source, ObjectInfo(f"{elsewhere}/part-0.jsonl", 3, ""))

    async def test_aclose_is_idempotent_and_a_closed_source_raises_adapter_closed(
        self, source: Any, seed: Any
    ) -> None:
        base = await _seeded(seed, {"part-0.jsonl": b'{"id": 1}\n'})
        (obj,) = await source.list(f"{base}/part-0.jsonl")
        assert await source.read_range(obj, 0, 4) == b'{"id'

        await source.aclose()
        await source.aclose()

        with pytest.raises(AdapterClosed, match="closed"):
            await source.list(base)
        with pytest.raises(AdapterClosed):
            await _read_all(source, obj)
        with pytest.raises(AdapterClosed):
            await source.read_range(obj, 0, 4)  # not even from what it read before

    async def test_a_source_closed_before_first_use_raises_adapter_closed(
        self, source: Any, seed: Any
    ) -> None:
        base = await _seeded(seed, {"part-0.jsonl": b'{"id": 1}\n'})
        obj = ObjectInfo(f"{base}/part-0.jsonl", 10)

        await source.aclose()

        with pytest.raises(AdapterClosed):
            await source.list(base)
        with pytest.raises(AdapterClosed):
            await _read_all(source, obj)
        with pytest.raises(AdapterClosed):
            await source.read_range(obj, 0, 4)
