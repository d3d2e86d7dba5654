"""The status page on the control server: ``GET /`` (everything at a glance), ``GET
/batches/{id}`` (one batch: chunks, reconciliation, the replay that would repair it) and
``GET /v1/status`` (the JSON both are drawn from; ``?batch=ID`` adds that batch).

Read-only, and under the same rule as the ``/v1`` routes: when ``daemon.token`` is set, a
request needs ``Authorization: Bearer <token>`` or a session cookie from the sign-in form
(``POST /login``; HttpOnly, SameSite=Strict, kept in memory for 12 hours). A session only
reads: it is good for the pages and ``GET /v1/status``, never for ``POST /v1/batches``.
Script and stylesheet are files of the package (``sender/page/``), served from
``/static/``; there is no build step, no CDN and no font to fetch.
"""

from __future__ import annotations

import hmac
import secrets
import time
from importlib import resources
from typing import Any

import orjson
from aiohttp import web

from .statusdata import StatusSource
from .statushtml import batch_page, login_page, overview_page

__all__ = ["SESSION_COOKIE", "StatusPage"]

SESSION_COOKIE = "sender_session"
_SESSION_S = 12 * 3600.0
_MAX_SESSIONS = 1000
_STATIC = {"page.css": "text/css", "page.js": "text/javascript"}
# no inline script or style anywhere, no other origin: a strict policy costs nothing
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class StatusPage:
    """The page's routes; ``token`` is ``daemon.token`` (None: open to whoever reaches the
    port, as the ``/v1`` routes are)."""

    def __init__(
        self,
        source: StatusSource,
        token: str | None,
        *,
        clock: Any = time.monotonic,
    ) -> None:
        self.source = source
        self.token = token
        self._clock = clock
        self._sessions: dict[str, float] = {}  # session id -> expiry (monotonic)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self._overview),
            web.get("/batches/{batch_id}", self._batch),
            web.get("/v1/status", self._status),
            web.post("/login", self._login),
            web.post("/logout", self._logout),
            web.get("/static/{name}", self._static),
        ]

    # -- access -----------------------------------------------------------------------------

    def has_session(self, request: web.Request) -> bool:
        """Whether the request carries a live session cookie."""
        sid = request.cookies.get(SESSION_COOKIE)
        if not sid:
            return False
        expiry = self._sessions.get(sid)
        if expiry is None:
            return False
        if expiry < self._clock():
            del self._sessions[sid]
            return False
        return True

    def _bearer_ok(self, request: web.Request) -> bool:
        assert self.token is not None
        given = request.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode())

    def allowed(self, request: web.Request) -> bool:
        """What every page route checks (``/v1/status`` is checked by the control server's
        middleware, which asks ``has_session`` too)."""
        return self.token is None or self._bearer_ok(request) or self.has_session(request)

    def _new_session(self) -> str:
        now = self._clock()
        for sid in [s for s, expiry in self._sessions.items() if expiry < now]:
            del self._sessions[sid]
        while len(self._sessions) >= _MAX_SESSIONS:  # the oldest goes
            del self._sessions[next(iter(self._sessions))]
        sid = secrets.token_urlsafe(32)
        self._sessions[sid] = now + _SESSION_S
        return sid

    # -- handlers ---------------------------------------------------------------------------

    async def _overview(self, request: web.Request) -> web.Response:
        if not self.allowed(request):
            return _html(login_page("/"), 401)
        page = overview_page(await self.source.snapshot(), sign_out=self.has_session(request))
        return _html(page)

    async def _batch(self, request: web.Request) -> web.Response:
        batch_id = request.match_info["batch_id"]
        if not self.allowed(request):
            return _html(login_page(request.path), 401)
        doc = await self.source.snapshot(batch_id)
        page = batch_page(doc, batch_id, sign_out=self.has_session(request))
        return _html(page, 200 if doc.get("batch") else 404)

    async def _status(self, request: web.Request) -> web.Response:
        doc = await self.source.snapshot(request.query.get("batch") or None)
        return web.Response(
            body=orjson.dumps(doc), content_type="application/json", headers=_HEADERS
        )

    async def _login(self, request: web.Request) -> web.Response:
        form = await request.post()
        next_path = _safe_next(str(form.get("next", "/")))
        if self.token is None:
            raise web.HTTPSeeOther(next_path)
        given = str(form.get("token", ""))
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return _html(login_page(next_path, wrong=True), 401)
        response = web.HTTPSeeOther(next_path, headers=_HEADERS)
        response.set_cookie(
            SESSION_COOKIE,
            self._new_session(),
            max_age=int(_SESSION_S),
            path="/",
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )
        raise response

    async def _logout(self, request: web.Request) -> web.Response:
        sid = request.cookies.get(SESSION_COOKIE)
        if sid:
            self._sessions.pop(sid, None)
        response = web.HTTPSeeOther("/", headers=_HEADERS)
        response.del_cookie(SESSION_COOKIE, path="/")
        raise response

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in _STATIC:
            raise web.HTTPNotFound()
        body = resources.files("sender").joinpath("page", name).read_bytes()
        return web.Response(
            body=body,
            content_type=_STATIC[name],
            charset="utf-8",
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )


def _safe_next(path: str) -> str:
    """Only a path on this server (never ``//elsewhere`` or a full URL) to go back to."""
    if not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/"
    return path


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(
        text=text, status=status, content_type="text/html", charset="utf-8", headers=_HEADERS
    )
