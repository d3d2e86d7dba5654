"""What the HTTP destination sends and follows, against real receivers on loopback:
templated URLs and headers, redirects, retry rules as data (``retry.on_status``), ``410
Gone``, and answers too large to hold."""

from __future__ import annotations

import asyncio
import resource
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from pydantic import ValidationError

from sender.config import parse_config
from sender.errors import ConfigError, PermanentError, RetryableError
from sender.testing.receiver import Receiver
from sender_adapters.http import HttpDestination
from sender_adapters.http_response import MAX_BODY
from tests.http_servers import serve
from tests.test_http_destination import make_chunk

SECRET = "whsec_" + "a" * 32


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver() as running:
        yield running


async def deliver(url: str, chunk: Any = None, **options: Any) -> Any:
    async with HttpDestination("crm_api", HttpDestination.Options(url=url, **options)) as d:
        return await d.deliver(chunk or make_chunk())


# templated requests ------------------------------------------------------------------------


async def test_placeholders_in_the_url_and_headers_are_filled_in_per_chunk(
    receiver: Receiver,
) -> None:
    url = receiver.url + "/api/{dataset}/batches/{batch_id}/{route}?chunk={chunk}"
    headers = {"X-Label": "{dataset}:{batch_id}:{chunk}", "X-Team": "crm"}
    receipt = await deliver(url, make_chunk(chunk_id="7"), headers=headers)

    [request] = receiver.requests
    assert request.path == "/api/churn/batches/2024-06-01/churn_to_crm"
    assert request.headers["X-Label"] == "churn:2024-06-01:7"
    assert request.headers["X-Team"] == "crm"
    assert receipt.location == receiver.url + "/api/churn/batches/2024-06-01/churn_to_crm?chunk=7"


async def test_placeholder_values_are_escaped_for_urls_and_headers() -> None:
    seen: list[tuple[str, str]] = []

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        seen.append((request.raw_path, request.headers["X-Batch"]))
        return web.Response(status=204)

    chunk = make_chunk(batch_id="2024/06 01?x=été")
    async with serve(handle) as url:
        await deliver(url + "/in/{batch_id}", chunk, headers={"X-Batch": "{batch_id}"})
    # one path segment, no query; printable ASCII in the header
    assert seen == [("/in/2024%2F06%2001%3Fx=%C3%A9t%C3%A9", "2024/06 01?x=%C3%A9t%C3%A9")]


