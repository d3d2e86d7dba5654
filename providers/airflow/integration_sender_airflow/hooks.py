"""``IntegrationSenderHook``: the daemon's control server, as an Airflow connection.

Connection type ``integration_sender`` (default id ``integration_sender_default``): *host* and
*port* of the control server (``[daemon] listen``), the bearer token in *password* (the
daemon's ``token`` or the http trigger's ``token``), and an optional *schema* ``http`` (the
default) or ``https``. For example, as an environment variable::

    AIRFLOW_CONN_INTEGRATION_SENDER_DEFAULT='{"conn_type": "integration_sender",
        "host": "sender.internal", "port": 8080, "password": "<token>"}'

The operator's side (``post_batch``, ``get_batch``) is synchronous (stdlib ``urllib``, a
task runs in a plain thread); the trigger's side (``aget_batch``) uses aiohttp and never
blocks the triggerer's event loop. Both read an answer the same way, and neither honours
``HTTP(S)_PROXY`` from the environment: the control server is an internal service.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from airflow.sdk import BaseHook, Connection

from .errors import ControlServerError, IntegrationSenderError, TokenRejected, TriggerRejected

__all__ = ["ControlServer", "IntegrationSenderHook"]

_SCHEMES = ("http", "https")


@dataclass(frozen=True)
class ControlServer:
    """Where a connection points: the base URL and the token (kept out of ``repr``)."""

    conn_id: str
    base_url: str
    token: str | None = field(default=None, repr=False)

    def url(self, path: str) -> str:
        return self.base_url + path

    def headers(self, *, body: bool = False) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if body:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers


def _split_host(host: str) -> tuple[str | None, str, int | None]:
    """Scheme, host and port of what was typed as a connection's host: ``sender.internal``,
    ``sender.internal:8080``, ``https://sender.example``, ``[::1]:8080`` or ``::1``."""
    try:
        parsed = urllib.parse.urlsplit(host if "://" in host else f"//{host}")
        return parsed.scheme or None, parsed.hostname or "", parsed.port
    except ValueError:  # an IPv6 literal without brackets: no port to split off
        return None, host, None


def control_server(conn: Connection) -> ControlServer:
    """The control server a connection names; a connection that cannot work fails here."""
    conn_id = conn.conn_id
    given_scheme, host, given_port = _split_host((conn.host or "").strip())
    scheme = (given_scheme or conn.schema or "http").strip().lower()
    port = conn.port or given_port
    if not host:
        raise IntegrationSenderError(
            f"connection {conn_id!r}: no host; set the control server's host and port "
            "(the daemon's [daemon] listen)"
        )
    if scheme not in _SCHEMES:
        raise IntegrationSenderError(
            f"connection {conn_id!r}: schema {scheme!r} is not http or https"
        )
    netloc = f"[{host}]" if ":" in host else host  # an IPv6 literal
    base = f"{scheme}://{netloc}" + (f":{port}" if port else "")
    return ControlServer(conn_id=conn_id, base_url=base, token=conn.password or None)


