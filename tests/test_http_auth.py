"""Authentication of the HTTP destination against real servers on loopback: an OAuth2 token
endpoint written for the tests (short-lived tokens, counted requests) and receivers that
refuse an expired token with 401, as an API behind an identity provider does."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import ValidationError

from sender.errors import PermanentError, RetryableError
from sender.log import mask
from sender.testing.receiver import decode_body, parse_records
from sender_adapters.http import HttpDestination
from sender_adapters.http_auth import OAuth2Auth, OAuth2Token
from tests.batches import write_batch
from tests.http_servers import TokenServer, serve
from tests.test_cli import sender
from tests.test_http_destination import RECORDS, make_chunk


class ApiBehindOAuth2:
    """A receiver that takes only unexpired tokens of ``tokens``: 401 otherwise."""

    def __init__(self, tokens: TokenServer) -> None:
        self.tokens = tokens
        self.authorizations: list[str | None] = []
        self.refused = 0
        self.records: list[dict[str, Any]] = []
        self.always_refuse = False

    async def handle(self, request: web.Request) -> web.Response:
        if request.path == "/token":
            return await self.tokens.handler(request)
        authorization = request.headers.get("Authorization")
        self.authorizations.append(authorization)
        raw = await request.read()
        if self.always_refuse or not self.tokens.valid(authorization):
            self.refused += 1
            return web.Response(status=401, text="invalid_token")
        body = decode_body(raw, request.headers.get("Content-Encoding"))
        self.records.extend(parse_records(body, request.headers.get("Content-Type")))
        return web.Response(status=200)


@pytest.fixture
async def api() -> AsyncIterator[tuple[ApiBehindOAuth2, str]]:
    receiver = ApiBehindOAuth2(TokenServer(lifetime_s=60))
    async with serve(receiver.handle) as url:
        yield receiver, url


def oauth2(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "oauth2",
        "token_url": f"{url}/token",
        "client_id": "sender",
        "client_secret": "s3cret-client",
        **extra,
    }


@pytest.fixture
async def destination(api: tuple[ApiBehindOAuth2, str]) -> AsyncIterator[HttpDestination]:
    _, url = api
    options = HttpDestination.Options(url=f"{url}/scores", auth=oauth2(url), concurrency=8)
    async with HttpDestination("crm_api", options) as made:
        yield made


# oauth2 ------------------------------------------------------------------------------------


async def test_one_token_is_fetched_and_shared_by_concurrent_requests(
    api: tuple[ApiBehindOAuth2, str], destination: HttpDestination
) -> None:
    receiver, _ = api
    chunks = [make_chunk(chunk_id=str(i)) for i in range(20)]

    await asyncio.gather(*(destination.deliver(chunk) for chunk in chunks))

    assert receiver.tokens.requests == 1
    assert set(receiver.authorizations) == {"Bearer tok-1"}
    assert len(receiver.records) == 20 * len(RECORDS)


async def test_a_401_refreshes_the_token_once_and_sends_that_request_again(
    api: tuple[ApiBehindOAuth2, str], destination: HttpDestination
) -> None:
    receiver, _ = api
    await destination.deliver(make_chunk(chunk_id="0"))
    receiver.tokens._issued.clear()  # the identity provider revoked every token

    await destination.deliver(make_chunk(chunk_id="1"))

    assert receiver.authorizations == ["Bearer tok-1", "Bearer tok-1", "Bearer tok-2"]
    assert receiver.tokens.requests == 2
    assert len(receiver.records) == 2 * len(RECORDS)


async def test_concurrent_401s_refresh_the_token_only_once(
    api: tuple[ApiBehindOAuth2, str], destination: HttpDestination
) -> None:
    receiver, _ = api
    await destination.deliver(make_chunk(chunk_id="first"))
    receiver.tokens._issued.clear()

    await asyncio.gather(*(destination.deliver(make_chunk(chunk_id=str(i))) for i in range(8)))

    assert receiver.tokens.requests == 2
    assert len(receiver.records) == 9 * len(RECORDS)


async def test_a_second_401_after_a_refresh_is_permanent(
    api: tuple[ApiBehindOAuth2, str], destination: HttpDestination
) -> None:
    receiver, _ = api
    receiver.always_refuse = True

    with pytest.raises(PermanentError, match="HTTP 401: invalid_token") as caught:
        await destination.deliver(make_chunk())

    assert caught.value.status == 401
    assert len(receiver.authorizations) == 2  # the request, and once more with a new token
    assert receiver.tokens.requests == 2


async def test_a_failing_token_endpoint_is_retryable_and_recovers(
    api: tuple[ApiBehindOAuth2, str], destination: HttpDestination
) -> None:
    receiver, _ = api
    receiver.tokens.fail_next(1, status=503)

    with pytest.raises(RetryableError, match=r"token endpoint .*/token: HTTP 503") as caught:
        await destination.deliver(make_chunk())
    assert caught.value.status == 503
    assert receiver.authorizations == []  # nothing was sent without a token

    await destination.deliver(make_chunk())
    assert len(receiver.records) == len(RECORDS)


async def test_refused_client_credentials_are_retryable_and_never_reach_the_receiver(
    api: tuple[ApiBehindOAuth2, str],
) -> None:
    receiver, url = api
    options = HttpDestination.Options(
        url=f"{url}/scores", auth=oauth2(url, client_secret="wrong-secret")
    )
    async with HttpDestination("crm_api", options) as destination:
        with pytest.raises(RetryableError, match=r"HTTP 401.*invalid_client") as caught:
            await destination.deliver(make_chunk())
    assert "wrong-secret" not in mask(str(caught.value))
    assert receiver.authorizations == []


async def test_an_unreachable_token_endpoint_is_retryable_without_a_status(
    api: tuple[ApiBehindOAuth2, str], closed_port_url: str
) -> None:
    _, url = api
    auth = oauth2(url, token_url=f"{closed_port_url}/token")
    options = HttpDestination.Options(url=f"{url}/scores", auth=auth)
    async with HttpDestination("crm_api", options) as destination:
        with pytest.raises(RetryableError, match=r"token endpoint .*: cannot connect") as caught:
            await destination.deliver(make_chunk())
    assert caught.value.status is None


@pytest.mark.parametrize("answer", [b"<html>login</html>", b'{"token_type": "Bearer"}', b"[]"])
async def test_a_token_answer_without_an_access_token_is_retryable(answer: bytes) -> None:
    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=200, body=answer)

    async with serve(handle) as url:
        options = HttpDestination.Options(url=f"{url}/scores", auth=oauth2(url))
        async with HttpDestination("crm_api", options) as destination:
            with pytest.raises(RetryableError, match="token endpoint") as caught:
                await destination.deliver(make_chunk())
    assert caught.value.status is None  # no usable answer: not counted as a 2xx


@pytest.mark.parametrize("client_auth", ["basic", "body"])
async def test_the_token_request_carries_the_grant_scope_and_audience(
    api: tuple[ApiBehindOAuth2, str], client_auth: str
) -> None:
    receiver, url = api
    auth = oauth2(
        url, scope="scores:write", audience="https://crm.internal", client_auth=client_auth
    )
    options = HttpDestination.Options(url=f"{url}/scores", auth=auth)
    async with HttpDestination("crm_api", options) as destination:
        await destination.deliver(make_chunk())

    [form] = receiver.tokens.forms
    assert form["grant_type"] == "client_credentials"
    assert (form["scope"], form["audience"]) == ("scores:write", "https://crm.internal")
    assert ("client_secret" in form) is (client_auth == "body")
    assert len(receiver.records) == len(RECORDS)


async def test_credentials_go_in_the_form_when_the_endpoint_refuses_basic(
    api: tuple[ApiBehindOAuth2, str], destination: HttpDestination
) -> None:
    receiver, _ = api
    receiver.tokens.client_auth = ("body",)  # reads client_id/client_secret from the form only

    await destination.deliver(make_chunk(chunk_id="0"))
    receiver.tokens._issued.clear()
    await destination.deliver(make_chunk(chunk_id="1"))

    # Basic, refused; the form, taken; and for the refresh the form at once
    assert ["client_secret" in form for form in receiver.tokens.forms] == [False, True, True]
    assert len(receiver.records) == 2 * len(RECORDS)


async def test_the_token_is_refreshed_before_it_expires(api: tuple[ApiBehindOAuth2, str]) -> None:
    receiver, url = api
    receiver.tokens.lifetime_s = 100
    now = [1000.0]
    token = OAuth2Token(OAuth2Auth.model_validate(oauth2(url)), timeout_s=5, clock=lambda: now[0])
    async with aiohttp.ClientSession() as session:
        first = await token.authorization(session)
        now[0] += 89  # 11 s of 100 left: still fresh (refreshed with a tenth left)
        assert await token.authorization(session) == first
        now[0] += 2  # 9 s left
        second = await token.authorization(session)
    assert (first, second) == ("Bearer tok-1", "Bearer tok-2")
    assert token.requests == receiver.tokens.requests == 2


async def test_access_tokens_and_the_client_secret_are_masked(
    api: tuple[ApiBehindOAuth2, str], destination: HttpDestination
) -> None:
    receiver, _ = api
    await destination.deliver(make_chunk())
    assert "s3cret-client" not in repr(destination.options)
    # (other tests' secrets are masked too: the masker is process-wide)
    masked = mask("sent Bearer tok-1 with s3cret-client")
    assert "tok-1" not in masked and "s3cret-client" not in masked
    receiver.tokens._issued.clear()
    await destination.deliver(make_chunk(chunk_id="1"))
    # the replaced token is forgotten by the masker, the current one is masked
    assert mask("tok-2") == "***"


async def test_tokens_expiring_every_2s_deliver_every_record_with_few_token_requests(
    tmp_path: Path,
) -> None:
    tokens = TokenServer(lifetime_s=2.0)
    receiver = ApiBehindOAuth2(tokens)
    batch = write_batch(tmp_path / "batch", 3000)
    async with serve(receiver.handle) as url:
        config = tmp_path / "sender.toml"
        config.write_text(
            f"""
