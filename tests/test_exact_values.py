"""A projected value keeps its value: big integers, odd floats, escapes, nested values."""

from __future__ import annotations

import gzip
import json
import math
from typing import Any

import pytest

from sender.chunker import Lines
from sender.codecs import compress
from sender.errors import ConfigError
from sender.projection import Projection

# values a model writes that a parse through floats or 64-bit integers would change
HARD_VALUES = {
    "big": "123456789012345678901234567890",
    "negative_big": "-98765432109876543210987654321",
    "max_u64_plus_one": "18446744073709551616",
    "neg_zero": "-0.0",
    "subnormal": "5e-324",
    "large_float": "1.7976931348623157e308",
    "trailing_zeros": "0.900900",
    "exponent": "6.02214076E+23",
    "escaped": '"tab\\tquote\\"slash\\\\ \\u00e9 \\ud83d\\ude00"',
    "unicode": '"grüße 東京 🚀"',
    "line_separator": '"a\u2028b"',
    "nested": '{"a": [1, 2.50, {"b": null}], "c": {}}',
    "array": '[true, false, null, ""]',
    "null": "null",
    "empty": '""',
}


def _record_line(values: dict[str, str]) -> bytes:
    body = ", ".join(f'"{key}": {text}' for key, text in values.items())
    return ('{"id": 7, ' + body + ', "skipped": {"deep": [1, 2, 3]}}').encode()


def _strict(value: Any) -> Any:
    """A parsed value with float signs and big integers made visible to ``==``."""
    if isinstance(value, float):
        return ("float", repr(value), math.copysign(1, value))
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strict(v) for v in value]
    return value


def test_projected_values_keep_their_exact_json_text() -> None:
    fields = {f"out_{key}": key for key in HARD_VALUES}
    line = _record_line(HARD_VALUES)
    out, bad = Projection(fields).apply([line])
    assert bad == []
    expected = "{" + ",".join(f'"out_{k}":{v}' for k, v in HARD_VALUES.items()) + "}"
    assert out[0] == expected.encode()


def test_projected_values_parse_to_the_same_values_as_the_input() -> None:
    fields = {key: key for key in HARD_VALUES}
    line = _record_line(HARD_VALUES)
    (out,), _ = Projection(fields).apply(Lines.of([line]))
    given, sent = json.loads(line), json.loads(out)
    assert _strict(sent) == _strict({key: given[key] for key in HARD_VALUES})
    assert sent["big"] == 123456789012345678901234567890  # not 1.2345678901234568e+29


def test_dotted_paths_keep_exact_values_and_a_non_object_parent_gives_null() -> None:
    projection = Projection({"id": "c.id", "score": "c.m.score"})
    out, bad = projection.apply(
        [
            b'{"c": {"id": 123456789012345678901234567890, "m": {"score": -0.0}}}',
            b'{"c": 5}',
            b'{"c": {"id": "x", "m": [1]}}',
            b'{"c": null}',
        ]
    )
    assert bad == []
    assert list(out) == [
        b'{"id":123456789012345678901234567890,"score":-0.0}',
        b'{"id":null,"score":null}',
        b'{"id":"x","score":null}',
        b'{"id":null,"score":null}',
    ]


def test_output_keys_that_need_escaping_are_escaped() -> None:
    out, _ = Projection({'we"ird\\key': "a-b", "ünï": "ünï"}).apply(
        [b'{"a-b": 1, "\xc3\xbcn\xc3\xaf": 2}']
    )
    assert json.loads(out[0]) == {'we"ird\\key': 1, "ünï": 2}


def test_a_key_given_twice_takes_the_last_value_as_json_parsers_do() -> None:
    (out,), _ = Projection({"a": "a"}).apply([b'{"a": 1, "a": 2}'])
    assert json.loads(out) == {"a": 2}


def test_bad_records_carry_the_location_the_reader_gives() -> None:
    lines = [b'{"a": 1}', b"{junk}", b'"text"', b'{"a": NaN}', b'{"a": "\xff"}']
    _, bad = Projection({"a": "a"}).apply(lines, lambda i: f"part-00001.json:{10 + i}")
    assert [(b.location, b.raw) for b in bad] == [
        ("part-00001.json:11", b"{junk}"),
        ("part-00001.json:12", b'"text"'),
        ("part-00001.json:13", b'{"a": NaN}'),
        ("part-00001.json:14", b'{"a": "\xff"}'),
    ]
    assert [b.reason.split(":")[0] for b in bad] == [
        "invalid JSON",
        "not a JSON object",
        "invalid JSON",
        "invalid JSON",
    ]


# -- compression settings ---------------------------------------------------------------------


@pytest.mark.parametrize("level", [1, 2, 3, 6, 9])
def test_every_gzip_level_gives_standard_gzip(level: int) -> None:
    data = b"".join(b'{"id": %d, "score": 0.5}\n' % i for i in range(20000))
    assert gzip.decompress(compress(data, "gzip", level)) == data


def test_gzip_level_one_is_the_fast_default_and_deterministic() -> None:
    data = b"".join(b'{"id": %d}\n' % i for i in range(20000))
    assert compress(data, "gzip") == compress(data, "gzip", 1) == compress(data, "gzip", 1)


def _destination(**extra: Any) -> Any:
    from sender.config import parse_config

    raw = {
        "destinations": {"d": {"type": "local", "path": "/tmp/x", **extra}},
    }
    return parse_config(raw).destinations["d"].options


def test_compression_takes_a_table_with_codec_and_level() -> None:
    options = _destination(compression={"codec": "gzip", "level": 3})
    assert (options.compression, options.compression_level) == ("gzip", 3)
    plain = _destination(compression="zstd", compression_level=5)
    assert (plain.compression, plain.compression_level) == ("zstd", 5)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"codec": "gzip", "level": 12}, "must be <= 9 for gzip"),
        ({"codec": "brotli"}, "compression"),
        ({"level": 3}, "needs a codec"),
        ({"codec": "zstd", "speed": 3}, "unknown keys ['speed']"),
    ],
)
def test_a_bad_compression_table_is_a_config_error(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=r"destinations\.d") as caught:
        _destination(compression=table)
    assert message in str(caught.value)
