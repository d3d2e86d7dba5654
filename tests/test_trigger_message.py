"""Trigger messages are checked before any work: a batch id is limited in UTF-8 bytes (file
names are limited in bytes, not characters), so an id that would fail only when its spool copy
or dead letters are written is an invalid message, rejected at once."""

from __future__ import annotations

import pytest

from sender.errors import MessageError
from sender.model import MAX_BATCH_ID_BYTES, parse_trigger_message


def message(batch_id: str) -> dict[str, str]:
    return {"batch_id": batch_id, "dataset": "churn", "uri": "s3://lake/churn/"}


def test_a_batch_id_of_200_ascii_bytes_is_valid() -> None:
    assert parse_trigger_message(message("b" * MAX_BATCH_ID_BYTES)).batch_id == "b" * 200


@pytest.mark.parametrize("batch_id", ["é" * 101, "é" * 200, "日" * 67, "b" * 199 + "é"])
def test_a_batch_id_over_200_utf8_bytes_is_an_invalid_message(batch_id: str) -> None:
    with pytest.raises(MessageError, match=r"batch_id: .* bytes in UTF-8, more than the 200"):
        parse_trigger_message(message(batch_id))
