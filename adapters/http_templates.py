"""Templated requests: ``{dataset}``, ``{batch_id}``, ``{route}``, ``{chunk}`` in an HTTP
destination's ``url`` and header values, filled in per chunk.

``url = "https://crm.internal/api/{dataset}/batches/{batch_id}"`` sends each batch to its own
path; ``headers = { X-Batch = "{batch_id}/{chunk}" }`` labels each request. ``{{`` and ``}}``
are literal braces. Any other placeholder (or a format spec such as ``{chunk:03}``) is a
config error at load, not a failed delivery later. Values are percent-encoded in URLs (a
batch id ``2024/06/01`` stays one path segment) and kept to printable ASCII in headers.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from urllib.parse import quote

from sender.model import EncodedChunk

__all__ = ["PLACEHOLDERS", "Template", "header_value"]

PLACEHOLDERS: dict[str, Callable[[EncodedChunk], str]] = {
    "dataset": lambda chunk: chunk.dataset,
    "batch_id": lambda chunk: chunk.batch_id,
    "route": lambda chunk: chunk.route,
    "chunk": lambda chunk: chunk.chunk_id,
}
_KNOWN = ", ".join("{" + name + "}" for name in PLACEHOLDERS)
_ASCII_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def header_value(value: str) -> str:
    """``value`` as a valid header value: ids and names come from trigger messages, so
    anything but printable ASCII is percent-encoded (no CR/LF can get through)."""
    if value.isascii() and value.isprintable():
        return value
    return quote(value, safe=_ASCII_SAFE)


def _url_value(value: str) -> str:
    return quote(value, safe="")


class Template:
    """A string with placeholders. ``Template(text, for_url=True)`` raises ``ValueError``
    naming an unknown placeholder; ``render(chunk)`` fills it in."""

    def __init__(self, text: str, *, for_url: bool) -> None:
        self.text = text
        self._escape = _url_value if for_url else header_value
        # [(literal, placeholder or None)]
        self._parts: list[tuple[str, str | None]] = []
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:  # a lone "{" or "}"
            raise ValueError(f"{exc} (write {{{{ and }}}} for literal braces)") from None
        for literal, name, spec, conversion in parsed:
            if name is not None and (name not in PLACEHOLDERS or spec or conversion):
                shown = "{" + name + (f"!{conversion}" if conversion else "")
                shown += (f":{spec}" if spec else "") + "}"
                raise ValueError(
                    f"unknown placeholder {shown} (known: {_KNOWN}; "
                    "{{ and }} are literal braces)"
                )
            self._parts.append((literal, name))
        self.static = all(name is None for _, name in self._parts)
        self.plain = "".join(literal for literal, _ in self._parts)  # braces unescaped

    def render(self, chunk: EncodedChunk) -> str:
        if self.static:
            return self.plain
        return "".join(
            literal + (self._escape(PLACEHOLDERS[name](chunk)) if name is not None else "")
            for literal, name in self._parts
        )
