"""Real servers on loopback for the HTTP destination's tests: receiving teams' platforms as
they really are (an OAuth2 token endpoint, HTTPS with a private CA and client certificates).

- ``serve(handler, ssl=...)``: an aiohttp server answering every path with ``handler``; it
  sees the wire bytes (no automatic decompression) and has no body size limit.
- ``TokenServer``: an OAuth2 client-credentials token endpoint that issues short-lived
  tokens, counts token requests and tells a receiver whether a token is valid now.
- ``Pki``: a private CA with a server certificate for 127.0.0.1 and a client certificate,
  written as PEM files (generated with ``cryptography``).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from urllib.parse import unquote_plus

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Pki", "TokenServer", "serve"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def serve(
    handler: Handler, *, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[str]:
    """Serve ``handler`` on 127.0.0.1 (a free port); yield the base URL."""
    app = web.Application(client_max_size=1024**3)
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, auto_decompress=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@dataclass
class TokenServer:
    """``POST /token`` with ``grant_type=client_credentials`` issues ``tok-<n>`` valid for
    ``lifetime_s`` (``expires_in`` says so). Client credentials may come as HTTP Basic or as
    form fields. ``fail_next(n, status)`` makes the next token requests fail."""

    client_id: str = "sender"
    client_secret: str = "s3cret-client"
    lifetime_s: float = 2.0
    client_auth: tuple[str, ...] = ("basic", "body")  # where it reads client credentials
    requests: int = 0  # every request to the endpoint, failed ones too
    forms: list[dict[str, str]] = field(default_factory=list)
    _issued: dict[str, float] = field(default_factory=dict)  # token -> expiry (monotonic)
    _failures: list[int] = field(default_factory=list)

    def fail_next(self, n: int, status: int = 503) -> None:
        self._failures.extend([status] * n)

    def valid(self, authorization: str | None) -> bool:
        """Whether ``Authorization: Bearer <token>`` holds a token that has not expired."""
        if not authorization or not authorization.startswith("Bearer "):
            return False
        expiry = self._issued.get(authorization.removeprefix("Bearer "))
        return expiry is not None and time.monotonic() < expiry

    def _client(self, request: web.Request, form: dict[str, str]) -> tuple[str, str] | None:
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic ") and "basic" in self.client_auth:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            return unquote_plus(user), unquote_plus(password)
        if "client_id" in form and "body" in self.client_auth:
            return form["client_id"], form.get("client_secret", "")
        return None

    async def handler(self, request: web.Request) -> web.Response:
        self.requests += 1
        form = {key: str(value) for key, value in (await request.post()).items()}
        self.forms.append(form)
        if self._failures:
            return web.json_response(
                {"error": "temporarily_unavailable"}, status=self._failures.pop(0)
            )
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        if self._client(request, form) != (self.client_id, self.client_secret):
            return web.json_response({"error": "invalid_client"}, status=401)
        token = f"tok-{self.requests}"
        self._issued[token] = time.monotonic() + self.lifetime_s
        return web.json_response(
            {"access_token": token, "token_type": "Bearer", "expires_in": self.lifetime_s}
        )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


class Pki:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files in
    ``folder``: ``ca``, ``server_cert``/``server_key``, ``client_cert``/``client_key``
    (``client_pem`` holds the client certificate and its key in one file)."""

    def __init__(self, folder: Path, *, name: str = "test") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)
        self._valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        self._ca_name = _name(f"{name} private CA")
        ca = (
            self._builder(self._ca_name, self._ca_key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._ca_key, hashes.SHA256())
        )
        self.ca = folder / "ca.pem"
        self.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        self.server_cert, self.server_key = self._leaf(
            folder, "server", ExtendedKeyUsageOID.SERVER_AUTH
        )
        self.client_cert, self.client_key = self._leaf(
            folder, "client", ExtendedKeyUsageOID.CLIENT_AUTH
        )
        self.client_pem = folder / "client-with-key.pem"
        self.client_pem.write_bytes(self.client_cert.read_bytes() + self.client_key.read_bytes())

    def _builder(
        self, subject: x509.Name, key: ec.EllipticCurvePrivateKey
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._valid[0])
            .not_valid_after(self._valid[1])
        )

    def _leaf(self, folder: Path, role: str, usage: x509.ObjectIdentifier) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            self._builder(_name(f"{role}.test"), key)
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1"))]),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(self._ca_key, hashes.SHA256())
        )
        cert_path = folder / f"{role}.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cert_path, _write_key(folder / f"{role}-key.pem", key)

    def server_context(self, *, require_client_cert: bool) -> ssl.SSLContext:
        """The receiver's TLS: its certificate, and (for mutual TLS) clients signed by the CA."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.ca))
        context.load_cert_chain(self.server_cert, self.server_key)
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
        return context
