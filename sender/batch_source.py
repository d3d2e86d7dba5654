"""A batch's source as a run, a replay and ``sender send`` all see it: listed under the rules
of its ``[sources.*]`` section (``require_success``), and compared with the listing the
ledger kept from the batch's first read.

A batch whose source changed since it was first read is not the batch first sent: a run
refuses it (``SourceError``) and a replay asks for ``--force``, both from ``source_change``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from .config import AppConfig
from .model import ObjectInfo
from .ports import Source
from .readers import BatchObjects, list_batch

__all__ = ["list_source", "source_change"]


async def list_source(
    config: AppConfig, source_for: Callable[[str], Awaitable[Source]], uri: str
) -> tuple[Source, BatchObjects]:
    """The source that serves ``uri`` and the batch's objects under it. Raises
    ``ConfigError`` when no source serves the URI, ``SourceError`` when it cannot be listed
    (or, with ``require_success``, has no ``_SUCCESS`` marker)."""
    section = config.source_for(uri)
    source = await source_for(uri)
    listing = await list_batch(source, uri, require_success=section.options.require_success)
    return source, listing


def source_change(before: Sequence[ObjectInfo] | None, now: Sequence[ObjectInfo]) -> str | None:
    """How the objects differ from the first read (``"rewritten: part-1; new: part-9"``), or
    None when they are the same or the first read recorded nothing to compare with."""
    if before is None:
        return None
    if {(o.uri, o.size, o.version) for o in before} == {(o.uri, o.size, o.version) for o in now}:
        return None
    old = {o.uri: o for o in before}
    new = {o.uri: o for o in now}
    parts = []
    gone = sorted(set(old) - set(new))
    added = sorted(set(new) - set(old))
    changed = sorted(u for u in set(old) & set(new) if old[u] != new[u])
    for label, uris in (("rewritten", changed), ("new", added), ("missing", gone)):
        if uris:
            names = ", ".join(u.rsplit("/", 1)[-1] for u in uris[:3])
            more = f" and {len(uris) - 3} more" if len(uris) > 3 else ""
            parts.append(f"{label}: {names}{more}")
    return "; ".join(parts) or "objects differ"
