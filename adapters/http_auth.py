"""Authentication for the HTTP destination: OAuth2 client credentials, basic, bearer.

``auth = { type = "oauth2", token_url, client_id, client_secret, scope, audience }``
fetches an access token with the client-credentials grant (RFC 6749 §4.4) and sends it as
``Authorization: Bearer``. One token is cached per destination and shared by every request
in flight; at most one token request runs at a time (the others wait for its answer). It is
refreshed before it expires (a tenth of its lifetime early, at most 30 s), and a ``401`` from
the receiver refreshes it once and sends that request again. A failing token endpoint is a
``RetryableError`` of the delivery, retried under the destination's retry policy.

``{ type = "basic", username, password }`` and ``{ type = "bearer", token }`` send a fixed
``Authorization`` header. Secrets (client secret, password, token, every access token
fetched) are registered with the log masker: they never show in logs or reasons.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from typing import Annotated, Literal
from urllib.parse import quote_plus, urlsplit

import aiohttp
import orjson
from pydantic import Field, SecretStr, field_validator

from sender.config import Options, mask_url
from sender.errors import RetryableError
from sender.log import forget_secret, get_logger, register_secret
from sender_adapters.http_response import client_error, excerpt, parse_retry_after, read_bounded

__all__ = [
    "AuthConfig",
    "Authenticator",
    "BasicAuth",
    "BearerAuth",
    "OAuth2Auth",
    "OAuth2Token",
    "StaticAuthorization",
    "authenticator",
]

log = get_logger("sender.http.auth")

_EARLY_SHARE = 0.1  # refresh when a tenth of the token's lifetime is left...
_EARLY_MAX_S = 30.0  # ...but never more than this early


class BasicAuth(Options):
    """``auth = { type = "basic", username, password }``."""

    type: Literal["basic"]
    username: str = Field(min_length=1)
    password: SecretStr

    @field_validator("username")
    @classmethod
    def _no_colon(cls, value: str) -> str:
        if ":" in value:  # RFC 7617: the user-id cannot hold a colon
            raise ValueError("must not contain ':'")
        return value


class BearerAuth(Options):
    """``auth = { type = "bearer", token }``."""

    type: Literal["bearer"]
    token: SecretStr

    @field_validator("token")
    @classmethod
    def _non_empty(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value


class OAuth2Auth(Options):
    """``auth = { type = "oauth2", token_url, client_id, client_secret, scope, audience }``.

    ``client_auth`` says how the client authenticates to the token endpoint: ``"basic"``
    (HTTP Basic, what RFC 6749 requires every server to accept), ``"body"``
    (``client_id``/``client_secret`` form fields, for servers that want them there) or
    ``"auto"`` (the default): Basic first and, if the endpoint refuses it with 400 or 401, the
    form fields; whichever worked is kept (golang.org/x/oauth2 does the same).
    """

    type: Literal["oauth2"]
    token_url: str
    client_id: str = Field(min_length=1)
    client_secret: SecretStr
    scope: str | None = None
    audience: str | None = None
    client_auth: Literal["auto", "basic", "body"] = "auto"

    @field_validator("token_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value


AuthConfig = Annotated[BasicAuth | BearerAuth | OAuth2Auth, Field(discriminator="type")]


class Authenticator:
    """Gives the ``Authorization`` header value for a request, and learns of a ``401``."""

    async def authorization(self, session: aiohttp.ClientSession) -> str:
        raise NotImplementedError

    async def rejected(self, session: aiohttp.ClientSession, used: str) -> bool:
        """The receiver answered 401 to a request sent with ``used``: True when sending it
        again (with ``await authorization()``) may succeed."""
        return False


class StaticAuthorization(Authenticator):
    """A fixed header: ``Basic <user:password>`` or ``Bearer <token>``."""

    def __init__(self, value: str) -> None:
        register_secret(value)
        self._value = value

    async def authorization(self, session: aiohttp.ClientSession) -> str:
        return self._value


class OAuth2Token(Authenticator):
    """One destination's client-credentials token: cached, shared, refreshed on time.

    ``clock`` (monotonic seconds) is injectable for tests. The lock makes concurrent
    requests that find the token stale wait for one token request rather than each sending
    their own.
    """

    def __init__(
        self,
        config: OAuth2Auth,
        *,
        timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.requests = 0  # token requests sent (status pages, tests)
        self._timeout_s = timeout_s
        self._clock = clock
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0  # monotonic time from which the token is stale
        self._where = mask_url(config.token_url)
        # how the client authenticates: "auto" starts with Basic and keeps what works
        self._style = "body" if config.client_auth == "body" else "basic"

    def _fresh(self) -> str | None:
        if self._token is not None and self._clock() < self._refresh_at:
            return self._token
        return None

    async def authorization(self, session: aiohttp.ClientSession) -> str:
        token = self._fresh()
        if token is None:
            async with self._lock:
                # another request may have refreshed it while this one waited
                token = self._fresh() or await self._fetch(session)
        return f"Bearer {token}"

    async def rejected(self, session: aiohttp.ClientSession, used: str) -> bool:
        async with self._lock:
            if self._token is not None and f"Bearer {self._token}" == used:
                self._refresh_at = 0.0  # the receiver no longer takes it, whatever it said
                await self._fetch(session)
        return True

    def _request(self, style: str) -> tuple[dict[str, str], dict[str, str]]:
        form = {"grant_type": "client_credentials"}
        if self.config.scope:
            form["scope"] = self.config.scope
        if self.config.audience:
            form["audience"] = self.config.audience
        headers = {"Accept": "application/json"}
        secret = self.config.client_secret.get_secret_value()
        if style == "basic":
            # RFC 6749 §2.3.1: both parts form-urlencoded before Basic encoding
            pair = f"{quote_plus(self.config.client_id)}:{quote_plus(secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form.update(client_id=self.config.client_id, client_secret=secret)
        return form, headers

    async def _post(
        self, session: aiohttp.ClientSession, style: str, what: str
    ) -> tuple[int, bytes, float | None]:
        form, headers = self._request(style)
        self.requests += 1
        try:
            async with session.post(
                self.config.token_url, data=form, headers=headers, allow_redirects=False
            ) as response:
                body = await read_bounded(response)
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                return response.status, body, retry_after
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise client_error(exc, self._timeout_s, what=what) from exc

    async def _fetch(self, session: aiohttp.ClientSession) -> str:
        what = f"token endpoint {self._where}"
        style = self._style
        status, body, retry_after = await self._post(session, style, what)
        if status in (400, 401) and self.config.client_auth == "auto" and style == "basic":
            # a server that reads the credentials only from the form says invalid_client
            status, body, retry_after = await self._post(session, "body", what)
            if status == 200:
                self._style = "body"
        if status != 200:
            text = excerpt(body)
            raise RetryableError(
                f"{what}: HTTP {status}" + (f": {text}" if text else ""),
                status=status,
                retry_after=retry_after,
            )
        token, lifetime = self._parse(body, what)
        previous, self._token = self._token, token
        register_secret(token)
        if previous is not None and previous != token:
            forget_secret(previous)  # tokens come and go: the masker must not grow forever
        now = self._clock()
        if lifetime is None:  # no expires_in: used until the receiver refuses it (401)
            self._refresh_at = float("inf")
        else:
            self._refresh_at = now + lifetime - min(_EARLY_MAX_S, lifetime * _EARLY_SHARE)
        log.debug("oauth2.token", token_url=self._where, expires_in=lifetime)
        return token

    @staticmethod
    def _parse(body: bytes, what: str) -> tuple[str, float | None]:
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            answer = None
        if not isinstance(answer, dict):
            raise RetryableError(f"{what}: the answer is not a JSON object", status=None)
        token = answer.get("access_token")
        if not isinstance(token, str) or not token:
            raise RetryableError(f"{what}: the answer has no access_token", status=None)
        expires_in = answer.get("expires_in")
        try:
            lifetime = float(expires_in) if expires_in is not None else None
        except (TypeError, ValueError):
            lifetime = None
        if lifetime is not None and not lifetime > 0:
            lifetime = 0.0  # already expired: fetched again for the next request
        return token, lifetime


def authenticator(config: AuthConfig | None, *, timeout_s: float) -> Authenticator | None:
    """The authenticator for a destination's ``auth`` (None without one)."""
    if config is None:
        return None
    if isinstance(config, BasicAuth):
        pair = f"{config.username}:{config.password.get_secret_value()}"
        return StaticAuthorization("Basic " + base64.b64encode(pair.encode()).decode())
    if isinstance(config, BearerAuth):
        return StaticAuthorization(f"Bearer {config.token.get_secret_value()}")
    return OAuth2Token(config, timeout_s=timeout_s)
