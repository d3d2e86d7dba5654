"""``sender send`` to a route whose target is ``type = "example_files"``, as a user runs it:
the installed ``sender`` command, a config file, a Spark-style batch folder."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

SENDER = str(Path(sys.executable).with_name("sender"))

CONFIG = """\
[daemon]
ledger = "ledger.db"

[destinations.files]
type = "example_files"
path = "delivered"

[destinations.dead]
type = "local"
path = "dead"

[routes.churn]
datasets = ["churn"]
chunk = { records = 4 }
targets = ["files"]
dead_letter = "dead"
"""


def sender(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SENDER_CONFIG": "", "COLUMNS": "100"}
    return subprocess.run(
        [SENDER, *args, "-c", str(folder / "sender.toml")],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def write_batch(folder: Path, records: int) -> Path:
    batch = folder / "lake" / "churn" / "2026-11-24"
    batch.mkdir(parents=True)
    for part in range(2):
        lines = [
            json.dumps({"customer_id": f"c-{i}", "churn_score": i / records})
            for i in range(part, records, 2)
        ]
        (batch / f"part-{part:05d}.json").write_text("\n".join(lines) + "\n")
    (batch / "_SUCCESS").write_text("")
    return batch


def delivered(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "delivered").iterdir())}


def records_in(files: dict[str, bytes]) -> list[str]:
    return sorted(
        json.loads(line)["customer_id"]
        for data in files.values()
        for line in gzip.decompress(data).splitlines()
    )


def test_send_delivers_every_record_and_resending_is_idempotent(tmp_path: Path) -> None:
    (tmp_path / "sender.toml").write_text(CONFIG)
    batch = write_batch(tmp_path, 10)
    send = ["send", str(batch), "--dataset", "churn", "--batch-id", "b-1", "--json", "-q"]

    first = sender(tmp_path, *send)

    assert first.returncode == 0, first.stderr
    outcome = json.loads(first.stdout)
    assert (outcome["state"], outcome["records"]["delivered"]) == ("complete", 10)
    files = delivered(tmp_path)
    assert len(files) == 3  # chunks of 4, 4 and 2 records, one file each
    assert records_in(files) == sorted(f"c-{i}" for i in range(10))
    written = {name: (tmp_path / "delivered" / name).stat().st_mtime_ns for name in files}

    again = sender(tmp_path, *send)  # the pipeline step ran twice

    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["already_complete"] is True
    assert delivered(tmp_path) == files
    assert {n: (tmp_path / "delivered" / n).stat().st_mtime_ns for n in files} == written

    replay = sender(tmp_path, "replay", "b-1", "--all", "--json", "-q")

    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert delivered(tmp_path) == files  # the same names, the same bytes
    assert not (tmp_path / "dead").exists()  # nothing was refused
