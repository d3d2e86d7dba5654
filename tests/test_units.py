"""Human units in config files: durations, sizes and rates, and their readable errors."""

from __future__ import annotations

import math

import pytest

from sender.units import Rate, format_size, parse_duration, parse_rate, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1.5s", 1.5),
        (" 10 s ", 10.0),
        ("45", 45.0),
        (12, 12.0),
        (0.25, 0.25),
        ("0s", 0.0),
    ],
)
def test_duration_is_read_in_seconds(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "5 parsecs", "-1s", "1.s", "s", "5mins", "1e3s"])
def test_duration_that_is_not_one_is_refused_with_examples(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


@pytest.mark.parametrize("value", [-1, -0.5])
def test_negative_duration_is_refused(value: float) -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        parse_duration(value)


@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_infinite_duration_is_refused(value: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        parse_duration(value)


@pytest.mark.parametrize("value", [True, [1], {"s": 1}, None])
def test_duration_of_the_wrong_type_is_a_value_error_not_a_crash(value: object) -> None:
    # pydantic turns only ValueError into "key.path: message"; a TypeError would escape
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4MiB", 4 * 1024 * 1024),
        ("4mib", 4 * 1024 * 1024),
        ("512KiB", 512 * 1024),
        ("1GiB", 1024**3),
        ("1TiB", 1024**4),
        ("4MB", 4_000_000),
        ("4 MB", 4_000_000),
        ("512KB", 512_000),
        ("1.5KiB", 1536),
        ("100B", 100),
        ("100", 100),
        (2048, 2048),
    ],
)
def test_size_is_read_in_bytes(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "big", "4M", "-1MiB", "4 parsecs", "MiB"])
def test_size_that_is_not_one_is_refused_with_examples(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(text)


@pytest.mark.parametrize("value", [True, 1.5, [4], None])
def test_size_of_the_wrong_type_is_a_value_error_not_a_crash(value: object) -> None:
    with pytest.raises(ValueError, match="expected a size"):
        parse_size(value)  # type: ignore[arg-type]


def test_negative_size_is_refused() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        parse_size(-1)


@pytest.mark.parametrize(
    ("text", "per_second", "unit"),
    [
        ("20/s", 20.0, "requests"),
        ("20 / s", 20.0, "requests"),
        ("1200/m", 20.0, "requests"),
        ("3600/h", 1.0, "requests"),
        ("10/5s", 2.0, "requests"),
        ("5/500ms", 10.0, "requests"),
        ("5000 records/s", 5000.0, "records"),
        ("20 requests/s", 20.0, "requests"),
    ],
)
def test_rate_is_read_per_second_with_its_unit(text: str, per_second: float, unit: str) -> None:
    rate = parse_rate(text)
    assert rate.per_second == pytest.approx(per_second)
    assert rate.unit == unit


@pytest.mark.parametrize("text", ["fast", "20", "20/parsec", "20/sec", "/s", "-1/s"])
def test_rate_that_is_not_one_is_refused_with_examples(text: str) -> None:
    with pytest.raises(ValueError, match="is not a rate"):
        parse_rate(text)


@pytest.mark.parametrize("text", ["0/s", "5/0s"])
def test_zero_rate_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        parse_rate(text)


@pytest.mark.parametrize("value", [20, 2.5, None])
def test_rate_of_the_wrong_type_is_a_value_error_not_a_crash(value: object) -> None:
    with pytest.raises(ValueError, match="expected a rate"):
        parse_rate(value)  # type: ignore[arg-type]


def test_rate_passes_through_and_prints_as_written() -> None:
    rate = Rate(20, 1)
    assert parse_rate(rate) is rate
    assert str(parse_rate("20/s")) == "20/1s"
    assert str(parse_rate("5000 records/s")) == "5000 records/1s"
    assert parse_rate(str(parse_rate("10/5s"))) == parse_rate("10/5s")


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (4 * 1024**2, "4.0 MiB"),
        (3 * 1024**4, "3072.0 GiB"),
    ],
)
def test_sizes_print_as_on_call_reads_them(size: int, text: str) -> None:
    assert format_size(size) == text
