"""What a receiver gets for hard values, in every input format (JSONL, CSV with ``types``,
Parquet): parsed output equals parsed input, and passthrough JSONL is byte-identical."""

from __future__ import annotations

import decimal
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sender.app import App
from sender.config import AppConfig
from sender.model import TriggerMessage
from sender.testing.receiver import Receiver


def _config(url: str, *, extra_route: str = "") -> str:
    return f"""
        [daemon]
        ledger = "ledger.db"

        [destinations.api]
        type = "http"
        url = "{url}"
        compression = "none"
        retry = {{ attempts = 2, initial = "5ms", max = "10ms", budget = "2s" }}

        [destinations.dead]
        type = "local"
        path = "dead"

        [routes.r]
        datasets = ["hard"]
        targets = ["api"]
        dead_letter = "dead"
        {extra_route}
        """


async def _send(config: AppConfig, folder: Path, fmt: str) -> Any:
    message = TriggerMessage(batch_id=f"b-{fmt}", dataset="hard", uri=str(folder), format=fmt)  # type: ignore[arg-type]
    async with App(config) as app:
        return await app.engine.run_batch(message)


def _received(receiver: Receiver) -> list[bytes]:
    return [line for r in receiver.accepted for line in r.body.split(b"\n") if line]


def _strict(value: Any) -> Any:
    """Parsed JSON with float signs and types visible to ``==``."""
    if isinstance(value, float):
        return ("float", repr(value), math.copysign(1, value))
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int):
        return ("int", value)
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strict(v) for v in value]
    return value


HARD_JSONL = [
    b'{"id": 1, "big": 123456789012345678901234567890, "neg": -0.0, "tiny": 5e-324,'
    b' "huge": 1.7976931348623157e308, "s": "tab\\t \\"q\\" \\u00e9 \xc3\xa9 \\ud83d\\ude00",'
    b' "nested": {"a": [1, 2.50, null, {"b": ""}]}, "empty": "", "nothing": null}',
    b'{"id": 2, "big": -98765432109876543210, "neg": 0.900900, "tiny": 1E-7, "huge": 6.02e23,'
    b' "s": "\xe6\x9d\xb1\xe4\xba\xac \\u2028", "nested": {}, "empty": "", "nothing": null}',
]


@pytest.fixture
def jsonl_batch(tmp_path: Path) -> Path:
    folder = tmp_path / "batch"
    folder.mkdir()
    (folder / "part-00000.json").write_bytes(b"\n".join(HARD_JSONL) + b"\n")
    (folder / "_SUCCESS").write_bytes(b"")
    return folder


async def test_passthrough_jsonl_arrives_byte_identical(
    write_config: Callable[[str], AppConfig], receiver: Receiver, jsonl_batch: Path
) -> None:
    outcome = await _send(write_config(_config(receiver.url)), jsonl_batch, "jsonl")
    assert outcome.ok
    assert _received(receiver) == HARD_JSONL


async def test_projected_jsonl_values_parse_to_the_values_given(
    write_config: Callable[[str], AppConfig], receiver: Receiver, jsonl_batch: Path
) -> None:
    names = ["big", "neg", "tiny", "huge", "s", "nested", "empty", "nothing"]
    fields = ", ".join(f'out_{n} = "{n}"' for n in names)
    config = write_config(_config(receiver.url, extra_route=f"fields = {{ {fields} }}"))
    assert (await _send(config, jsonl_batch, "jsonl")).ok
    sent = [json.loads(line) for line in _received(receiver)]
    given = [json.loads(line) for line in HARD_JSONL]
    assert [_strict(s) for s in sent] == [_strict({f"out_{n}": g[n] for n in names}) for g in given]
    assert sent[0]["out_big"] == 123456789012345678901234567890


CSV = (
    "id,score,n,active,meta,label\n"
    '1,0.900900,123456789012345678901234567890,true,"{""a"": [1, 2.5]}",x\n'
    "2,-0.0,-7,no,null,\n"
    "3,,,,,\n"
    '4,1e-7,0,1,"[""é""]",東\n'
)


@pytest.fixture
def csv_batch(tmp_path: Path) -> Path:
    folder = tmp_path / "csv"
    folder.mkdir()
    (folder / "part-00000.csv").write_text(CSV, encoding="utf-8")
    (folder / "_SUCCESS").write_bytes(b"")
    return folder


TYPES = 'types = { id = "int", score = "float", n = "int", active = "bool", meta = "json" }'


async def test_csv_with_types_sends_numbers_booleans_and_json(
    write_config: Callable[[str], AppConfig], receiver: Receiver, csv_batch: Path
) -> None:
    config = write_config(_config(receiver.url, extra_route=TYPES))
    assert (await _send(config, csv_batch, "csv")).ok
    sent = [json.loads(line) for line in _received(receiver)]
    assert [_strict(s) for s in sent] == [
        _strict(s)
        for s in [
            {"id": 1, "score": 0.9009, "n": 123456789012345678901234567890, "active": True,
             "meta": {"a": [1, 2.5]}, "label": "x"},
            {"id": 2, "score": -0.0, "n": -7, "active": False, "meta": None, "label": ""},
            {"id": 3, "score": None, "n": None, "active": None, "meta": None, "label": ""},
            {"id": 4, "score": 1e-7, "n": 0, "active": True, "meta": ["é"], "label": "東"},
        ]
    ]  # fmt: skip
    assert b'"score":0.900900' in _received(receiver)[0]  # the number as the model wrote it


