"""The results: a rich table on the terminal, ``latest.json`` and a PNG chart."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from .harness import CEILINGS, SCENARIOS, Result

__all__ = ["RESULTS_DIR", "machine", "markdown_table", "print_table", "write_chart", "write_json"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) // 1024
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_mib": memory,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def _rows(results: Sequence[Result]) -> list[dict[str, Any]]:
    by_key = {(r.data_set, r.scenario): r for r in results}
    rows = []
    for r in results:
        naive = by_key.get((r.data_set, "naive"))
        ceiling_name, target = CEILINGS.get(r.scenario, (None, None))
        ceiling = by_key.get((r.data_set, ceiling_name)) if ceiling_name else None
        rows.append(
            {
                "data_set": r.data_set,
                "scenario": SCENARIOS[r.scenario],
                "mb_s": r.mb_s,
                "records_s": r.records_s,
                "wire_ratio": r.wire_ratio,
                "peak_rss_mib": r.peak_rss_mib,
                "ceiling": SCENARIOS[ceiling_name] if ceiling else None,
                "vs_ceiling": r.mb_s / ceiling.mb_s if ceiling else None,
                "target": target if ceiling else None,
                "vs_naive": r.mb_s / naive.mb_s if naive else None,
                "naive_rss_share": r.peak_rss_mib / naive.peak_rss_mib if naive else None,
            }
        )
    return rows


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _verdict(row: dict[str, Any]) -> str:
    if row["target"] is None:
        return ""
    met = row["vs_ceiling"] >= row["target"]
    return f"{'met' if met else 'MISSED'} (≥ {row['target']:.1f})"


_COLUMNS = (
    "set",
    "scenario",
    "MB/s",
    "records/s",
    "wire/read",
    "peak RSS",
    "vs its ceiling",
    "target",
    "vs naive",
)


def _cells(row: dict[str, Any]) -> list[str]:
    return [
        row["data_set"],
        row["scenario"],
        f"{row['mb_s']:,.0f}",
        f"{row['records_s']:,.0f}",
        f"{row['wire_ratio']:.3f}",
        f"{row['peak_rss_mib']:,.0f} MiB",
        _ratio(row["vs_ceiling"]),
        _verdict(row),
        _ratio(row["vs_naive"]),
    ]


def print_table(results: Sequence[Result], receiver: str, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"integration-sender benchmark (receiver: {receiver})")
    for column in _COLUMNS:
        table.add_column(column, justify="left" if column in ("set", "scenario") else "right")
    for row in _rows(results):
        table.add_row(*_cells(row))
    console.print(table)


def markdown_table(results: Sequence[Result]) -> str:
    head = "| " + " | ".join(_COLUMNS) + " |\n| --- | --- |" + " ---: |" * (len(_COLUMNS) - 2)
    body = "".join("\n| " + " | ".join(_cells(row)) + " |" for row in _rows(results))
    return head + body + "\n"


def write_json(results: Sequence[Result], receiver: str, path: Path) -> None:
    document = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "receiver": receiver,
        "results": [r.to_dict() for r in results],
        "table": _rows(results),
        "markdown": markdown_table(results),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    tmp.replace(path)


def write_chart(results: Sequence[Result], path: Path) -> None:
    """Two panels, throughput and peak memory, one bar per scenario and data set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(dict.fromkeys(r.data_set for r in results))
    scenarios = list(dict.fromkeys(r.scenario for r in results))
    by_key = {(r.data_set, r.scenario): r for r in results}
    width = 0.8 / len(sets)
    figure, (speed, memory) = plt.subplots(1, 2, figsize=(13, 4.8))
    positions = range(len(scenarios))
    for i, name in enumerate(sets):
        xs = [p + (i - (len(sets) - 1) / 2) * width for p in positions]
        mbs = [by_key[(name, s)].mb_s if (name, s) in by_key else 0 for s in scenarios]
        rss = [by_key[(name, s)].peak_rss_mib if (name, s) in by_key else 0 for s in scenarios]
        bars = speed.bar(xs, mbs, width, label=name)
        speed.bar_label(bars, fmt="%.0f", fontsize=7)
        bars = memory.bar(xs, rss, width, label=name)
        memory.bar_label(bars, fmt="%.0f", fontsize=7)
    labels = [SCENARIOS[s].split(" ", 1)[1] for s in scenarios]
    for axis, title, unit in (
        (speed, "throughput (uncompressed input)", "MB/s"),
        (memory, "peak RSS of the sending process", "MiB"),
    ):
        axis.set_xticks(list(positions), labels, rotation=20, ha="right", fontsize=8)
        axis.set_title(title)
        axis.set_ylabel(unit)
        axis.legend(fontsize=8)
    memory.set_yscale("log")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
