"""Standard Webhooks signatures, checked the way a receiving team checks them: with the
reference verifier (``standardwebhooks`` from PyPI) after undoing ``Content-Encoding``, for
every format and codec, across a secret rotation."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import zstandard
from aiohttp import web
from pydantic import ValidationError
from standardwebhooks import Webhook, WebhookVerificationError

from sender.errors import PermanentError
from sender.log import mask
from sender.model import EncodedChunk
from sender.testing.receiver import decode_body, parse_records
from sender_adapters.http import HttpDestination, sign
from tests.http_servers import serve
from tests.test_cli import sender
from tests.test_http_destination import RECORDS, encode, make_chunk


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


OLD, NEW = new_secret(), new_secret()


class VerifyingReceiver:
    """A receiver holding some of the secrets: it decompresses, then verifies each request
    with each secret it knows, and answers 401 when none verifies."""

    def __init__(self, **secrets: str) -> None:
        self.webhooks = {name: Webhook(secret) for name, secret in secrets.items()}
        self.verified_by: list[set[str]] = []  # per request: which secrets verified it
        self.records: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = decode_body(await request.read(), request.headers.get("Content-Encoding"))
        headers = dict(request.headers)
        verified = set()
        for name, webhook in self.webhooks.items():
            try:
                webhook.verify(body, headers, json_parse=False)
            except WebhookVerificationError:
                continue
            verified.add(name)
        self.verified_by.append(verified)
        self.headers.append(headers)
        if not verified:
            return web.Response(status=401, text="no signature verifies")
        self.records.extend(parse_records(body, request.headers.get("Content-Type")))
        return web.Response(status=204)


@pytest.fixture
async def verifier() -> AsyncIterator[tuple[VerifyingReceiver, str]]:
    receiver = VerifyingReceiver(old=OLD, new=NEW)
    async with serve(receiver.handle) as url:
        yield receiver, url


async def deliver(url: str, chunk: EncodedChunk, **options: Any) -> None:
    options = {"format": chunk.format, "compression": chunk.codec, **options}
    async with HttpDestination("crm_api", HttpDestination.Options(url=url, **options)) as d:
        await d.deliver(chunk)


@pytest.mark.parametrize("codec", ["gzip", "zstd", "none"])
@pytest.mark.parametrize("fmt", ["ndjson", "json", "csv"])
async def test_a_rotating_sender_verifies_for_holders_of_either_secret(
    verifier: tuple[VerifyingReceiver, str], codec: str, fmt: str
) -> None:
    receiver, url = verifier

    await deliver(url, make_chunk(fmt=fmt, codec=codec), signing_secret=[NEW, OLD])

    assert receiver.verified_by == [{"old", "new"}]
    assert receiver.records == RECORDS
    assert len(receiver.headers[0]["webhook-signature"].split(" ")) == 2


async def test_every_request_verifies_across_a_key_rotation(
    verifier: tuple[VerifyingReceiver, str],
) -> None:
    receiver, url = verifier
    # before, during and after the rotation, as the config is redeployed
    for i, secrets in enumerate([OLD, [NEW, OLD], [NEW]]):
        for codec in ("gzip", "zstd", "none"):
            chunk = make_chunk(codec=codec, chunk_id=f"{i}-{codec}")
            await deliver(url, chunk, signing_secret=secrets)

    assert receiver.verified_by == [{"old"}] * 3 + [{"old", "new"}] * 3 + [{"new"}] * 3
    assert len(receiver.records) == 9 * len(RECORDS)


async def test_a_json_chunk_verifies_with_the_verifiers_default_json_parsing(
    verifier: tuple[VerifyingReceiver, str],
) -> None:
    receiver, url = verifier
    await deliver(url, make_chunk(fmt="json", codec="zstd"), signing_secret=NEW)
    headers = receiver.headers[0]
    body = encode(RECORDS, "json")
    assert Webhook(NEW).verify(body, headers) == RECORDS


async def test_a_tampered_body_or_another_secret_does_not_verify(
    verifier: tuple[VerifyingReceiver, str],
) -> None:
    receiver, url = verifier
    await deliver(url, make_chunk(codec="gzip"), signing_secret=NEW)
    headers = receiver.headers[0]
    body = encode(RECORDS, "ndjson")
    Webhook(NEW).verify(body, headers, json_parse=False)
    with pytest.raises(WebhookVerificationError):
        Webhook(NEW).verify(body.replace(b"0.91", b"0.99"), headers, json_parse=False)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers, json_parse=False)


async def test_a_receiver_without_the_secret_refuses_and_the_chunk_is_not_delivered() -> None:
    receiver = VerifyingReceiver(other=new_secret())
    async with serve(receiver.handle) as url:
        with pytest.raises(PermanentError, match="HTTP 401"):
            await deliver(url, make_chunk(), signing_secret=NEW)
    assert receiver.records == []


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
async def test_a_large_chunk_of_several_gzip_members_or_zstd_frames_verifies(
    verifier: tuple[VerifyingReceiver, str], codec: str
) -> None:
    # over 256 KiB uncompressed: signed off the event loop, in pieces
    records = [{"id": f"c-{i}", "blob": os.urandom(60).hex()} for i in range(6000)]
    halves = encode(records[:3000], "ndjson"), encode(records[3000:], "ndjson")
    if codec == "gzip":
        payload = b"".join(gzip.compress(half, compresslevel=1) for half in halves)
    else:
        payload = b"".join(zstandard.ZstdCompressor().compress(half) for half in halves)
    chunk = dataclasses.replace(
        make_chunk(codec=codec),
        payload=payload,
        raw_size=sum(map(len, halves)),
        records=len(records),
    )
    assert chunk.raw_size > 256 * 1024

    receiver, url = verifier
    await deliver(url, chunk, signing_secret=[NEW, OLD])

    assert receiver.verified_by == [{"old", "new"}]
    assert len(receiver.records) == 6000


async def test_webhook_id_is_the_idempotency_key_and_the_timestamp_is_now(
    verifier: tuple[VerifyingReceiver, str],
) -> None:
    receiver, url = verifier
    chunk = make_chunk(chunk_id="4")
    before = int(time.time())
    await deliver(url, chunk, signing_secret=NEW)
    await deliver(url, chunk, signing_secret=NEW)  # a resend

    assert [h["webhook-id"] for h in receiver.headers] == [chunk.idempotency_key] * 2
    for headers in receiver.headers:
        assert before <= int(headers["webhook-timestamp"]) <= int(time.time())
        assert headers["webhook-signature"].startswith("v1,")


def test_sign_matches_the_standard_webhooks_reference_vector() -> None:
    # from the Standard Webhooks specification's test vectors
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    assert (
        sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
        == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


# configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        ("plain-shared-secret", "must be a Standard Webhooks secret"),
        ("whsec_not base64!", "must be base64 after the whsec_ prefix"),
        ("whsec_" + base64.b64encode(b"x" * 16).decode(), "is 16 bytes; it must be 24-64"),
        ("whsec_" + base64.b64encode(b"x" * 65).decode(), "is 65 bytes; it must be 24-64"),
    ],
)
def test_a_secret_that_is_not_whsec_is_refused_with_a_hint(secret: str, problem: str) -> None:
    with pytest.raises(ValidationError, match="signing_secret") as caught:
        HttpDestination.Options(url="https://crm.internal/", signing_secret=secret)
    assert problem in str(caught.value)
    assert "os.urandom(32)" in str(caught.value)  # how to make a good one


def test_an_unpadded_whsec_secret_is_accepted_as_the_verifier_accepts_it() -> None:
    padded = "whsec_" + base64.b64encode(b"k" * 25).decode()
    assert padded.endswith("=")
    options = HttpDestination.Options(url="https://crm/", signing_secret=padded.rstrip("="))
    assert options.signing_secrets == [padded.rstrip("=")]


def test_signing_secrets_are_masked_in_repr_and_logs() -> None:
    options = HttpDestination.Options(url="https://crm/", signing_secret=[NEW, OLD])
    assert NEW not in repr(options) and OLD not in repr(options)
    assert mask(f"oops {OLD}") == "oops ***"


async def test_config_check_names_the_bad_secret_in_a_rotation_list_and_exits_2(
    tmp_path: Path,
) -> None:
    config = tmp_path / "sender.toml"
    config.write_text(
        f"""
