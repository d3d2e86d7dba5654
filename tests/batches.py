"""Prediction batches for tests: Spark-style folders of JSONL, CSV or Parquet part files."""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

__all__ = ["prediction", "write_batch"]


def prediction(i: int) -> dict[str, Any]:
    """One ~300-byte prediction record with nested features, as a churn model writes it."""
    return {
        "id": f"cust-{i:08d}",
        "score": round((i * 7919 % 10007) / 10007, 6),
        "model": "churn-v3",
        "scored_at": "2026-11-24T03:00:00Z",
        "features": {
            "tenure_months": i % 120,
            "plan": ["basic", "gold", "pro"][i % 3],
            "usage": [round((i % 13) / 13, 3), round((i % 7) / 7, 3)],
        },
        "segment": "emea-enterprise",
    }


def _parts(records: int, parts: int) -> Iterator[range]:
    size = -(-records // parts) if records else 0
    for p in range(parts):
        yield range(p * size, min(records, (p + 1) * size))


def write_batch(
    folder: Path,
    records: int,
    *,
    parts: int = 3,
    fmt: str = "jsonl",
    gz: bool = False,
    success: bool = True,
    start: int = 0,
) -> Path:
    """Write ``records`` predictions over ``parts`` Spark part files; return the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for p, numbers in enumerate(_parts(records, parts)):
        rows = [prediction(start + i) for i in numbers]
        if fmt == "jsonl":
            data = b"".join(orjson.dumps(r) + b"\n" for r in rows)
            name = f"part-{p:05d}-c000.json"
        elif fmt == "csv":
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(["id", "score", "model"])
            writer.writerows([r["id"], r["score"], r["model"]] for r in rows)
            data = out.getvalue().encode()
            name = f"part-{p:05d}-c000.csv"
        elif fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            buffer = io.BytesIO()
            pq.write_table(pa.Table.from_pylist(rows), buffer, row_group_size=1000)
            data = buffer.getvalue()
            name = f"part-{p:05d}-c000.snappy.parquet"
        else:
            raise ValueError(fmt)
        if gz:
            data = gzip.compress(data)
            name += ".gz"
        (folder / name).write_bytes(data)
        (folder / f".{name}.crc").write_bytes(b"crc")
    if success:
        (folder / "_SUCCESS").write_bytes(b"")
    return folder
