"""The README's "Reliability" table, from the figures the chaos suite wrote.

    .venv/bin/python -m tests.chaos.report            # var/chaos/figures.json → Markdown

Every row is one scenario (and seed) of the last run of ``tests/chaos``: the records of the
batch, how they ended, the duplicates the receivers got (the same chunk again, with the same
Idempotency-Key, so a receiver that dedupes keeps one) and the records lost, which must be 0.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson

__all__ = ["FIGURES", "load", "main", "render", "save"]

ROOT = Path(__file__).resolve().parents[2]
FIGURES = ROOT / "var" / "chaos" / "figures.json"

_DESCRIPTIONS = {
    "random-faults": "the receiver fails 30% of requests at random (seeded): 500/502/504, "
    "429/503 with Retry-After, connection resets, partial reads of the body, slow bodies, "
    "broken answers, 503 and 200 after the client's timeout",
    "circuit-open": "the primary answers 503 to everything (circuit failures = 3); the "
    "fallback is healthy",
    "circuit-recovered": "the primary is back: after the reset one probe closes the circuit",
    "rate-limit": "rate_limit = 50/s at concurrency 8, and one 429 with Retry-After: 0.3 mid-batch",
    "adaptive-concurrency": "concurrency = adaptive (ceiling 32); the receiver answers 503 "
    "above 6 requests in flight",
    "poison-records": "the receiver refuses (422) any chunk holding one of 7 bad records",
    "poison-resume": "as above, with the dead-letter store down mid-split, then back",
    "dead-route": "every target down (500s, connection refused): all to the dead-letter store",
    "dead-letter-down": "targets and dead-letter store down: the daemon reports not ready and "
    "keeps the message unacked; the store comes back: the batch completes",
    "kill-9": "`sender run` killed with SIGKILL 3 times at random points and restarted until "
    "done; the receiver fails 10% at random and refuses 3 poison records",
}


_MECHANISMS = [
    "Per destination, shared by every batch that uses it:",
    "",
    '- **Circuit breaker** (`circuit = { failures = 5, reset = "1m", ratio = 0.5, window = '
    "20 }`): opens after `failures` consecutive failed deliveries (a delivery failed after its "
    "retries; a 4xx refusal is not a failure) or a failure `ratio` over the last `window`; "
    "while open, chunks skip straight to the next target with no attempt and sends already "
    "retrying stop; after `reset` one probe (one attempt) is let through and closes it again. "
    "Logged as `circuit.opened`, `circuit.half_open`, `circuit.closed`, `circuit.skip`, "
    "`circuit.probe`. The dead-letter store is never refused by its circuit.",
    '- **Rate limit** (`rate_limit = "20/s"` or `"5000 records/s"`): a token bucket '
    "holding one second's worth. Waiting for a token (or a concurrency slot) costs no retry "
    "attempt and is not counted in the retry `budget` (`ratelimit.wait`). A 429/503 with "
    "`Retry-After` (or `RateLimit-Reset`) pauses the destination for every chunk "
    "(`ratelimit.pause`); a pause longer than the retry budget sends the chunk on to the next "
    "target at once.",
    '- **Adaptive concurrency** (`concurrency = "adaptive"`, ceiling `max_concurrency`): '
    "AIMD like Vector's ARC, starting at 1: +1 per round trip while the limit is reached and "
    "the RTT stays at its moving average; halved at once on push-back (429, 503, a timeout, any "
    "`Retry-After`), times 0.9 when the RTT rises well above its average; at most one cut per "
    "round trip (`concurrency.changed`).",
    "- **Poison records** (route `split_on_reject = true`, the default): a chunk refused for "
    "good (400, 422) is halved, and halved again, down to single records; the good records "
    "are delivered, only the refused ones go to the dead-letter store with the receiver's "
    "answer. Pieces are `7.0`, `7.1`, `7.1.0`… with their own Idempotency-Key and ledger row; "
    "the split chunk's row says target `(split)` (`chunk.split`).",
    "- **Crash-safe resume**: the SQLite ledger is in WAL mode with one transaction per "
    "change; after `kill -9` a restart resumes the unfinished chunks (a split one goes on with "
    "the pieces not done), taking over the lease of the dead process of the same host "
    "(`lease.stale`) instead of waiting for it to expire.",
]


def load(path: Path = FIGURES) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows: list[dict[str, Any]] = orjson.loads(path.read_bytes())
    return rows


def save(rows: Iterable[Mapping[str, Any]], path: Path = FIGURES) -> list[dict[str, Any]]:
    """Merge ``rows`` into the file: a scenario and seed that ran again replaces its row."""
    merged = {(r["scenario"], r["seed"]): dict(r) for r in load(path)}
    for row in rows:
        merged[(row["scenario"], row["seed"])] = dict(row)
    order = list(_DESCRIPTIONS)
    out = sorted(
        merged.values(),
        key=lambda r: (
            order.index(r["scenario"]) if r["scenario"] in order else len(order),
            r["scenario"],
            r["seed"] if r["seed"] is not None else -1,
        ),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2))
    return out


def _notes(row: Mapping[str, Any]) -> str:
    notes = row.get("notes") or {}
    return ", ".join(f"{k} {v}" for k, v in notes.items())


def render(rows: Iterable[Mapping[str, Any]]) -> str:
    rows = list(rows)
    lines = [
        "## Reliability",
        "",
        *_MECHANISMS,
        "",
        "`make test` runs a chaos suite (`tests/chaos/`, marked `chaos`): real receivers on "
        "loopback that fail at random (seeded), and a daemon killed with SIGKILL and restarted. "
        "Every scenario checks, from the ledger, that records read = delivered + dead-lettered "
        "+ rejected, that no record is missing at the receivers once duplicates are removed by "
        "`Idempotency-Key` (or is in the dead-letter store), that a key always carried the same "
        "bytes, and that no record arrived under two different keys. Figures from the last run:",
        "",
        "| scenario | seed | records | delivered | dead-lettered | duplicates | lost | requests "
        "| what happened |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        seed = "" if row["seed"] is None else str(row["seed"])
        lines.append(
            f"| {row['scenario']} | {seed} | {row['records']} | {row['delivered']} "
            f"| {row['dead_lettered']} | {row['duplicates']} | {row['lost']} "
            f"| {row['requests']} | {_notes(row)} |"
        )
    lines += ["", "Scenarios:", ""]
    seen = {row["scenario"] for row in rows}
    lines += [f"- **{name}**: {text}" for name, text in _DESCRIPTIONS.items() if name in seen]
    lines += [
        "",
        "Duplicates are whole chunks sent again with the same key and bytes: answers lost on "
        "the way back (a 200 after the client timed out, a broken response) and chunks in "
        "flight when the daemon was killed. Regenerate this table with "
        "`.venv/bin/pytest -m chaos && .venv/bin/python -m tests.chaos.report`.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    rows = load()
    if not rows:
        print(f"no figures at {FIGURES}: run `pytest -m chaos` first", file=sys.stderr)
        return 1
    sys.stdout.write(render(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
