"""Nothing secret is stored or shown: a receiver that echoes the request's ``Authorization``
header (or any configured secret) in its error body, and an API key in a destination URL's
query string, leave no trace of either in the ledger, the dead-letter store or what
``sender status`` shows."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from sender.app import App
from sender.config import load_config
from sender.log import mask
from sender.model import TriggerMessage
from sender.retry import set_testing
from sender.testing.receiver import Receiver
from tests.batches import write_batch
from tests.http_servers import serve

TOKEN = "tok-5ecret-v4lue-0123"
API_KEY = "k3y-in-the-qu3ry-string"


@pytest.fixture(autouse=True)
def no_backoff() -> Iterator[None]:
    set_testing(True)
    yield
    set_testing(False)


@pytest.fixture
def token_env() -> Iterator[None]:
    os.environ["PARTNER_TOKEN"] = TOKEN
    yield
    del os.environ["PARTNER_TOKEN"]


async def echo(request: web.Request) -> web.Response:
    """A careless receiver: its 401 says which credentials it was given."""
    await request.read()
    return web.Response(
        status=401, text=f"bad credentials: {request.headers.get('Authorization')} {request.url}"
    )


@pytest.fixture
async def echoing() -> AsyncIterator[str]:
    async with serve(echo) as url:
        yield url


def stored_bytes(folder: Path) -> bytes:
    """Everything the sender wrote under ``folder`` (ledger, WAL, dead letters), not the
    config."""
    return b"".join(
        path.read_bytes()
        for path in folder.rglob("*")
        if path.is_file() and path.name != "sender.toml"
    )


def write_config(folder: Path, url: str) -> Path:
    path = folder / "sender.toml"
    path.write_text(f"""
[daemon]
ledger = "ledger.db"

[destinations.partner]
type = "http"
url = "{url}"
headers = {{ Authorization = "Bearer ${{PARTNER_TOKEN}}" }}
retry = {{ attempts = 1 }}

[destinations.dead]
type = "local"
path = "dead"

[routes.churn]
datasets = ["churn"]
chunk = {{ records = 50 }}
targets = ["partner"]
dead_letter = "dead"
""")
    return path


async def test_an_echoed_authorization_header_is_stored_masked(
    tmp_path: Path, echoing: str, token_env: None
) -> None:
    config = load_config(write_config(tmp_path, f"{echoing}/in?api_key={API_KEY}"))
    uri = write_batch(tmp_path / "in", 100)
    async with App(config) as app:
        await app.engine.run_batch(TriggerMessage(batch_id="b-1", dataset="churn", uri=str(uri)))
        chunks = await app.ledger.chunks("b-1")

    assert [chunk.state.value for chunk in chunks] == ["dead_lettered"] * 2
    assert all("HTTP 401" in (chunk.last_error or "") for chunk in chunks)
    assert all("***" in (chunk.last_error or "") for chunk in chunks)
    stored = stored_bytes(tmp_path)
    assert b".meta.json" not in stored  # (sanity: the scan reads files, not names)
    assert TOKEN.encode() not in stored
    assert API_KEY.encode() not in stored
    metas = [orjson.loads(p.read_bytes()) for p in (tmp_path / "dead").rglob("*.meta.json")]
    assert len(metas) == 2 and all("HTTP 401" in str(meta) for meta in metas)


async def test_a_credential_in_the_url_query_is_masked_in_chunk_locations(
    tmp_path: Path, receiver: Receiver, token_env: None
) -> None:
    config = load_config(write_config(tmp_path, f"{receiver.url}/in?x=1&API_KEY={API_KEY}"))
    uri = write_batch(tmp_path / "in", 100)
    async with App(config) as app:
        await app.engine.run_batch(TriggerMessage(batch_id="b-1", dataset="churn", uri=str(uri)))
        chunks = await app.ledger.chunks("b-1")

    assert len(receiver.unique_records()) == 100  # the receiver got the real key
    assert [chunk.state.value for chunk in chunks] == ["delivered"] * 2
    assert all(chunk.location == f"{receiver.url}/in?x=1&API_KEY=***" for chunk in chunks)
    assert API_KEY.encode() not in stored_bytes(tmp_path)


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("https://x/in?api_key=abc&x=1", "https://x/in?api_key=***&x=1"),
        ("GET https://x/in?a=1&Token=abc def", "GET https://x/in?a=1&Token=*** def"),
        ("s3://b/k?X-Amz-Signature=ff00&sig=1", "s3://b/k?X-Amz-Signature=***&sig=***"),
        ("https://x/in?monkey=banana", "https://x/in?monkey=banana"),
        ("https://x/in?password=p%40ss#frag", "https://x/in?password=***#frag"),
    ],
)
def test_credential_looking_query_parameters_are_masked(text: str, masked: str) -> None:
    assert mask(text) == masked
