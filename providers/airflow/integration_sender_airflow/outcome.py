"""What a batch's JSON (``GET /v1/batches/{id}``) means for an Airflow task.

One place decides, for the deferrable trigger, the worker-side polling loop and the sensor
alike: whether to keep waiting, what the task returns (the *reconciliation*), and which error
fails it. Fields are read tolerantly: the daemon may add some (``unchanged`` records, say),
and an unknown batch state is waited on rather than guessed at.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import (
    BatchFailed,
    BatchNotFound,
    BatchTimeout,
    ControlServerError,
    DeadLettersFound,
    IntegrationSenderError,
    TokenRejected,
)

__all__ = [
    "SETTLED_STATES",
    "WAITING_STATES",
    "error_event",
    "is_settled",
    "not_found_event",
    "reconciliation",
    "resolve",
    "settled_event",
    "timeout_event",
]

WAITING_STATES = frozenset({"running", "incomplete"})  # incomplete batches are resumed
SETTLED_STATES = frozenset({"complete", "failed"})

# dead-letter locations kept in an event or XCom: a batch of 10 000 failed chunks would
# otherwise put megabytes into Airflow's database
_MAX_DEAD_LETTERS = 100


def is_settled(batch: Mapping[str, Any]) -> bool:
    return batch.get("state") in SETTLED_STATES


def _counts(value: Any) -> dict[str, int]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): v for k, v in value.items() if isinstance(v, int) and not isinstance(v, bool)}


def _dead_letters(batch: Mapping[str, Any]) -> list[dict[str, Any]]:
    chunks = batch.get("chunks")
    if not isinstance(chunks, list):
        return []
    return [
        {
            "route": c.get("route"),
            "chunk": c.get("chunk"),
            "kind": c.get("kind", "data"),
            "records": c.get("records"),
            "location": c.get("location"),
            "error": c.get("last_error"),
        }
        for c in chunks
        if isinstance(c, Mapping) and c.get("state") == "dead_lettered"
    ]


def reconciliation(batch: Mapping[str, Any]) -> dict[str, Any]:
    """What a task returns to XCom: the batch as the control server shows it without the
    chunk list, the totals also at the top level (``read``, ``delivered``, ``dead_lettered``,
    ``rejected``, ...) for templates, and the dead-letter locations."""
    totals = _counts(batch.get("records"))
    routes_in = batch.get("routes")
    routes = (
        {str(name): _counts(stats) for name, stats in routes_in.items()}
        if isinstance(routes_in, Mapping)
        else {}
    )
    dead = _dead_letters(batch)
    out: dict[str, Any] = {
        "batch_id": batch.get("batch_id"),
        "dataset": batch.get("dataset"),
        "uri": batch.get("uri"),
        "state": batch.get("state"),
        "error": batch.get("error"),
        **totals,
        "reconciled": batch.get("reconciled"),
        "records": totals,
        "routes": routes,
        "dead_letter_chunks": len(dead),
        "dead_letters": dead[:_MAX_DEAD_LETTERS],
        "started_at": batch.get("started_at"),
        "finished_at": batch.get("finished_at"),
        "duration_s": batch.get("duration_s"),
    }
    return out


# ---- trigger events: JSON payloads, so they survive the trip through Airflow's database


def settled_event(batch: Mapping[str, Any]) -> dict[str, Any]:
    return {"status": "settled", "batch": reconciliation(batch)}


def not_found_event(batch_id: str, waited_s: float) -> dict[str, Any]:
    return {"status": "not_found", "batch_id": batch_id, "waited_s": waited_s}


def timeout_event(batch_id: str, state: str | None, waited_s: float) -> dict[str, Any]:
    return {"status": "timeout", "batch_id": batch_id, "state": state, "waited_s": waited_s}


def error_event(batch_id: str, exc: IntegrationSenderError) -> dict[str, Any]:
    server = exc if isinstance(exc, ControlServerError) else None
    return {
        "status": "error",
        "batch_id": batch_id,
        "token_rejected": isinstance(exc, TokenRejected),
        "message": str(exc),
        "url": server.url if server else None,
        "status_code": server.status if server else None,
    }


_ALWAYS_SHOWN = ("read", "delivered", "dead_lettered", "rejected")


def _count_text(totals: Mapping[str, int]) -> str:
    """``read 250, delivered 0, dead-lettered 250, rejected 0``, then any other count the
    daemon reports (``unchanged``, ``tombstones``, ...) that is not zero."""
    shown = [k for k in _ALWAYS_SHOWN if k in totals]
    shown += [k for k, v in totals.items() if k not in _ALWAYS_SHOWN and k != "chunks" and v]
    return ", ".join(f"{k.replace('_', '-')} {totals[k]}" for k in shown)


def _dead_letter_text(result: Mapping[str, Any]) -> str:
    routes = result.get("routes") or {}
    per_route = [
        f"route {name}: {stats.get('dead_lettered', 0)}"
        for name, stats in routes.items()
        if stats.get("dead_lettered")
    ]
    text = (
        f"integration-sender batch {result['batch_id']} is complete but "
        f"{result.get('dead_lettered', 0)} records were dead-lettered "
        f"in {result.get('dead_letter_chunks', 0)} chunks"
    )
    if per_route:
        text += f" ({'; '.join(per_route)})"
    text += f" [{_count_text(result.get('records') or {})}]"
    locations = [d["location"] for d in result.get("dead_letters") or [] if d.get("location")]
    if locations:
        more = result.get("dead_letter_chunks", 0) - len(locations[:5])
        text += "; dead letters at " + ", ".join(locations[:5])
        text += f" and {more} more" if more > 0 else ""
    return text + "; fail_on_dead_letters is set"


def resolve(event: Mapping[str, Any], *, fail_on_dead_letters: bool) -> dict[str, Any]:
    """The reconciliation of a settled batch, or the error that fails the task."""
    status = event.get("status")
    batch_id = str(event.get("batch_id") or (event.get("batch") or {}).get("batch_id"))
    if status == "not_found":
        raise BatchNotFound(batch_id, float(event.get("waited_s") or 0))
    if status == "timeout":
        raise BatchTimeout(batch_id, event.get("state"), float(event.get("waited_s") or 0))
    if status == "error":
        message = str(event.get("message"))
        if event.get("url") is None:
            raise IntegrationSenderError(message)
        error_type = TokenRejected if event.get("token_rejected") else ControlServerError
        raise error_type(message, url=str(event["url"]), status=event.get("status_code"))
    if status != "settled":
        raise ControlServerError(f"unexpected trigger event {dict(event)!r}", url="")
    result = dict(event["batch"])
    if result.get("state") == "failed":
        raise BatchFailed(
            f"integration-sender batch {batch_id} failed: {result.get('error') or 'no reason'}"
            f" [{_count_text(result.get('records') or {})}]",
            batch_id=batch_id,
            batch=result,
        )
    if fail_on_dead_letters and result.get("dead_lettered"):
        raise DeadLettersFound(_dead_letter_text(result), batch_id=batch_id, batch=result)
    return result
