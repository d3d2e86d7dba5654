"""TLS for the HTTP destination: private CAs and mutual TLS.

``tls = { ca = "path", cert = "path", key = "path", verify = true }`` (paths relative to the
config file, as Kubernetes secrets mounted as files usually are):

- ``ca``: PEM bundle of the CAs that sign the receiver's certificate. It *replaces* the
  system's trust store for this destination (as ``curl --cacert`` does): a private CA is
  trusted, nothing else.
- ``cert`` and ``key``: the client certificate (PEM, may include the chain) and its private
  key for mutual TLS; ``key`` may be left out when the ``cert`` file holds both.
- ``verify = false`` turns certificate checks off (tests, a migration); the client
  certificate is still presented.

Every file is loaded once at config load, so that a missing file, a file that is not PEM or a
key that does not match its certificate is a config error naming the key, not a failure of
every delivery later.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from pydantic import ValidationInfo, field_validator, model_validator

from sender.config import LocalPath, Options

__all__ = ["TlsConfig"]


def _readable(path: str) -> str:
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        file.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror}") from None
    return path


class TlsConfig(Options):
    """``[destinations.<name>] tls = { ca, cert, key, verify }``."""

    ca: LocalPath | None = None
    cert: LocalPath | None = None
    key: LocalPath | None = None
    verify: bool = True

    @field_validator("ca")
    @classmethod
    def _loadable_ca(cls, value: str | None) -> str | None:
        if value is not None:
            _readable(value)
            try:
                ssl.create_default_context(cafile=value)
            except (ssl.SSLError, ValueError) as exc:
                raise ValueError(f"{value}: not a PEM CA bundle ({exc})") from None
        return value

    @field_validator("cert")
    @classmethod
    def _readable_cert(cls, value: str | None) -> str | None:
        if value is not None:
            _readable(value)
            if b"-----BEGIN CERTIFICATE-----" not in Path(value).read_bytes():
                raise ValueError(f"{value}: not a PEM certificate")
        return value

    @field_validator("key")
    @classmethod
    def _key_matches_cert(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        _readable(value)
        if "cert" not in info.data:  # the cert itself failed: its error says why
            return value
        cert = info.data["cert"]
        if cert is None:
            raise ValueError("a client key needs a client certificate (tls.cert)")
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, value)
        except ssl.SSLError as exc:
            raise ValueError(
                f"{value}: not a private key for {cert} (unencrypted PEM expected: {exc.reason})"
            ) from None
        return value

    @model_validator(mode="after")
    def _cert_holds_its_key(self) -> TlsConfig:
        if self.cert is not None and self.key is None:
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(self.cert)
            except ssl.SSLError:
                raise ValueError(
                    f"key: required: {self.cert} holds no private key for its certificate"
                ) from None
        return self

    def context(self) -> ssl.SSLContext:
        """The client ``SSLContext`` these settings describe (files are read here)."""
        context = ssl.create_default_context(cafile=self.ca)
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.cert is not None:
            context.load_cert_chain(self.cert, self.key)
        return context
