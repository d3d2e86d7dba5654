"""The scenarios, each run as its own process against one receiver, measured the same way.

Every scenario is a child process; the harness waits for it with ``os.wait4``, whose
``ru_maxrss`` is the child's peak resident memory (the kernel's figure, not a sample).
Throughput is uncompressed input bytes over the transfer's wall time as the child measured
it: from reading the first byte to the last answer, without interpreter start-up (the same
for every scenario; ``process_s`` in the JSON has the whole process). Bytes on the wire are
what the receiver logged (request line, headers and body of every request, retries too).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .data import FIELDS, DataSet, ensure_next_day
from .receiver import Receiver

__all__ = ["CEILINGS", "SCENARIOS", "Result", "run_scenario"]

CONCURRENCY = 8  # requests in flight, for the sender and the raw loop alike
CHUNK_BYTES = "1MiB"
CHUNK_RECORDS = 1_000_000  # never the cap: chunks are cut by bytes

SCENARIOS = {
    "raw": "1 raw limit (zstd 1)",
    "passthrough": "2 passthrough (zstd 1)",
    "raw_gzip": "1g raw limit (gzip 1)",
    "passthrough_gzip": "2g passthrough (gzip 1)",
    "raw_projection": "3c projection ceiling",
    "projection": "3 projection",
    "raw_parquet": "4c parquet ceiling",
    "parquet": "4 parquet",
    "faults": "5 faults (20% 503)",
    "diff_full": "7f next day, full send",
    "diff": "7 next day, diff sync",
    "naive": "6 naive baseline",
}

# each scenario against its own ceiling, measured in the same run, and the ratio it must reach
CEILINGS = {
    "passthrough": ("raw", 0.7),
    "passthrough_gzip": ("raw_gzip", 0.7),
    "projection": ("raw_projection", 0.7),
    "parquet": ("raw_parquet", 0.7),
    "faults": ("passthrough", 0.8),
    "diff": ("projection", 0.5),
}

# the ceiling loops: scenario -> (input kind, codec)
_RAW = {
    "raw": ("jsonl", "zstd"),
    "raw_gzip": ("jsonl", "gzip"),
    "raw_projection": ("projection", "zstd"),
    "raw_parquet": ("parquet", "zstd"),
}


@dataclass
class Result:
    scenario: str
    data_set: str
    bytes: int  # uncompressed JSONL bytes of the batch
    records: int
    elapsed_s: float
    process_s: float
    peak_rss_mib: float
    cpu_s: float  # user + system CPU of the sending process, start-up included
    requests: int
    requests_ok: int
    wire_bytes: int
    runs: list[float] = field(default_factory=list)  # MB/s of each repetition

    @property
    def mb_s(self) -> float:
        return self.bytes / self.elapsed_s / 1e6

    @property
    def records_s(self) -> float:
        return self.records / self.elapsed_s

    @property
    def wire_ratio(self) -> float:
        return self.wire_bytes / self.bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "mb_s": round(self.mb_s, 1),
            "records_s": round(self.records_s),
            "wire_ratio": round(self.wire_ratio, 4),
        }


def _config(
    folder: Path,
    url: str,
    *,
    fields: bool,
    faults: bool,
    codec: str = "zstd",
    diff: bool = False,
) -> Path:
    lines = [
        "[daemon]",
        f'ledger = "{folder / "ledger.db"}"',
        'log_level = "warning"',
        "",
        "[destinations.bench]",
        'type = "http"',
        f'url = "{url}"',
        'format = "ndjson"',
        f'compression = {{ codec = "{codec}", level = 1 }}',
        f"concurrency = {CONCURRENCY}",
    ]
    if faults:
        # a 503 is answered at once: retry soon, and never let the breaker open on a 20% rate
        lines += [
            'retry = { attempts = 20, initial = "5ms", max = "100ms", budget = "5m" }',
            "circuit = { failures = 1000 }",
        ]
    lines += [
        "",
        "[destinations.dead]",
        'type = "local"',
        f'path = "{folder / "dead"}"',
        "",
        "[routes.bench]",
        'datasets = ["bench"]',
        f'chunk = {{ records = {CHUNK_RECORDS}, bytes = "{CHUNK_BYTES}" }}',
        'targets = ["bench"]',
        'dead_letter = "dead"',
    ]
    if fields:
        pairs = ", ".join(f'{out} = "{path}"' for out, path in FIELDS.items())
        lines.append(f"fields = {{ {pairs} }}")
    if diff:
        lines.append('diff = { key = "customer_id", deletes = true }')
    path = folder / "sender.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _run_child(
    command: list[str], env: dict[str, str] | None = None
) -> tuple[str, float, float, float]:
    """Run a child; its stdout, wall time, peak RSS in MiB and CPU seconds (``wait4``)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(
            f"{command[2:4]} exited with {process.returncode}:\n{stderr[-3000:]}\n{stdout[-2000:]}"
        )
    return stdout, wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime  # maxrss: KiB


