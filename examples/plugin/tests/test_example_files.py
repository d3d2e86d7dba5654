"""The example destination passes the sender's destination contract, and what it adds."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from sender_example_files import ExampleFilesDestination

from sender.errors import PermanentError
from sender.registry import adapter_class
from sender.testing import DestinationContract, make_encoded_chunk


def files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


class TestExampleFiles(DestinationContract):
    # the contract's fixtures: a destination, what arrived, and one that cannot deliver

    @pytest.fixture
    async def destination(self, tmp_path: Path) -> AsyncIterator[ExampleFilesDestination]:
        options = ExampleFilesDestination.Options(path=str(tmp_path / "out"))
        async with ExampleFilesDestination("files", options) as destination:
            yield destination

    @pytest.fixture
    def arrived(self, tmp_path: Path) -> Callable[[], list[bytes]]:
        out = tmp_path / "out"
        return lambda: [p.read_bytes() for p in files_in(out)] if out.exists() else []

    @pytest.fixture
    async def broken_destination(self, tmp_path: Path) -> AsyncIterator[ExampleFilesDestination]:
        (tmp_path / "a-file").write_text("a file where the folder should be")
        options = ExampleFilesDestination.Options(path=str(tmp_path / "a-file"))
        async with ExampleFilesDestination("files", options) as destination:
            yield destination

    # what this destination promises besides

    async def test_each_chunk_is_one_file_named_by_its_idempotency_key(
        self, destination: ExampleFilesDestination, tmp_path: Path
    ) -> None:
        chunk = make_encoded_chunk("7")

        receipt = await destination.deliver(chunk)

        assert receipt.location == str(tmp_path / "out" / chunk.idempotency_key)
        assert [p.name for p in files_in(tmp_path / "out")] == [chunk.idempotency_key]
        assert (tmp_path / "out" / chunk.idempotency_key).read_bytes() == chunk.payload

    async def test_other_bytes_under_a_key_already_written_are_refused_for_good(
        self, destination: ExampleFilesDestination, tmp_path: Path
    ) -> None:
        first = make_encoded_chunk("0", records=3)
        changed = make_encoded_chunk("0", records=4)  # same key, other records
        await destination.deliver(first)

        with pytest.raises(PermanentError, match="other bytes") as refused:
            await destination.deliver(changed)

        assert refused.value.payload is False  # splitting would only write under new keys
        assert (tmp_path / "out" / first.idempotency_key).read_bytes() == first.payload
        assert len(files_in(tmp_path / "out")) == 1
        assert not any(p.name.endswith(".tmp") for p in (tmp_path / "out").iterdir())


def test_the_entry_point_names_the_class() -> None:
    assert adapter_class("destination", "example_files") is ExampleFilesDestination


def test_path_is_required() -> None:
    with pytest.raises(ValueError, match="path"):
        ExampleFilesDestination.Options.model_validate({"type": "example_files"})
