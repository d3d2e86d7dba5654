"""Typed CSV: a route's ``types = { field = "str"|"int"|"float"|"bool"|"json" }``.

CSV cells are text, so a CSV record arrives as an object of strings (``"0.87"``). ``types``
names input fields to cast before projection: the cell's text becomes a JSON number, boolean
or value, keeping its value exactly (an integer of any size stays its digits; a float is
written as the model wrote it when that is JSON, else as the shortest text of the same
value). An empty cell of a typed field is ``null``. A cell that does not cast is a bad record
naming its file, line and field. JSONL and Parquet carry their own types and are not cast.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import msgspec
import orjson

from .model import BadRecord

__all__ = ["CAST_TYPES", "CastType", "Caster"]

CastType = Literal["str", "int", "float", "bool", "json"]
CAST_TYPES: tuple[CastType, ...] = ("str", "int", "float", "bool", "json")

_INT = re.compile(rb"-?(0|[1-9][0-9]*)")
_JSON_NUMBER = re.compile(rb"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_TRUE = frozenset({b"true", b"1", b"yes", b"y", b"t"})
_FALSE = frozenset({b"false", b"0", b"no", b"n", b"f"})
_decode_row = msgspec.json.Decoder(dict[str, str]).decode
_validate_json = msgspec.json.Decoder(msgspec.Raw).decode


class _CastError(ValueError):
    pass


def _int(text: bytes) -> bytes:
    text = text.strip()
    if text.startswith(b"+"):
        text = text[1:]
    if not _INT.fullmatch(text):
        raise _CastError("not an integer")
    return text


def _float(text: bytes) -> bytes:
    text = text.strip()
    if _JSON_NUMBER.fullmatch(text):
        return text  # already JSON: keep it exactly as written
    try:
        value = float(text)
    except ValueError:
        raise _CastError("not a number") from None
    if not math.isfinite(value):
        raise _CastError("not a finite number (JSON has no NaN or Infinity)")
    return repr(value).encode()


def _bool(text: bytes) -> bytes:
    folded = text.strip().lower()
    if folded in _TRUE:
        return b"true"
    if folded in _FALSE:
        return b"false"
    raise _CastError("not a boolean (true/false, 1/0, yes/no)")


def _json(text: bytes) -> bytes:
    try:
        return bytes(_validate_json(text))
    except msgspec.DecodeError as exc:
        raise _CastError(f"not JSON: {exc}") from None


_CASTS: dict[str, Callable[[bytes], bytes]] = {
    "int": _int,
    "float": _float,
    "bool": _bool,
    "json": _json,
}


class Caster:
    """Casts the typed fields of CSV records (NDJSON lines of strings), in place of order."""

    def __init__(self, types: Mapping[str, CastType]) -> None:
        # "str" casts nothing: a CSV cell already is a string
        self._casts = {name: _CASTS[kind] for name, kind in types.items() if kind != "str"}

    def apply(
        self, lines: Sequence[bytes], locate: Callable[[int], str]
    ) -> tuple[list[bytes], list[BadRecord], Callable[[int], str]]:
        """The records with their typed cells cast, those with a cell that does not, and
        ``locate`` for the records left (line i of the output was line ``kept[i]``)."""
        kept: list[int] = []
        out: list[bytes] = []
        bad: list[BadRecord] = []
        casts = self._casts
        for index, line in enumerate(lines):
            row = _decode_row(line)
            parts: list[bytes] = []
            try:
                for name, cell in row.items():
                    cast = casts.get(name)
                    if cast is None:
                        value = orjson.dumps(cell)
                    elif cell == "":
                        value = b"null"
                    else:
                        try:
                            value = cast(cell.encode())
                        except _CastError as exc:
                            raise _CastError(f"field {name!r}: {cell!r} is {exc}") from None
                    parts += [b"," if parts else b"{", orjson.dumps(name), b":", value]
            except _CastError as exc:
                bad.append(BadRecord(bytes(line), str(exc), locate(index)))
                continue
            parts.append(b"}" if parts else b"{}")
            out.append(b"".join(parts))
            kept.append(index)
        if not bad:
            return out, bad, locate
        return out, bad, lambda index: locate(kept[index])