[destinations.crm_api]
type = "http"
url = "https://crm.internal/scores"
signing_secret = ["{NEW}", "old-plain-secret"]

[routes.r]
datasets = ["churn"]
targets = ["crm_api"]
"""
    )
    code, _, err = await sender("config", "check", "-c", str(config))
    assert code == 2
    assert "destinations.crm_api.signing_secret[1]: must be a Standard Webhooks secret" in err
    assert "old-plain-secret" not in err and NEW not in err


@pytest.mark.parametrize("codec", ["gzip", "zstd", "none"])
async def test_the_readme_receiver_snippet_verifies_what_the_sender_sends(codec: str) -> None:
    seen: list[list[dict[str, Any]]] = []

    async def handle(request: web.Request) -> web.Response:
        raw, headers = await request.read(), dict(request.headers)
        encoding = headers.get("Content-Encoding")
        # the three lines of README.md, "Signing (Standard Webhooks)"
        body = {"gzip": gzip.decompress, "zstd": zstandard.decompress}.get(encoding, bytes)(raw)
        Webhook(NEW).verify(body, headers, json_parse=False)  # WebhookVerificationError if not
        records = [json.loads(line) for line in body.splitlines()]  # NDJSON; CSV and JSON likewise
        seen.append(records)
        return web.Response(status=204)

    async with serve(handle) as url:
        await deliver(url, make_chunk(codec=codec), signing_secret=[NEW, OLD])
    assert seen == [RECORDS]