async def test_csv_without_types_stays_strings(
    write_config: Callable[[str], AppConfig], receiver: Receiver, csv_batch: Path
) -> None:
    assert (await _send(write_config(_config(receiver.url)), csv_batch, "csv")).ok
    first = json.loads(_received(receiver)[0])
    assert first["score"] == "0.900900" and first["id"] == "1"


async def test_a_csv_cell_that_does_not_cast_is_a_bad_record_at_its_line_and_field(
    write_config: Callable[[str], AppConfig], receiver: Receiver, tmp_path: Path
) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "part-00000.csv").write_text(
        'id,score\n1,0.5\n2,"multi\nline"\n3,abc\n4,NaN\n5,0.25\n', encoding="utf-8"
    )
    (folder / "_SUCCESS").write_bytes(b"")
    config = write_config(_config(receiver.url, extra_route='types = { score = "float" }'))
    outcome = await _send(config, folder, "csv")
    assert [json.loads(line)["id"] for line in _received(receiver)] == ["1", "5"]
    assert outcome.totals.rejected == 3
    rejects = sorted((tmp_path / "dead").rglob("rejects-*.ndjson"))
    stored = [json.loads(line) for path in rejects for line in path.read_text().splitlines()]
    assert [(s["location"], s["reason"].split(" is ")[0]) for s in stored] == [
        ("part-00000.csv:4", "field 'score': 'multi\\nline'"),
        ("part-00000.csv:5", "field 'score': 'abc'"),
        ("part-00000.csv:6", "field 'score': 'NaN'"),
    ]


async def test_a_ragged_csv_row_is_stored_raw_in_the_rejects(
    write_config: Callable[[str], AppConfig], receiver: Receiver, tmp_path: Path
) -> None:
    folder = tmp_path / "ragged"
    folder.mkdir()
    ragged = '2,"quoted, with a comma" , extra'
    (folder / "part-00000.csv").write_text(f"id,score\n1,0.5\n{ragged}\n3,0.25\n")
    (folder / "_SUCCESS").write_bytes(b"")
    outcome = await _send(write_config(_config(receiver.url)), folder, "csv")
    assert [json.loads(line)["id"] for line in _received(receiver)] == ["1", "3"]
    assert outcome.totals.rejected == 1
    (rejects,) = (tmp_path / "dead").rglob("rejects-*.ndjson")
    (stored,) = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert stored["location"] == "part-00000.csv:3"
    assert stored["reason"] == "3 columns, header has 2"
    assert stored["raw"] == ragged  # as written, not re-joined from the parsed fields


def test_types_must_name_a_known_type(write_config: Callable[[str], AppConfig]) -> None:
    from sender.errors import ConfigError

    with pytest.raises(ConfigError, match=r"routes\.r\.types\.score"):
        write_config(_config("http://127.0.0.1:1/", extra_route='types = { score = "double" }'))


async def test_parquet_values_arrive_with_their_values(
    write_config: Callable[[str], AppConfig], receiver: Receiver, tmp_path: Path
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    big = decimal.Decimal("123456789012345678901234567890")
    table = pa.table(
        {
            "i64": pa.array([9223372036854775807, -9223372036854775808], pa.int64()),
            "big": pa.array([big, -big], pa.decimal128(38, 0)),
            "f": [-0.0, 5e-324],
            "huge": [1.7976931348623157e308, 0.1],
            "s": ['tab\t "q" é 東京 🚀', ""],
            "nested": [{"a": [1, 2]}, None],
            "flag": [True, None],
        }
    )
    folder = tmp_path / "pq"
    folder.mkdir()
    pq.write_table(table, folder / "part-00000.snappy.parquet")
    (folder / "_SUCCESS").write_bytes(b"")
    assert (await _send(write_config(_config(receiver.url)), folder, "parquet")).ok
    sent = [json.loads(line) for line in _received(receiver)]
    assert [_strict(s) for s in sent] == [_strict(row) for row in json.loads(json.dumps(
        [{**row, "big": int(row["big"])} for row in table.to_pylist()]
    ))]  # fmt: skip
    assert sent[0]["big"] == 123456789012345678901234567890


async def test_daemon_max_record_bytes_makes_a_longer_line_a_bad_record(
    write_config: Callable[[str], AppConfig], receiver: Receiver, tmp_path: Path
) -> None:
    folder = tmp_path / "long"
    folder.mkdir()
    long = b'{"id": 2, "pad": "' + b"x" * (3 * 1024 * 1024) + b'"}'
    (folder / "part-00000.json").write_bytes(b'{"id": 1}\n' + long + b'\n{"id": 3}\n')
    (folder / "_SUCCESS").write_bytes(b"")
    text = _config(receiver.url).replace(
        'ledger = "ledger.db"', 'ledger = "ledger.db"\nmax_record_bytes = "1MiB"'
    )
    outcome = await _send(write_config(text), folder, "jsonl")
    assert _received(receiver) == [b'{"id": 1}', b'{"id": 3}']
    assert outcome.totals.rejected == 1 and outcome.totals.reconciled
