"""Paths in ``sender status`` and ``sender dead-letters``: too long for a line, they break
after a ``/``, never inside a file name."""

from __future__ import annotations

from rich.console import Console

from sender.replay_views import dead_letter_list

LOCATION = (
    "/srv/sender/var/dead-letter/churn/churn-2026-11-24/churn_to_scores/"
    "chunk-000003-with-a-long-name.ndjson"
)


def _render(width: int) -> list[str]:
    console = Console(width=width, record=True, color_system=None)
    entry = {
        "batch_id": "churn-2026-11-24",
        "route": "churn_to_scores",
        "kind": "data",
        "chunk": "3",
        "records": 1000,
        "state": "dead-lettered",
        "reason": "HTTP 503",
        "location": LOCATION,
    }
    with console.capture() as captured:
        console.print(dead_letter_list([entry]))
    return [line.rstrip() for line in captured.get().splitlines()]


def test_a_long_path_breaks_after_a_slash_and_reads_back_whole() -> None:
    lines = _render(80)

    path_lines = [line.strip() for line in lines[2:]]
    assert all(len(line) <= 80 for line in lines)
    assert all(line.endswith("/") for line in path_lines[:-1])
    assert path_lines[-1] == "chunk-000003-with-a-long-name.ndjson"
    assert "".join(path_lines) == LOCATION


def test_a_path_that_fits_stays_on_one_line() -> None:
    assert [line.strip() for line in _render(200)[2:]] == [LOCATION]


def test_a_batch_source_too_long_for_a_line_breaks_after_a_slash() -> None:
    from datetime import UTC, datetime

    from sender.model import BatchState
    from sender.ports import BatchRecord
    from sender.status import batch_detail

    uri = "s3://acme-lake/predictions/churn/model=churn-v3/date=2026-11-24/run=nightly-0300/"
    record = BatchRecord("b-1", "churn", uri, BatchState.COMPLETE, {}, datetime.now(UTC))
    console = Console(width=60, record=True, color_system=None)
    with console.capture() as captured:
        console.print(batch_detail(record, []))

    lines = captured.get().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("source  "))
    first, second = lines[start], lines[start + 1]
    assert first.rstrip().endswith("/") and second.startswith("        ")
    assert (first[8:].rstrip() + second.strip()).startswith(uri.rstrip("/"))
