"""``sender replay``: send chosen chunks of a batch again, safely, with the bytes and
``Idempotency-Key`` they first had.

Which chunks (``Selection``, in ``selection``): the dead-lettered ones (the default), every
chunk (``all``), or listed ids (``3,7-9``), of every route or of ``routes``; each goes to its
route's primary, or to ``to``. The payload comes from the source, re-read and re-chunked by
the engine itself when it is unchanged, else from the chunk's stored copy (``payloads``,
``stored``). The
``Replayer`` (``replayer``) holds the batch's lease while it sends and records every replay in
the ledger's audit trail; what it did is a ``ReplayReport`` (``report``).
"""

from ..errors import ReplayRefused, SelectionError
from .replayer import Replayer
from .report import ReplayHooks, ReplayItem, ReplayReport
from .selection import (
    Mode,
    Selection,
    dead_letter_files,
    parse_chunk_ids,
    replay_preview,
    select_chunks,
    who_am_i,
)
from .stored import stored_file

__all__ = [
    "Mode",
    "ReplayHooks",
    "ReplayItem",
    "ReplayRefused",
    "ReplayReport",
    "Replayer",
    "Selection",
    "SelectionError",
    "dead_letter_files",
    "parse_chunk_ids",
    "replay_preview",
    "select_chunks",
    "stored_file",
    "who_am_i",
]
