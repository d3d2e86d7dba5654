"""Delivery policy: where one chunk of one route ends up.

A chunk is tried on the route's targets in order (primary, then fallbacks), each under its own
retry policy (``Target.send``); when all fail it goes to the route's dead-letter store. If even
that fails, ``DeadLetterUnavailable`` stops the batch, which stays incomplete and is resumed
later: nothing is dropped and nothing is marked done that was not stored somewhere.

A target whose circuit is open is skipped without an attempt (``circuit.skip``). A chunk a
target refuses for good because of its payload (400, 413, 422) is split in halves, down to
single records, so that only the records the receiver refuses are dead-lettered
(``split_on_reject``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from .chunker import RawChunk
from .errors import CircuitOpenError, DeadLetterUnavailable, DeliveryError, PermanentError
from .hooks import Hooks
from .log import get_logger, mask, mask_optional
from .model import ChunkState, EncodedChunk, TriggerMessage, idempotency_key
from .ports import ChunkRecord, Ledger
from .routing import SPLIT_TARGET, RouteRun, encode_chunk, halves
from .targets import Target

__all__ = ["ChunkDelivery"]

log = get_logger("sender.engine")

_Encodings = dict[tuple[str, str, int | None], EncodedChunk]


class ChunkDelivery:
    """Drives one chunk to a terminal state: ``deliver`` returns its ledger row and the bytes
    sent; the rows of split pieces are saved on the way (``ledger``), and ``hooks`` learn of
    each piece and of each fallback."""

    def __init__(self, ledger: Ledger, hooks: Hooks) -> None:
        self.ledger = ledger
        self.hooks = hooks

    async def encode(
        self, message: TriggerMessage, run: RouteRun, raw: RawChunk, target: Target, kind: str
    ) -> EncodedChunk:
        """``raw`` in ``target``'s format and codec (bad records always as NDJSON), encoded in
        a worker thread."""
        format = "ndjson" if kind == "rejects" else target.format
        return await asyncio.to_thread(
            encode_chunk,
            raw,
            batch_id=message.batch_id,
            dataset=message.dataset,
            route=run.name,
            format=format,
            codec=target.codec,
            level=target.level,
            columns=run.columns,
            kind=kind,
        )

    async def deliver(
        self,
        message: TriggerMessage,
        run: RouteRun,
        raw: RawChunk,
        kind: str,
        *,
        first_target: int = 0,
    ) -> tuple[ChunkRecord, int]:
        """Try the targets in order (from ``first_target``), then the dead-letter store; the
        record and wire bytes. A target whose circuit is open is skipped; a chunk a target
        refuses permanently is split when the route allows it."""
        fields = dict(batch_id=message.batch_id, route=run.name, chunk=raw.chunk_id)
        record = ChunkRecord(
            message.batch_id,
            run.name,
            raw.chunk_id,
            ChunkState.PENDING,
            records=raw.records,
            raw_size=raw.raw_size,
            kind=kind,
            idempotency_key=idempotency_key(message.batch_id, run.name, raw.chunk_id),
        )
        errors: list[str] = []
        if kind == "rejects" and run.config.on_bad_record == "skip":
            record.state = ChunkState.SKIPPED
            return record, 0
        encoded: _Encodings = {}
        before = run.previous.get(raw.chunk_id)
        if kind == "data" and before is not None and before.target == SPLIT_TARGET:
            # split before a restart: split again (the pieces already done are not resent),
            # never send the whole chunk, whose delivered pieces would arrive twice
            record.attempts = before.attempts
            return await self._split(message, run, raw, record, 0, mask(before.last_error or ""))
        if kind == "data":
            for position, target in enumerate(run.targets):
                if position < first_target:
                    continue
                if not target.available():
                    self._skip(run, position, target, errors, fields)
                    continue
                key = target.encoding
                if key not in encoded:
                    encoded[key] = await self.encode(message, run, raw, target, kind)
                chunk = encoded[key]
                try:
                    delivered = await target.send(chunk, **fields)
                except CircuitOpenError:
                    # opened (or its probe taken) since available() said yes
                    self._skip(run, position, target, errors, fields)
                    continue
                except DeliveryError as exc:
                    record.attempts += exc.attempts or 1
                    errors.append(mask(f"{target.name}: {exc}"))
                    permanent = isinstance(exc, PermanentError)
                    if (
                        isinstance(exc, PermanentError)
                        and exc.payload
                        and run.config.split_on_reject
                        and raw.records > 1
                    ):
                        return await self._split(message, run, raw, record, position, errors[-1])
                    log.warning(
                        "chunk.target_failed",
                        target=target.name,
                        error=str(exc),
                        permanent=permanent,
                        next=_next_name(run.targets, position, run.dead_letter),
                        **fields,
                    )
                    if position + 1 < len(run.targets):
                        self.hooks.fallback(run.name, target.name, mask(str(exc)))
                    continue
                record.attempts += delivered.attempts
                record.state = ChunkState.DELIVERED
                record.target = target.name
                record.location = mask_optional(delivered.receipt.location)
                record.checksum = chunk.checksum
                record.last_error = errors[-1] if errors else None
                log.debug(
                    "chunk.delivered",
                    target=target.name,
                    attempts=record.attempts,
                    records=raw.records,
                    bytes=len(chunk.payload),
                    **fields,
                )
                return record, len(chunk.payload)
        return await self._dead_letter(message, run, raw, kind, record, errors)

    def _skip(
        self,
        run: RouteRun,
        position: int,
        target: Target,
        errors: list[str],
        fields: dict[str, str],
    ) -> None:
        """A target with an open circuit: no encoding, no attempt, on to the next one."""
        errors.append(f"{target.name}: circuit open")
        log.info(
            "circuit.skip",
            target=target.name,
            next=_next_name(run.targets, position, run.dead_letter),
            **fields,
        )
        if position + 1 < len(run.targets):
            self.hooks.fallback(run.name, target.name, "circuit open")

    async def _split(
        self,
        message: TriggerMessage,
        run: RouteRun,
        raw: RawChunk,
        record: ChunkRecord,
        position: int,
        reason: str,
    ) -> tuple[ChunkRecord, int]:
        """Poison-record isolation: a target refused the chunk for good, so each half is
        delivered on its own from that target on (then its fallbacks, then the dead-letter
        store), halving again down to single records. The good records get through; a bad
        record ends dead-lettered with the receiver's answer.

        The halves are "7.0" (the first ceil(n/2) records) and "7.1", then "7.1.0"...: the
        same every time, each with its own Idempotency-Key. Every piece has its ledger row.
        The chunk's own row is marked split (target ``SPLIT_TARGET``, state pending) *before*
        a piece is sent, and delivered once every piece is terminal; its records are counted
        through the pieces. A resume splits it again and sends only the pieces not done.
        """
        fields = dict(batch_id=message.batch_id, route=run.name, chunk=raw.chunk_id)
        pieces = halves(raw)
        record.state = ChunkState.PENDING
        record.target = SPLIT_TARGET
        record.last_error = reason
        record.location = None
        await self.ledger.save_chunks([record])
        run.previous[raw.chunk_id] = record
        log.info(
            "chunk.split",
            target=run.targets[position].name,
            records=raw.records,
            into=[half.chunk_id for half in pieces],
            error=reason,
            **fields,
        )
        wire_size = 0
        for half in pieces:
            done = run.previous.get(half.chunk_id)
            if done is not None and done.state.terminal:
                continue  # settled before a restart
            piece, size = await self.deliver(message, run, half, "data", first_target=position)
            await self.ledger.save_chunks([piece])
            run.previous[half.chunk_id] = piece
            wire_size += size
            if piece.target != SPLIT_TARGET:
                self.hooks.chunk_done(
                    message.batch_id,
                    run.name,
                    piece.state.value,
                    piece.target,
                    piece.records,
                    piece.raw_size,
                    size,
                )
        record.state = ChunkState.DELIVERED
        return record, wire_size

    async def _dead_letter(
        self,
        message: TriggerMessage,
        run: RouteRun,
        raw: RawChunk,
        kind: str,
        record: ChunkRecord,
        errors: list[str],
    ) -> tuple[ChunkRecord, int]:
        target = run.dead_letter
        fields = dict(batch_id=message.batch_id, route=run.name, chunk=raw.chunk_id)
        chunk = await self.encode(message, run, raw, target, kind)
        reason = "bad input records" if kind == "rejects" else "; ".join(errors)
        chunk.context = {
            "error": reason,
            "attempts": record.attempts,
            "targets": [t.name for t in run.targets] if kind == "data" else [],
        }
        try:
            # never refused by its circuit: there is nothing to skip to, and a store that
            # came back must be used at once, not after the circuit's reset
            delivered = await target.send_ignoring_circuit(chunk, **fields)
        except DeliveryError as exc:
            record.state = ChunkState.FAILED
            record.last_error = mask(f"{reason}; dead-letter {target.name}: {exc}")
            await self.ledger.save_chunks([record])
            log.error("chunk.dead_letter_failed", target=target.name, error=str(exc), **fields)
            raise DeadLetterUnavailable(
                f"chunk {raw.chunk_id} of route {run.name}: every target and the dead-letter "
                f"store {target.name} failed ({exc})"
            ) from exc
        record.state = ChunkState.DEAD_LETTERED
        record.target = target.name
        record.location = mask_optional(delivered.receipt.location)
        record.checksum = chunk.checksum
        record.last_error = reason
        if kind == "data":
            log.warning(
                "chunk.dead_lettered",
                target=target.name,
                location=record.location,
                error=reason,
                records=raw.records,
                **fields,
            )
        return record, len(chunk.payload)


def _next_name(targets: Sequence[Target], position: int, dead_letter: Target) -> str:
    return targets[position + 1].name if position + 1 < len(targets) else dead_letter.name