[daemon]
ledger = "ledger.db"

[destinations.crm_api]
type = "http"
url = "{url}/scores"
concurrency = 4
rate_limit = "10/s"
retry = {{ attempts = 3, initial = "5ms", max = "10ms" }}

[destinations.crm_api.auth]
type = "oauth2"
token_url = "{url}/token"
client_id = "sender"
client_secret = "${{file:client_secret}}"

[destinations.dead]
type = "local"
path = "dead"

[routes.churn]
datasets = ["churn"]
chunk = {{ records = 50 }}
targets = ["crm_api"]
dead_letter = "dead"
"""
        )
        (tmp_path / "client_secret").write_text("s3cret-client\n")
        started = time.monotonic()
        code, out, err = await sender(
            "send", str(batch), "--dataset", "churn", "--batch-id", "b-oauth", "-c", str(config)
        )
        duration = time.monotonic() - started

    assert code == 0, err
    ids = {record["id"] for record in receiver.records}
    assert ids == {f"cust-{i:08d}" for i in range(3000)}
    expected = duration / tokens.lifetime_s
    assert duration > 2 * tokens.lifetime_s  # several tokens expired on the way
    assert 2 <= tokens.requests <= expected + 2, (tokens.requests, duration)
    assert "s3cret-client" not in out + err and "tok-" not in out + err


# basic and bearer --------------------------------------------------------------------------


async def received_authorization(url: str, auth: dict[str, Any]) -> str:
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        await request.read()
        return web.Response(status=204)

    async with serve(handle) as url:
        options = HttpDestination.Options(url=url, auth=auth)
        async with HttpDestination("crm_api", options) as destination:
            await destination.deliver(make_chunk())
    return seen[0]


async def test_basic_auth_sends_the_username_and_password() -> None:
    value = await received_authorization(
        "", {"type": "basic", "username": "crm", "password": "pa55word"}
    )
    assert value == "Basic " + base64.b64encode(b"crm:pa55word").decode()
    assert mask(value) == "***"


async def test_bearer_auth_sends_the_token() -> None:
    value = await received_authorization("", {"type": "bearer", "token": "static-token-1"})
    assert value == "Bearer static-token-1"
    assert mask("static-token-1") == "***"


# configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "problem"),
    [
        ({"type": "oauth2", "token_url": "https://idp/token", "client_id": "a"}, "client_secret"),
        (
            {"type": "oauth2", "token_url": "idp/token", "client_id": "a", "client_secret": "b"},
            "token_url",
        ),
        ({"type": "basic", "username": "a:b", "password": "p"}, "username"),
        ({"type": "bearer", "token": " "}, "token"),
        ({"type": "kerberos"}, "type"),
        ({"type": "bearer", "token": "t", "extra": 1}, "extra"),
    ],
)
def test_bad_auth_settings_are_config_errors_naming_the_key(
    auth: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        HttpDestination.Options(url="https://crm/", auth=auth)
    [error] = caught.value.errors()
    assert error["loc"] == ("auth", problem)


def test_auth_and_an_authorization_header_are_not_both_allowed() -> None:
    with pytest.raises(ValidationError, match=r"either auth or headers\.Authorization"):
        HttpDestination.Options(
            url="https://crm/",
            headers={"authorization": "Bearer x"},
            auth={"type": "bearer", "token": "y"},
        )


def test_existing_authorization_headers_keep_working_without_auth() -> None:
    options = HttpDestination.Options(url="https://crm/", headers={"Authorization": "Bearer x"})
    assert options.auth is None