def _once(scenario: str, data: DataSet, receiver: Receiver) -> Result:
    parts = sorted(str(p) for p in data.jsonl.glob("part-*"))
    python = sys.executable
    offset = receiver.log_offset()
    if scenario in _RAW:
        kind, codec = _RAW[scenario]
        inputs = parts
        if kind == "parquet":
            inputs = sorted(str(p) for p in data.parquet.glob("part-*"))
        command = [
            python,
            "-m",
            "bench.raw",
            receiver.url,
            *inputs,
            f"--kind={kind}",
            f"--codec={codec}",
            "--level=1",
            f"--concurrency={CONCURRENCY}",
        ]
        stdout, wall, rss, cpu = _run_child(command)
        elapsed = orjson.loads(stdout.strip().splitlines()[-1])["elapsed_s"]
    elif scenario == "naive":
        stdout, wall, rss, cpu = _run_child([python, "-m", "bench.naive", receiver.url, *parts])
        elapsed = orjson.loads(stdout.strip().splitlines()[-1])["elapsed_s"]
    else:
        with tempfile.TemporaryDirectory(prefix="bench-send-") as tmp:
            folder = Path(tmp)
            url = receiver.fault_url if scenario == "faults" else receiver.url
            diffed = scenario in ("diff", "diff_full")
            config = _config(
                folder,
                url,
                fields=scenario == "projection" or diffed,
                faults=scenario == "faults",
                codec="gzip" if scenario == "passthrough_gzip" else "zstd",
                diff=diffed,
            )
            batch = data.parquet if scenario == "parquet" else data.jsonl
            expected = data.records
            send = [python, "-m", "sender.cli", "send", "--dataset=bench", "--json", "--quiet"]
            env = {**os.environ, "SENDER_LOG_LEVEL": "warning"}
            if diffed:
                # day 1 fills the baseline (not measured), day 2 is the run measured
                _run_child([*send, str(batch), "--batch-id=day-1", "-c", str(config)], env=env)
                offset = receiver.log_offset()
                batch, expected = ensure_next_day(data)
                send += ["--batch-id=day-2"] + (["--full"] if scenario == "diff_full" else [])
            stdout, wall, rss, cpu = _run_child([*send, str(batch), "-c", str(config)], env=env)
            outcome = orjson.loads(stdout[stdout.index("{") :])
            records = outcome["records"]
            settled = records["delivered"] + records.get("unchanged", 0)
            if outcome["state"] != "complete" or settled != expected:
                raise RuntimeError(f"{scenario}: the batch was not delivered whole: {outcome}")
            elapsed = outcome["duration_s"]
    requests, ok, wire = receiver.since(offset)
    return Result(
        scenario=scenario,
        data_set=data.name,
        bytes=data.bytes,
        records=data.records,
        elapsed_s=elapsed,
        process_s=wall,
        peak_rss_mib=rss,
        cpu_s=cpu,
        requests=requests,
        requests_ok=ok,
        wire_bytes=wire,
    )


def run_scenario(scenario: str, data: DataSet, receiver: Receiver, repeat: int) -> Result:
    """Run ``repeat`` times; the fastest run (on a machine shared with other work, the one
    least disturbed by it), and the highest peak RSS of all runs."""
    results = [_once(scenario, data, receiver) for _ in range(repeat)]
    results.sort(key=lambda r: r.elapsed_s)
    chosen = results[0]
    chosen.peak_rss_mib = max(r.peak_rss_mib for r in results)
    chosen.runs = [round(r.mb_s, 1) for r in results]
    return chosen
