"""``[destinations.<name>]`` with ``type = "http"``: the HTTP destination's config, checked
at load so that ``sender config check`` finds what would otherwise fail every delivery."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    SecretStr,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from sender.codecs import CONTENT_TYPES
from sender.config import DestinationOptions
from sender.log import register_secret
from sender_adapters.http_auth import AuthConfig
from sender_adapters.http_signing import check_secret
from sender_adapters.http_templates import Template
from sender_adapters.http_tls import TlsConfig

__all__ = ["CONTENT_TYPES", "HttpOptions"]


# headers that describe the body, the chunk or its signature: a configured header must not
# change them (Authorization is set by ``auth`` when there is one)
_RESERVED = frozenset(
    name.lower()
    for name in (
        "Content-Encoding",
        "Content-Length",
        "Transfer-Encoding",
        "Host",
        "Idempotency-Key",
        "X-Sender-Batch",
        "X-Sender-Chunk",
        "X-Sender-Route",
        "X-Sender-Dataset",
        "X-Sender-Records",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    )
)
# RFC 9110 header field name
_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


_AUTH_TYPES = ("basic", "bearer", "oauth2")  # the tags of AuthConfig


def _errors(title: str, errors: list[tuple[tuple[str | int, ...], str]]) -> ValidationError:
    """A ValidationError at locations below the field, so that config errors name the exact
    key (``auth.client_id``, ``signing_secret[1]``)."""
    return ValidationError.from_exception_data(
        title,
        [
            InitErrorDetails(type=PydanticCustomError("value_error", message), loc=loc, input=None)
            for loc, message in errors
        ],
    )


class HttpOptions(DestinationOptions):
    """``[destinations.<name>]`` with ``type = "http"``.

    - ``url``: ``http://`` or ``https://``; may hold ``{dataset}``, ``{batch_id}``,
      ``{route}``, ``{chunk}``.
    - ``headers``: sent with every request; values may be ``${file:...}`` secrets and hold
      the same placeholders. They may replace ``User-Agent`` or ``Content-Type`` (a vendor
      media type) but not the headers that describe the body, the chunk or its signature.
    - ``signing_secret``: a ``whsec_`` secret, or a list of them while rotating (every one
      signs): Standard Webhooks signatures (``http_signing``).
    - ``auth``: oauth2 client credentials, basic or bearer (``http_auth``).
    - ``tls``: a private CA, a client certificate (``http_tls``).
    """

    type: str = "http"
    url: str
    method: Literal["POST", "PUT"] = "POST"
    headers: dict[str, SecretStr] = {}
    signing_secret: SecretStr | list[SecretStr] | None = None
    auth: AuthConfig | None = None
    tls: TlsConfig | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        Template(value, for_url=True)  # unknown placeholders are errors now, not per chunk
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value

    @field_validator("headers")
    @classmethod
    def _valid_headers(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, secret in value.items():
            if not name or not set(name) <= _TOKEN_CHARS:
                raise ValueError(f"{name!r} is not a valid header name")
            if name.lower() in _RESERVED:
                raise ValueError(f"{name!r} is set by the sender and cannot be configured")
            text = secret.get_secret_value()
            if any(c in text for c in "\r\n\x00"):
                raise ValueError(f"the value of {name!r} must not contain line breaks")
            try:
                Template(text, for_url=False)
            except ValueError as exc:
                raise ValueError(f"the value of {name!r}: {exc}") from None
        return value

    @property
    def signing_secrets(self) -> list[str]:
        """Every signing secret (one, or several while rotating), in the order given."""
        value = self.signing_secret
        if value is None:
            return []
        return [s.get_secret_value() for s in (value if isinstance(value, list) else [value])]

    @field_validator("signing_secret", mode="before")
    @classmethod
    def _secrets(cls, value: Any) -> Any:
        # one secret, or a list while rotating (every secret is checked, and named by its
        # place in the list)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str):
            register_secret(value)
            check_secret(value)
            return value
        if isinstance(value, list | tuple):
            if not value:
                raise ValueError("must name at least one whsec_ secret (or be left out)")
            problems: list[tuple[tuple[str | int, ...], str]] = []
            for i, secret in enumerate(value):
                text = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
                if not isinstance(text, str):
                    continue  # the type check says what is wrong
                register_secret(text)
                try:
                    check_secret(text)
                except ValueError as exc:
                    problems.append(((i,), str(exc)))
            if problems:
                raise _errors("signing_secret", problems)
            return value
        if value is not None:
            raise ValueError("must be a whsec_ secret, or a list of them while rotating")
        return value

    @field_validator("auth", mode="wrap")
    @classmethod
    def _auth(cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
        if value is not None and not isinstance(value, Mapping):
            raise ValueError('must be a table, e.g. { type = "bearer", token = "..." }')
        if isinstance(value, Mapping) and value.get("type") not in _AUTH_TYPES:
            known = ", ".join(repr(t) for t in _AUTH_TYPES)
            raise _errors("auth", [(("type",), f"must be one of {known}")])
        if value is not None and any(
            key.lower() == "authorization" for key in info.data.get("headers") or {}
        ):
            raise ValueError(
                "set either auth or headers.Authorization, not both "
                "(auth sends the Authorization header)"
            )
        try:
            return handler(value)
        except ValidationError as exc:
            # the discriminated union puts the type in the location (auth.oauth2.client_id):
            # the key in the file is auth.client_id
            problems = []
            for error in exc.errors():
                loc = error["loc"]
                if loc and loc[0] in _AUTH_TYPES:
                    loc = loc[1:]
                problems.append((loc, _message(error)))
            raise _errors("auth", problems) from None


def _message(error: Any) -> str:
    # the wording sender.config gives the common kinds, kept when errors are moved
    kind = error["type"]
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "literal_error":
        return f"must be one of {error.get('ctx', {}).get('expected')}"
    return str(error["msg"]).removeprefix("Value error, ")
