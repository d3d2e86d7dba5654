"""config/partner.toml is documentation users copy: it must validate, and deliver to a
receiver like the one it describes (OAuth2, mutual TLS with a private CA, signatures checked
with the reference verifier during a rotation) with only site values changed."""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path
from typing import Any

from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError

from sender.config import load_config
from sender.testing.receiver import decode_body, parse_records
from tests.batches import write_batch
from tests.http_servers import Pki, TokenServer, serve
from tests.test_cli import sender

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "partner.toml"


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def site(folder: Path, tokens: TokenServer) -> tuple[dict[str, str], Pki]:
    """The files the example names, made for this test beside its copy."""
    (folder / "secrets").mkdir(parents=True)
    secrets = {"signing_new": new_secret(), "signing_old": new_secret()}
    for name, value in {**secrets, "client_secret": tokens.client_secret}.items():
        (folder / "secrets" / name).write_text(value + "\n")  # as Kubernetes mounts them
    pki = Pki(folder / "pki")
    (folder / "tls").mkdir()
    shutil.copy(pki.ca, folder / "tls" / "partner-ca.pem")
    shutil.copy(pki.client_cert, folder / "tls" / "client.pem")
    shutil.copy(pki.client_key, folder / "tls" / "client-key.pem")
    shutil.copy(EXAMPLE, folder / "sender.toml")
    return secrets, pki


def test_the_partner_example_validates(tmp_path: Path) -> None:
    site(tmp_path, TokenServer())

    config = load_config(tmp_path / "sender.toml")

    api = config.destinations["partner_api"].options
    assert api.auth.type == "oauth2" and api.auth.scope == "scores:write"
    assert len(api.signing_secrets) == 2
    assert api.tls.ca == str(tmp_path / "tls" / "partner-ca.pem")
    assert 409 in api.retry.on_status
    assert config.routes["churn_to_partner"].targets == ["partner_api", "partner_dropbox"]


async def test_config_check_names_a_missing_certificate(tmp_path: Path) -> None:
    site(tmp_path, TokenServer())
    (tmp_path / "tls" / "client.pem").unlink()

    code, _, err = await sender("config", "check", "-c", str(tmp_path / "sender.toml"))

    assert code == 2
    assert "destinations.partner_api.tls.cert:" in err and "no such file" in err


class PartnerApi:
    """HTTPS only with our client certificate; tokens from ``tokens``; verifies signatures
    with the old secret only (the receiver has not switched yet)."""

    def __init__(self, tokens: TokenServer, secret: str) -> None:
        self.tokens = tokens
        self.webhook = Webhook(secret)
        self.paths: set[str] = set()
        self.records: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        if request.path == "/oauth2/token":
            return await self.tokens.handler(request)
        raw = await request.read()
        if not self.tokens.valid(request.headers.get("Authorization")):
            return web.Response(status=401)
        body = decode_body(raw, request.headers.get("Content-Encoding"))
        try:
            self.webhook.verify(body, dict(request.headers), json_parse=False)
        except WebhookVerificationError:
            return web.Response(status=400, text="bad signature")
        self.paths.add(request.path)
        self.records.extend(parse_records(body, request.headers.get("Content-Type")))
        return web.Response(status=202)


async def test_the_partner_example_delivers_with_only_site_values_changed(tmp_path: Path) -> None:
    tokens = TokenServer(client_id="integration-sender", lifetime_s=3600)
    secrets, pki = site(tmp_path, tokens)
    api = PartnerApi(tokens, secrets["signing_old"])
    batch = write_batch(tmp_path / "batch", 500)
    server_tls = pki.server_context(require_client_cert=True)
    async with serve(api.handle, ssl_context=server_tls) as url:
        config = tmp_path / "sender.toml"
        text = config.read_text()
        for ours, theirs in {
            "https://partner.internal.example/v1/": f"{url}/v1/",
            "https://idp.partner.internal.example/oauth2/token": f"{url}/oauth2/token",
            "/mnt/shared/partner-inbox": str(tmp_path / "inbox"),
        }.items():
            assert ours in text
            text = text.replace(ours, theirs)
        config.write_text(text)

        code, _, err = await sender(
            "send", str(batch), "--dataset", "churn", "--batch-id", "b-1", "-c", str(config)
        )

    assert code == 0, err
    assert {record["customer_id"] for record in api.records} == {
        f"cust-{i:08d}" for i in range(500)
    }
    assert api.paths == {"/v1/churn/batches/b-1/chunks"}
    assert tokens.requests == 1
    assert not (tmp_path / "inbox").exists()  # nothing fell back to the drop folder
