"""A batch's lease in the ledger, as a run and a replay both hold it: taken, renewed every
third of its time while the work runs, released at the end (even when the work is
cancelled). Two holders never send the same batch at once.

Owners are readable in ``sender status``: ``host:pid:pidns.nonce`` for a daemon or ``sender
send`` (``default_owner``), ``replay:user@host:pid`` for a replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from collections.abc import AsyncIterator

from .errors import SenderError
from .log import get_logger
from .ports import Ledger

__all__ = ["default_owner", "hold_lease", "is_dead_local_owner", "take_stale_lease"]

log = get_logger("sender.lease")


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "0"


# host:pid alone is not unique: containers sharing a hostname all run as pid 1. The pid
# namespace says whether a pid can be checked from here; the nonce tells processes apart.
_OWNER_TAG = f"{_pid_namespace()}.{secrets.token_hex(3)}"


def default_owner() -> str:
    """Who holds a lease, readable in ``sender status``: ``host:pid:pidns.nonce``."""
    return f"{socket.gethostname()}:{os.getpid()}:{_OWNER_TAG}"


def is_dead_local_owner(owner: str) -> bool:
    """``owner`` is ``default_owner()`` of a process that no longer exists, on this host and
    in this pid namespace (a pid from another container's namespace means nothing here)."""
    parts = owner.split(":")
    if len(parts) != 3:
        return False
    host, pid, tag = parts
    if host != socket.gethostname() or tag.split(".")[0] != _OWNER_TAG.split(".")[0]:
        return False
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: alive, someone else's
        return False
    return False


async def take_stale_lease(
    ledger: Ledger, batch_id: str, holder: str, owner: str, lease_s: float
) -> bool:
    """Take over the lease of a daemon on this host that is gone (``kill -9``, a crash): its
    lease would otherwise hold the batch until it expires. Only a ``host:pid`` owner of this
    very host whose process no longer exists; anything else is left to expire."""
    if not is_dead_local_owner(holder):
        return False
    # a shard's lease is "<batch>/<k>" (sender.shard_ports.shard_lease_key)
    batch, _, shard = batch_id.partition("/")
    log.warning(
        "lease.stale",
        batch_id=batch,
        shard=int(shard) if shard.isdigit() else None,
        owner=holder,
        taken_by=owner,
    )
    await ledger.release_lease(batch_id, holder)
    # another process may take it in between: then that one sends, and we do not
    return await ledger.acquire_lease(batch_id, owner, lease_s)


async def _renew(ledger: Ledger, batch_id: str, owner: str, lease_s: float) -> None:
    while True:
        await asyncio.sleep(lease_s / 3)
        try:
            await ledger.acquire_lease(batch_id, owner, lease_s)
        except SenderError as exc:
            # the lease is still ours until it expires: try again at the next third
            log.warning("lease.renew_failed", batch_id=batch_id, error=str(exc))


@contextlib.asynccontextmanager
async def hold_lease(
    ledger: Ledger, batch_id: str, owner: str, lease_s: float, *, renew: bool = True
) -> AsyncIterator[None]:
    """Keep a lease already taken (``acquire_lease`` said yes) for the ``async with`` block:
    renewed every ``lease_s / 3`` (unless ``renew`` is False), released on the way out even
    when the block is cancelled; a release the ledger refuses is left to expire."""
    renewer = asyncio.create_task(_renew(ledger, batch_id, owner, lease_s)) if renew else None
    try:
        yield
    finally:
        if renewer is not None:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
        with contextlib.suppress(SenderError):
            await asyncio.shield(ledger.release_lease(batch_id, owner))