async def test_double_braces_are_literal(receiver: Receiver) -> None:
    await deliver(receiver.url + "/in", headers={"X-Json": '{{"batch": "{batch_id}"}}'})
    assert receiver.requests[0].headers["X-Json"] == '{"batch": "2024-06-01"}'


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"url": "https://crm/{tenant}/in"}, "url: unknown placeholder {tenant}"),
        ({"url": "https://crm/{chunk:03}"}, "url: unknown placeholder {chunk:03}"),
        ({"headers": {"X-A": "{batchid}"}}, "headers: the value of 'X-A': unknown placeholder"),
        ({"headers": {"X-A": "{dataset"}}, "headers: the value of 'X-A': expected '}'"),
    ],
)
def test_unknown_placeholders_are_config_errors(options: dict[str, Any], problem: str) -> None:
    destination = {"type": "http", "url": "https://crm/", **options}
    raw = {
        "destinations": {"crm_api": destination},
        "routes": {"r": {"datasets": ["churn"], "targets": ["crm_api"]}},
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    [found] = caught.value.problems
    assert found.startswith(f"destinations.crm_api.{problem}")
    assert "{{ and }}" in found  # how to write a literal brace


# redirects ---------------------------------------------------------------------------------


class Redirecting:
    """Answers ``/old`` with a redirect to ``location`` and records what reaches ``/new``."""

    def __init__(self, status: int = 308) -> None:
        self.status = status
        self.location = "/new"
        self.arrived: list[tuple[str, str, dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.path.startswith("/old"):
            return web.Response(status=self.status, headers={"Location": self.location})
        self.arrived.append((request.method, request.path, dict(request.headers), body))
        return web.Response(status=204)


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_same_origin_redirect_is_followed_with_the_same_request(status: int) -> None:
    server = Redirecting(status)
    chunk = make_chunk()
    async with serve(server.handle) as url:
        receipt = await deliver(
            url + "/old", chunk, method="PUT", signing_secret=SECRET,
            auth={"type": "bearer", "token": "tok-redirect"},
        )  # fmt: skip
    [(method, path, headers, body)] = server.arrived
    assert (method, path, body) == ("PUT", "/new", chunk.payload)
    assert headers["Authorization"] == "Bearer tok-redirect"
    assert "webhook-signature" in headers
    assert receipt.location == url + "/new"


async def test_a_redirect_to_another_port_is_refused_naming_the_location() -> None:
    elsewhere = Redirecting()
    server = Redirecting()
    async with serve(elsewhere.handle) as other, serve(server.handle) as url:
        server.location = other + "/new"
        with pytest.raises(PermanentError, match=f"redirect to {other}/new not followed") as caught:
            await deliver(url + "/old", auth={"type": "bearer", "token": "tok-stays-home"})
    assert caught.value.status == 308
    assert elsewhere.arrived == []  # neither the token nor the signature went there


@pytest.mark.parametrize(
    "location", ["https://127.0.0.1:{port}/new", "http://localhost:{port}/new"]
)
async def test_a_redirect_to_another_scheme_or_host_is_refused(location: str) -> None:
    server = Redirecting()
    async with serve(server.handle) as url:
        server.location = location.format(port=url.rsplit(":", 1)[1])
        with pytest.raises(PermanentError, match="not followed: another origin"):
            await deliver(url + "/old")
    assert server.arrived == []


async def test_a_redirect_loop_ends_as_a_permanent_error() -> None:
    server = Redirecting()
    server.location = "/old/again"
    async with serve(server.handle) as url:
        with pytest.raises(PermanentError, match="more than 5 redirects"):
            await deliver(url + "/old")


async def test_see_other_is_not_followed(receiver: Receiver) -> None:
    receiver.fail_next(1, status=303, headers={"Location": "/result"})
    with pytest.raises(PermanentError, match="redirect to /result; not followed"):
        await deliver(receiver.url + "/in")
    assert len(receiver.requests) == 1


async def test_cookies_set_by_a_receiver_are_not_sent_back() -> None:
    seen: list[str | None] = []

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        seen.append(request.headers.get("Cookie"))
        return web.Response(status=204, headers={"Set-Cookie": "session=abc; Path=/"})

    async with (
        serve(handle) as url,
        HttpDestination("crm_api", HttpDestination.Options(url=url)) as destination,
    ):
        await destination.deliver(make_chunk(chunk_id="0"))
        await destination.deliver(make_chunk(chunk_id="1"))
    assert seen == [None, None]


# retry rules as data -----------------------------------------------------------------------


async def test_a_status_added_to_on_status_is_retried(receiver: Receiver) -> None:
    receiver.fail_next(1, status=409)
    retry = {"on_status": [409, 429, 503]}
    with pytest.raises(RetryableError, match="HTTP 409") as caught:
        await deliver(receiver.url, retry=retry)
    assert caught.value.status == 409


async def test_a_status_left_out_of_on_status_is_permanent(receiver: Receiver) -> None:
    receiver.fail_next(1, status=502)
    with pytest.raises(PermanentError, match="HTTP 502") as caught:
        await deliver(receiver.url, retry={"on_status": [429, 503]})
    assert caught.value.status == 502


def test_on_status_defaults_to_the_documented_list() -> None:
    options = HttpDestination.Options(url="https://crm/")
    assert options.retry.on_status == {408, 425, 429, 500, 502, 503, 504}


@pytest.mark.parametrize("status", [204, 99, 600])
def test_on_status_takes_only_error_statuses(status: int) -> None:
    with pytest.raises(ValidationError, match="not an HTTP error status"):
        HttpDestination.Options(url="https://crm/", retry={"on_status": [status]})


async def test_410_gone_is_permanent_and_says_so(receiver: Receiver) -> None:
    receiver.fail_next(1, status=410, body=b"this endpoint was retired")
    with pytest.raises(PermanentError, match="HTTP 410: this endpoint was retired") as caught:
        await deliver(receiver.url)
    assert (caught.value.status, caught.value.gone) == (410, True)


# answers too large to hold -----------------------------------------------------------------


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def test_a_huge_answer_is_read_only_as_far_as_the_reason_needs() -> None:
    piece = b"x" * (1024 * 1024)
    sent = 0

    async def handle(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        await request.read()
        response = web.StreamResponse(status=400)
        response.content_length = 2 * 1024**3  # 2 GiB announced
        await response.prepare(request)
        try:
            for _ in range(2048):
                await response.write(piece)
                sent += len(piece)
        except (ConnectionError, RuntimeError):
            pass  # the sender hung up: what we wanted
        return response

    before = rss_mib()
    async with serve(handle) as url:
        async with asyncio.timeout(20):
            with pytest.raises(PermanentError) as caught:
                await deliver(url)
    assert caught.value.reason == "HTTP 400: " + "x" * 200
    assert sent < 64 * 1024 * 1024  # the rest was never pulled from the server
    assert rss_mib() - before < 100
    assert MAX_BODY == 64 * 1024
