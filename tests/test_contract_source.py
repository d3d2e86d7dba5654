"""Every built-in source passes the source contract (``sender.testing``), each against its
real store on loopback: a folder, moto (S3), fake-gcs-server (GCS), and the in-memory fake."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

import pytest

from sender.testing import SourceContract
from sender_adapters.gcs import GcsSource
from sender_adapters.local import LocalSource
from sender_adapters.memory import MemorySource
from sender_adapters.s3 import S3Source
from tests.cloud import GcsBucket, GcsServer, MotoServer, S3Bucket, bucket_name

Seed = Callable[[Mapping[str, bytes]], str]


class TestLocalSource(SourceContract):
    @pytest.fixture
    async def source(self) -> AsyncIterator[LocalSource]:
        async with LocalSource("local", LocalSource.Options(type="local")) as source:
            yield source

    @pytest.fixture
    def seed(self, tmp_path: Path) -> Seed:
        def write(objects: Mapping[str, bytes]) -> str:
            root = tmp_path / "lake" / "batch"
            for key, data in objects.items():
                (root / key).parent.mkdir(parents=True, exist_ok=True)
                (root / key).write_bytes(data)
            return str(root)

        return write


class TestLocalSourceWithFileUris(TestLocalSource):
    @pytest.fixture
    def seed(self, tmp_path: Path) -> Seed:
        def write(objects: Mapping[str, bytes]) -> str:
            root = tmp_path / "lake" / "batch"
            for key, data in objects.items():
                (root / key).parent.mkdir(parents=True, exist_ok=True)
                (root / key).write_bytes(data)
            return f"file://{root}"

        return write


class TestS3Source(SourceContract):
    @pytest.fixture
    async def source(self, moto_server: MotoServer) -> AsyncIterator[S3Source]:
        options = S3Source.Options(type="s3", endpoint_url=moto_server.endpoint_url)
        async with S3Source("s3", options) as source:
            yield source

    @pytest.fixture
    def seed(self, moto_server: MotoServer, request: pytest.FixtureRequest) -> Seed:
        bucket = S3Bucket(moto_server, bucket_name(request.node.nodeid))

        def write(objects: Mapping[str, bytes]) -> str:
            for key, data in objects.items():
                bucket.put(f"lake/batch/{key}", data)
            return bucket.uri("lake/batch")

        return write


class TestGcsSource(SourceContract):
    @pytest.fixture
    async def source(self, gcs_server: GcsServer) -> AsyncIterator[GcsSource]:
        options = GcsSource.Options(type="gcs", endpoint=gcs_server.url)
        async with GcsSource("gcs", options) as source:
            yield source

    @pytest.fixture
    def seed(self, gcs_server: GcsServer, request: pytest.FixtureRequest) -> Seed:
        bucket = GcsBucket(gcs_server, bucket_name(request.node.nodeid))

        def write(objects: Mapping[str, bytes]) -> str:
            for key, data in objects.items():
                bucket.put(f"lake/batch/{key}", data)
            return bucket.uri("lake/batch")

        return write


class TestMemorySource(SourceContract):
    @pytest.fixture
    async def source(self) -> AsyncIterator[MemorySource]:
        async with MemorySource(read_size=SourceContract.max_piece) as source:
            yield source

    @pytest.fixture
    def seed(self, source: MemorySource) -> Seed:
        def write(objects: Mapping[str, bytes]) -> str:
            for key, data in objects.items():
                source.objects[f"mem://lake/batch/{key}"] = data
            return "mem://lake/batch"

        return write
