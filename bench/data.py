"""Benchmark data sets: Spark-style batches of ~300-byte prediction records.

Each set exists twice under ``bench/data/<size>/``: ``jsonl/`` (``part-*.json`` files) and
``parquet/`` (``part-*.snappy.parquet``), each with a ``_SUCCESS`` marker written last, so a
half-written set is regenerated rather than measured.

Generating 2 GB must not take longer than sending it, so records are not serialised one by
one: a block of distinct records is rendered once, and every further block is the same bytes
with the ids rewritten in place (numpy does the digits). Ids are fixed-width, so each record
keeps its length and offset.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["DATA_DIR", "FIELDS", "DataSet", "ensure", "ensure_next_day", "record"]

DATA_DIR = Path(__file__).resolve().parent / "data"
_BLOCK = 4096  # distinct records rendered per template block
_ID_DIGITS = 10
_PLANS = ("basic", "gold", "pro", "enterprise")
_REGIONS = ("emea-west", "emea-east", "amer-north", "amer-south", "apac")
_LABELS = ("likely_churn", "stable", "at_risk")

# the projection scenario's route: two flat and three dotted inputs
FIELDS = {
    "customer_id": "id",
    "churn_score": "score",
    "model": "model",
    "plan": "features.plan",
    "tenure": "features.tenure_months",
}

SIZES = {"small": 100 * 1000 * 1000, "large": 2000 * 1000 * 1000}
PARTS = {"small": 4, "large": 16}


def record(i: int, ident: int | None = None) -> dict[str, object]:
    """The ``i``-th distinct record (ids are rewritten per block; ``ident`` sets one)."""
    return {
        "id": f"cust-{(i if ident is None else ident):0{_ID_DIGITS}d}",
        "score": round((i * 7919 % 100003) / 100003, 6),
        "model": "churn-v3",
        "model_version": "3.2.1",
        "scored_at": "2026-11-24T03:00:00Z",
        "label": _LABELS[i % 3],
        "features": {
            "tenure_months": i % 120,
            "plan": _PLANS[i % 4],
            "monthly_spend": round(10 + (i * 37 % 9000) / 100, 2),
            "usage": [round((i % 13) / 13, 3), round((i % 7) / 7, 3), round((i % 11) / 11, 3)],
            "region": _REGIONS[i % 5],
        },
        "segment": "emea-enterprise",
        "run": "daily-2026-11-24",
    }


def _template() -> tuple[np.ndarray, np.ndarray]:
    """A block of ``_BLOCK`` NDJSON lines, and the offset of each line's id digits."""
    lines = [
        json.dumps(record(i, ident=0), separators=(",", ":")).encode() + b"\n"
        for i in range(_BLOCK)
    ]
    prefix = len(b'{"id":"cust-')
    offsets = np.cumsum([0] + [len(line) for line in lines[:-1]], dtype=np.int64) + prefix
    return np.frombuffer(b"".join(lines), dtype=np.uint8).copy(), offsets


def _write_jsonl(folder: Path, total_bytes: int, parts: int) -> int:
    """Write ``parts`` files of about ``total_bytes / parts`` each; the number of records."""
    block, offsets = _template()
    per_block = len(block)
    blocks_per_part = max(1, round(total_bytes / parts / per_block))
    powers = 10 ** np.arange(_ID_DIGITS - 1, -1, -1, dtype=np.int64)
    positions = offsets[:, None] + np.arange(_ID_DIGITS)
    ident = 0
    for p in range(parts):
        with open(folder / f"part-{p:05d}-c000.json", "wb") as file:
            for _ in range(blocks_per_part):
                ids = np.arange(ident, ident + _BLOCK, dtype=np.int64)
                block[positions] = (ids[:, None] // powers % 10 + 48).astype(np.uint8)
                file.write(block.tobytes())
                ident += _BLOCK
    return ident


def _write_parquet(jsonl: Path, folder: Path) -> None:
    """The same records as Parquet, one part per JSONL part, 128k-row groups (Spark-like)."""
    import polars as pl

    for part in sorted(jsonl.glob("part-*.json")):
        frame = pl.read_ndjson(part)
        name = part.name.replace(".json", ".snappy.parquet")
        frame.write_parquet(folder / name, compression="snappy", row_group_size=128 * 1024)
        del frame


@dataclass(frozen=True)
class DataSet:
    name: str
    jsonl: Path
    parquet: Path
    bytes: int  # uncompressed JSONL bytes
    records: int


def ensure(name: str) -> DataSet:
    """The data set ``small`` or ``large``, generated on first use."""
    root = DATA_DIR / name
    jsonl, parquet = root / "jsonl", root / "parquet"
    meta = root / "meta.json"
    if not (jsonl / "_SUCCESS").exists() or not meta.exists():
        jsonl.mkdir(parents=True, exist_ok=True)
        for old in jsonl.iterdir():
            old.unlink()
        records = _write_jsonl(jsonl, SIZES[name], PARTS[name])
        (jsonl / "_SUCCESS").write_bytes(b"")
        size = sum(f.stat().st_size for f in jsonl.glob("part-*"))
        meta.write_text(json.dumps({"records": records, "bytes": size}))
    info = json.loads(meta.read_text())
    if not (parquet / "_SUCCESS").exists():
        parquet.mkdir(parents=True, exist_ok=True)
        for old in parquet.iterdir():
            old.unlink()
        _write_parquet(jsonl, parquet)
        (parquet / "_SUCCESS").write_bytes(b"")
    return DataSet(name, jsonl, parquet, info["bytes"], info["records"])


def ensure_next_day(data: DataSet) -> tuple[Path, int]:
    """The day after ``data``: the same records with 5% of scores changed, 1% gone and 1% new
    (``<set>/jsonl-day2``), for the diff-sync scenario; its folder and record count."""
    folder = data.jsonl.parent / "jsonl-day2"
    meta = data.jsonl.parent / "day2-meta.json"  # beside the batch: inside, it is a record
    if not (folder / "_SUCCESS").exists() or not meta.exists():
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            old.unlink()
        records, fresh = 0, 0
        for part in sorted(data.jsonl.glob("part-*")):
            out = []
            for i, line in enumerate(part.read_bytes().splitlines()):
                if i % 100 == 1:  # gone
                    continue
                if i % 20 == 2:  # changed: the score moves
                    line = line.replace(b'"score":', b'"score":1', 1)
                out.append(line)
                if i % 100 == 3:  # a new customer beside this one
                    fresh += 1
                    out.append(line.replace(b'"cust-', b'"new-', 1))
            records += len(out)
            (folder / part.name).write_bytes(b"\n".join(out) + b"\n")
        (folder / "_SUCCESS").write_bytes(b"")
        meta.write_text(json.dumps({"records": records, "new": fresh}))
    return folder, json.loads(meta.read_text())["records"]


if __name__ == "__main__":  # python -m bench.data small
    import sys
    import time

    for arg in sys.argv[1:] or ["small"]:
        started = time.perf_counter()
        data = ensure(arg)
        print(data, f"{time.perf_counter() - started:.1f}s", os.getpid())
