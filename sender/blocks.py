"""Blocks of records: what every input reader hands on (NDJSON lines and the bad records
met on the way), and where each line came from."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .chunker import lines_size
from .model import BadRecord

__all__ = ["RecordBlock", "consecutive_lines", "numbered_lines"]


@dataclass(slots=True)
class RecordBlock:
    """Good records as NDJSON lines, and the bad ones met on the way.

    ``lines`` is a ``Lines`` buffer for JSONL and Parquet (no object per record), a list for
    CSV; both are sequences of lines. ``size`` and ``records`` never split a buffer."""

    lines: Sequence[bytes]
    bad: list[BadRecord] = field(default_factory=list)
    # where good line i came from ("part-00003.json:1207"), for errors found later (a field
    # that does not cast, a missing diff key)
    locate: Callable[[int], str] = field(default=lambda _i: "")
    format: str = "jsonl"  # what the lines were read from: jsonl, csv or parquet

    @property
    def size(self) -> int:
        """Bytes of the good records, without newlines."""
        return lines_size(self.lines)

    @property
    def records(self) -> int:
        """Good and bad records."""
        return len(self.lines) + len(self.bad)


def consecutive_lines(name: str, first: int) -> Callable[[int], str]:
    return lambda index: f"{name}:{first + index}"


def numbered_lines(name: str, numbers: Sequence[int]) -> Callable[[int], str]:
    return lambda index: f"{name}:{numbers[index]}"
