"""The contract suites ship in ``sender.testing`` for third-party adapters; the receiver that
``sender demo`` runs lives there too and must not need pytest, which a production install
(``integration-sender[all]``, the Docker image) does not have."""

from __future__ import annotations

import subprocess
import sys

import sender.testing

_WITHOUT_PYTEST = """
import sys
sys.modules["pytest"] = None  # as if it were not installed
import sender.demo
import sender.testing.receiver
assert "sender.testing.trigger" not in sys.modules
"""


def test_the_receiver_and_the_demo_import_without_pytest() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_PYTEST], capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 0, done.stderr


def test_every_suite_is_exported_from_sender_testing() -> None:
    suites = [name for name in sender.testing.__all__ if name.endswith("Contract")]

    assert {"SourceContract", "DestinationContract", "TriggerContract", "LedgerContract"} <= set(
        suites
    )
    for name in sender.testing.__all__:
        assert getattr(sender.testing, name).__name__ == name
