"""TLS for the HTTP destination against a real HTTPS receiver on loopback, with a private CA
and client certificates generated in the test (``cryptography``): private CAs, mutual TLS,
and config errors for files that would fail every delivery."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import ValidationError

from sender.config import load_config
from sender.errors import ConfigError, RetryableError
from sender_adapters.http import HttpDestination
from tests.http_servers import Pki, serve
from tests.test_http_destination import make_chunk


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


class MutualTlsReceiver:
    """Records the client certificate's subject of each request it answers."""

    def __init__(self) -> None:
        self.clients: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        subject = dict(item[0] for item in (peer or {}).get("subject", ()))
        self.clients.append(subject.get("commonName", ""))
        return web.Response(status=204)


@pytest.fixture
async def mtls(pki: Pki) -> AsyncIterator[tuple[MutualTlsReceiver, str]]:
    receiver = MutualTlsReceiver()
    async with serve(
        receiver.handle, ssl_context=pki.server_context(require_client_cert=True)
    ) as url:
        yield receiver, url


@pytest.fixture
async def https(pki: Pki) -> AsyncIterator[tuple[MutualTlsReceiver, str]]:
    receiver = MutualTlsReceiver()
    async with serve(
        receiver.handle, ssl_context=pki.server_context(require_client_cert=False)
    ) as url:
        yield receiver, url


async def deliver(url: str, **options: Any) -> None:
    async with HttpDestination("crm_api", HttpDestination.Options(url=url, **options)) as d:
        await d.deliver(make_chunk())


async def test_mutual_tls_receiver_takes_the_chunk_with_our_client_certificate(
    pki: Pki, mtls: tuple[MutualTlsReceiver, str]
) -> None:
    receiver, url = mtls
    tls = {"ca": str(pki.ca), "cert": str(pki.client_cert), "key": str(pki.client_key)}
    await deliver(url + "/scores", tls=tls)
    assert receiver.clients == ["client.test"]


async def test_a_cert_file_holding_its_key_needs_no_key_setting(
    pki: Pki, mtls: tuple[MutualTlsReceiver, str]
) -> None:
    receiver, url = mtls
    await deliver(url, tls={"ca": str(pki.ca), "cert": str(pki.client_pem)})
    assert receiver.clients == ["client.test"]


async def test_without_a_client_certificate_the_mutual_tls_receiver_refuses(
    pki: Pki, mtls: tuple[MutualTlsReceiver, str]
) -> None:
    receiver, url = mtls
    with pytest.raises(RetryableError) as caught:
        await deliver(url, tls={"ca": str(pki.ca)})
    assert caught.value.status is None
    assert receiver.clients == []


async def test_a_private_ca_is_trusted_only_when_configured(
    pki: Pki, https: tuple[MutualTlsReceiver, str]
) -> None:
    receiver, url = https
    with pytest.raises(RetryableError, match="certificate"):
        await deliver(url)  # the system's trust store knows nothing of our CA
    await deliver(url, tls={"ca": str(pki.ca)})
    assert len(receiver.clients) == 1


async def test_verify_false_skips_the_certificate_check(
    https: tuple[MutualTlsReceiver, str],
) -> None:
    receiver, url = https
    await deliver(url, tls={"verify": False})
    assert len(receiver.clients) == 1


async def test_verify_false_still_presents_the_client_certificate(
    pki: Pki, mtls: tuple[MutualTlsReceiver, str]
) -> None:
    receiver, url = mtls
    await deliver(
        url, tls={"verify": False, "cert": str(pki.client_cert), "key": str(pki.client_key)}
    )
    assert receiver.clients == ["client.test"]


# configuration -----------------------------------------------------------------------------


def tls_problem(**tls: Any) -> tuple[Any, str]:
    with pytest.raises(ValidationError) as caught:
        HttpDestination.Options(url="https://crm/", tls=tls)
    [error] = caught.value.errors()
    return error["loc"], str(error["msg"])


def test_a_missing_ca_file_is_a_config_error(tmp_path: Path) -> None:
    loc, message = tls_problem(ca=str(tmp_path / "nope.pem"))
    assert loc == ("tls", "ca") and "no such file" in message


def test_a_ca_file_that_is_not_pem_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    loc, message = tls_problem(ca=str(tmp_path / "ca.pem"))
    assert loc == ("tls", "ca") and "not a PEM CA bundle" in message


def test_a_key_that_does_not_match_the_certificate_is_a_config_error(pki: Pki) -> None:
    loc, message = tls_problem(cert=str(pki.client_cert), key=str(pki.server_key))
    assert loc == ("tls", "key") and "not a private key for" in message


def test_a_certificate_without_its_key_is_a_config_error(pki: Pki) -> None:
    _, message = tls_problem(cert=str(pki.client_cert))
    assert "key: required" in message


def test_a_key_without_a_certificate_is_a_config_error(pki: Pki) -> None:
    loc, message = tls_problem(key=str(pki.client_key))
    assert loc == ("tls", "key") and "needs a client certificate" in message


def test_tls_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    pki = Pki(etc / "tls")
    config = etc / "sender.toml"
    config.write_text(
        """
[destinations.crm_api]
type = "http"
url = "https://127.0.0.1:8443/scores"
tls = { ca = "tls/ca.pem", cert = "tls/client.pem", key = "tls/client-key.pem" }

[routes.r]
datasets = ["churn"]
targets = ["crm_api"]
"""
    )
    options = load_config(config).destinations["crm_api"].options
    assert options.tls.ca == str(pki.ca) and options.tls.key == str(pki.client_key)
    assert isinstance(options.tls.context(), ssl.SSLContext)


def test_config_load_names_the_bad_tls_key(tmp_path: Path) -> None:
    config = tmp_path / "sender.toml"
    config.write_text(
        """
[destinations.crm_api]
type = "http"
url = "https://crm/"
tls = { ca = "missing-ca.pem" }

[routes.r]
datasets = ["churn"]
targets = ["crm_api"]
"""
    )
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert caught.value.problems == [
        f"destinations.crm_api.tls.ca: {tmp_path / 'missing-ca.pem'}: no such file"
    ]
