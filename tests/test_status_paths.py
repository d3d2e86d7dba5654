"""Paths in ``sender status`` and ``sender dead-letters``: too long for a line, they break
after a ``/``, never inside a file name."""

from __future__ import annotations

from rich.console import Console

from sender.status import dead_letter_list

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
