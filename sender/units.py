"""Human units in config files: durations ("500ms", "30s"), sizes ("4MiB"), rates ("20/s")."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = ["Rate", "format_size", "parse_duration", "parse_rate", "parse_size"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(requests|records)?\s*/\s*(\d*)\s*(ms|s|m|h)\s*$")


def parse_duration(value: str | float | int) -> float:
    """Seconds from ``"500ms"``, ``"30s"``, ``"5m"``, ``"2h"``, ``"1d"`` or a bare number."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like '30s'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif not isinstance(value, str):
        # pydantic turns only ValueError into a key-path message; re.match would raise TypeError
        raise ValueError("expected a duration like '30s'")
    else:
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a duration (examples: '500ms', '30s', '5m', '1h')")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if not math.isfinite(seconds):  # TOML and YAML both spell inf and nan
        raise ValueError("must be a finite duration")
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


def parse_size(value: str | int) -> int:
    """Bytes from ``"4MiB"``, ``"512KB"``, ``"100"`` or a bare integer."""
    if isinstance(value, bool):
        raise ValueError("expected a size like '4MiB'")
    if isinstance(value, int):
        size = value
    elif not isinstance(value, str):
        raise ValueError("expected a size like '4MiB'")
    else:
        match = _SIZE.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a size (examples: '512KiB', '4MiB', '1GB')")
        unit = (match.group(2) or "b").lower()
        size = int(float(match.group(1)) * _SIZE_UNITS[unit])
    if size < 0:
        raise ValueError("must not be negative")
    return size


def format_size(size: float) -> str:
    """``1536`` → ``"1.5 KiB"``: sizes as on-call reads them."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True, slots=True)
class Rate:
    """``amount`` of ``unit`` (requests or records) per ``per_s`` seconds."""

    amount: float
    per_s: float
    unit: str = "requests"

    @property
    def per_second(self) -> float:
        return self.amount / self.per_s

    def __str__(self) -> str:
        unit = "" if self.unit == "requests" else " records"
        return f"{self.amount:g}{unit}/{self.per_s:g}s"


def parse_rate(value: str | Rate) -> Rate:
    """A rate from ``"20/s"``, ``"1200/m"``, ``"5000 records/s"`` or ``"10/5s"``."""
    if isinstance(value, Rate):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a rate like '20/s'")
    match = _RATE.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a rate (examples: '20/s', '1200/m', '5000 records/s')")
    amount = float(match.group(1))
    count = float(match.group(3) or 1)
    if amount <= 0 or count <= 0:
        raise ValueError("must be positive")
    return Rate(amount, count * _DURATION_UNITS[match.group(4)], match.group(2) or "requests")
