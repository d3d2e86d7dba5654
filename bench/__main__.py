"""``python -m bench`` (``make bench``): the benchmark, from data generation to the chart.

Environment:
    BENCH_LARGE=1        also the 2 GB data set (after the 100 MB one)
    BENCH_REPEAT=N       runs per scenario on the small set (default 3; the fastest is shown)
    BENCH_REPEAT_LARGE=N runs per scenario on the large set (default 1)
    BENCH_SCENARIOS=a,b  only these (see harness.SCENARIOS; a ratio needs its ceiling too)
    BENCH_RECEIVER=aiohttp  use the aiohttp receiver even when nginx is installed
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from pathlib import Path

from rich.console import Console

from .data import ensure
from .harness import SCENARIOS, Result, run_scenario
from .receiver import Receiver
from .report import RESULTS_DIR, print_table, write_chart, write_json


def main() -> int:
    # a SIGTERM unwinds like Ctrl-C, so the receiver (its own session) is stopped too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    console = Console()
    os.chdir(Path(__file__).resolve().parent.parent)  # children import bench and sender
    sets = ["small"] + (["large"] if os.environ.get("BENCH_LARGE") == "1" else [])
    wanted = [s for s in os.environ.get("BENCH_SCENARIOS", ",".join(SCENARIOS)).split(",") if s]
    unknown = set(wanted) - set(SCENARIOS)
    if unknown:
        console.print(f"unknown scenarios {sorted(unknown)}; known: {list(SCENARIOS)}")
        return 2
    repeat_small = int(os.environ.get("BENCH_REPEAT", "3"))
    repeat_large = int(os.environ.get("BENCH_REPEAT_LARGE", "1"))
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-receiver-") as tmp:
        prefer_nginx = os.environ.get("BENCH_RECEIVER", "nginx") != "aiohttp"
        with Receiver(Path(tmp), prefer_nginx=prefer_nginx) as receiver:
            console.print(f"receiver: {receiver.kind} on {receiver.url}")
            for name in sets:
                with console.status(f"preparing the {name} data set"):
                    data = ensure(name)
                console.print(
                    f"[bold]{name}[/]: {data.bytes / 1e6:,.0f} MB JSONL, {data.records:,} records"
                )
                repeat = repeat_small if name == "small" else repeat_large
                for scenario in SCENARIOS:
                    if scenario not in wanted:
                        continue
                    with console.status(f"{name}: {SCENARIOS[scenario]}"):
                        result = run_scenario(scenario, data, receiver, repeat)
                    results.append(result)
                    console.print(
                        f"  {SCENARIOS[scenario]:<22} {result.mb_s:8,.0f} MB/s "
                        f"{result.peak_rss_mib:6,.0f} MiB  runs {result.runs}"
                    )
            kind = receiver.kind
    print_table(results, kind, console)
    write_json(results, kind, RESULTS_DIR / "latest.json")
    write_chart(results, RESULTS_DIR / "latest.png")
    console.print(f"wrote {RESULTS_DIR / 'latest.json'} and {RESULTS_DIR / 'latest.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
