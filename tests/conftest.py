"""Shared fixtures: a real receiver on loopback, config files, batches."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from sender.config import AppConfig, load_config
from sender.testing.receiver import Receiver


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver() as server:
        yield server


@pytest.fixture
async def backup_receiver() -> AsyncIterator[Receiver]:
    async with Receiver() as server:
        yield server


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], AppConfig]:
    """Write a TOML config (dedented) to ``tmp_path/sender.toml`` and load it."""

    def write(text: str) -> AppConfig:
        path = tmp_path / "sender.toml"
        path.write_text(textwrap.dedent(text))
        return load_config(path)

    return write


@pytest.fixture
def closed_port_url() -> str:
    """An http URL where nothing listens (connection refused)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/down"


# brokers for the trigger tests (SQS through moto, RabbitMQ queues)
from tests.brokers import amqp_queue, sqs_queue, sqs_server  # noqa: F401, E402

# session-scoped object stores on loopback (S3 through moto, GCS through fake-gcs-server)
from tests.cloud import gcs_server, moto_process, moto_server  # noqa: E402, F401