def _error_text(body: bytes) -> str:
    """The ``error`` the control server put in its JSON answer, else the body itself."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")[:500]
    if isinstance(data, Mapping) and isinstance(error := data.get("error"), str):
        return error
    return json.dumps(data)[:500]


def _json(server: ControlServer, url: str, status: int, body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise ControlServerError(
            f"{url} answered {status} with a body that is not a JSON object: "
            f"{body[:200]!r} (is connection {server.conn_id!r} the sender's control server?)",
            url=url,
            status=status,
        )
    return data


def _refuse(server: ControlServer, url: str, status: int, body: bytes) -> ControlServerError:
    """The error for an answer the caller did not expect."""
    if status in (401, 403):
        given = "its token" if server.token else "no token"
        return TokenRejected(
            f"the control server at {url} refused connection {server.conn_id!r} "
            f"(HTTP {status}, sent {given}): set the connection's password to the daemon's "
            f"token [{_error_text(body)}]",
            url=url,
            status=status,
        )
    return ControlServerError(
        f"the control server at {url} answered HTTP {status}: {_error_text(body)}",
        url=url,
        status=status,
    )


def _posted(server: ControlServer, message: Mapping[str, Any], status: int, body: bytes) -> str:
    url = server.url("/v1/batches")
    if status == 202:
        accepted = _json(server, url, status, body).get("accepted")
        return str(accepted or message.get("batch_id"))
    if status == 400:
        raise TriggerRejected(str(message.get("batch_id")), _error_text(body))
    raise _refuse(server, url, status, body)


def _got(server: ControlServer, url: str, status: int, body: bytes) -> dict[str, Any] | None:
    if status == 200:
        return _json(server, url, status, body)
    if status == 404:
        return None  # not (yet) in the daemon's ledger
    raise _refuse(server, url, status, body)


def _batch_path(batch_id: str) -> str:
    return "/v1/batches/" + urllib.parse.quote(batch_id, safe="")


class IntegrationSenderHook(BaseHook):
    """Talks to an integration-sender daemon's control server (``POST``/``GET /v1/batches``).

    :param sender_conn_id: an ``integration_sender`` connection.
    :param request_timeout: seconds one HTTP request may take.
    """

    conn_name_attr = "sender_conn_id"
    default_conn_name = "integration_sender_default"
    conn_type = "integration_sender"
    hook_name = "Integration Sender"

    def __init__(
        self, sender_conn_id: str = default_conn_name, *, request_timeout: float = 30.0
    ) -> None:
        super().__init__()
        self.sender_conn_id = sender_conn_id
        self.request_timeout = request_timeout
        self._server: ControlServer | None = None
        # no proxies from the environment, like aiohttp without trust_env
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["login", "extra"],
            "relabeling": {
                "host": "Control server host",
                "port": "Control server port",
                "schema": "Scheme (http or https)",
                "password": "Bearer token",
            },
            "placeholders": {
                "host": "sender.internal",
                "port": "8080",
                "schema": "http",
                "password": "the daemon's token or [trigger] token",
            },
        }

    def get_conn(self) -> ControlServer:
        if self._server is None:
            self._server = control_server(self.get_connection(self.sender_conn_id))
        return self._server

    async def aget_conn(self) -> ControlServer:
        if self._server is None:
            self._server = control_server(await self.aget_connection(self.sender_conn_id))
        return self._server

    def test_connection(self) -> tuple[bool, str]:
        """The UI's *Test* button: an authenticated read of the batch list."""
        server = self.get_conn()
        url = server.url("/v1/batches?limit=1")
        try:
            status, body = self._request("GET", url, server.headers())
            if status != 200:
                raise _refuse(server, url, status, body)
        except IntegrationSenderError as exc:
            return False, str(exc)
        return True, f"{server.base_url} answered with its batches"

    # ---- synchronous: the operator and the sensor's poke, in a worker

    def _request(
        self, method: str, url: str, headers: dict[str, str], data: bytes | None = None
    ) -> tuple[int, bytes]:
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with self._opener.open(request, timeout=self.request_timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:  # an answer, just not a 2xx one
            with exc:
                return exc.code, exc.read()
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise ControlServerError(
                f"cannot reach the control server at {url}: {reason}", url=url
            ) from exc

    def post_batch(self, message: Mapping[str, Any]) -> str:
        """Publish a trigger message; the daemon stored it durably once this returns.

        :returns: the accepted batch id.
        :raises TriggerRejected: the message is invalid (HTTP 400), with the daemon's reason.
        :raises TokenRejected: the token is wrong or missing.
        :raises ControlServerError: unreachable, or any other answer.
        """
        server = self.get_conn()
        body = json.dumps(dict(message)).encode()
        status, answer = self._request(
            "POST", server.url("/v1/batches"), server.headers(body=True), body
        )
        return _posted(server, message, status, answer)

    def get_batch(self, batch_id: str) -> dict[str, Any] | None:
        """The batch as ``GET /v1/batches/{id}`` shows it, or None while the daemon has no
        such batch (the trigger message is still queued)."""
        server = self.get_conn()
        url = server.url(_batch_path(batch_id))
        status, body = self._request("GET", url, server.headers())
        return _got(server, url, status, body)

    # ---- asynchronous: the deferrable trigger, in the triggerer's event loop

    async def aget_batch(self, batch_id: str) -> dict[str, Any] | None:
        """``get_batch`` for async code."""
        server = await self.aget_conn()
        url = server.url(_batch_path(batch_id))
        timeout = aiohttp.ClientTimeout(total=self.request_timeout)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(url, headers=server.headers()) as response,
            ):
                status, body = response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ControlServerError(
                f"cannot reach the control server at {url}: {exc!r}", url=url
            ) from exc
        return _got(server, url, status, body)
