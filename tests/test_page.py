"""The status page (``GET /``, ``/batches/{id}``, ``GET /v1/status``) of a real daemon, read by
a program and by headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by
Selenium) while a batch runs against a slow receiver and a destination that is down.

Selenium is synchronous: its calls run in a thread (``asyncio.to_thread``) so that the
daemon, the receiver and the page keep running on the test's event loop meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sender import retry
from sender.daemon import Daemon
from sender.live import AttemptLog, LiveStatus, percentile
from sender.log import mask_values, register_secret
from sender.testing.receiver import Receiver
from tests.batches import write_batch
from tests.brokers import free_port, running_daemon

TOKEN = "page-test-token-7f3a"
HEADER_SECRET = "header-secret-91c2"
CHROMEDRIVER = "/usr/bin/chromedriver"


def write_page_config(
    folder: Path, receiver: str, *, token: str | None = None, listen: str = "127.0.0.1:0"
) -> Path:
    """Two routes of the dataset ``churn``: ``scores`` to a slow receiver (one request at a
    time, chunks of 5 records) and ``partner`` to a port where nothing listens (its circuit
    opens after one failed delivery; its chunks end in the dead-letter store)."""
    token_line = f'token = "{token}"' if token else ""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sender.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [daemon]
            ledger = "ledger.db"
            listen = "{listen}"
            {token_line}

            [trigger]
            type = "spool"
            path = "queue"
            poll_s = "50ms"

            [destinations.scores_api]
            type = "http"
            url = "{receiver}/scores"
            concurrency = 1
            headers = {{ Authorization = "Bearer {HEADER_SECRET}" }}
            retry = {{ attempts = 3, initial = "10ms", max = "50ms", budget = "10s" }}

            [destinations.partner_api]
            type = "http"
            url = "http://127.0.0.1:{free_port()}/down"
            retry = {{ attempts = 2, initial = "10ms", max = "10ms", budget = "5s" }}
            circuit = {{ failures = 1, reset = "10m" }}

            [destinations.dead]
            type = "local"
            path = "dead"

            [routes.scores]
            datasets = ["churn"]
            chunk = {{ records = 5 }}
            targets = ["scores_api"]
            dead_letter = "dead"

            [routes.partner]
            datasets = ["churn"]
            chunk = {{ records = 25 }}
            targets = ["partner_api"]
            dead_letter = "dead"
            """
        )
    )
    return path


@dataclass
class PageDaemon:
    daemon: Daemon
    url: str  # http://127.0.0.1:port
    folder: Path

    def headers(self) -> dict[str, str]:
        token = self.daemon.config.daemon.token
        return {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}

    async def send_batch(self, batch_id: str, records: int = 60) -> None:
        uri = write_batch(self.folder / "lake" / batch_id, records, parts=2)
        message = {"batch_id": batch_id, "dataset": "churn", "uri": str(uri)}
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{self.url}/v1/batches", json=message, headers=self.headers()) as r,
        ):
            assert r.status == 202, await r.text()

    async def status(self, batch: str | None = None) -> dict[str, Any]:
        params = {"batch": batch} if batch else {}
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.url}/v1/status", params=params, headers=self.headers()) as r,
        ):
            assert r.status == 200, await r.text()
            doc: dict[str, Any] = await r.json()
            return doc

    async def wait_status(
        self, predicate: Callable[[dict[str, Any]], bool], batch: str | None = None
    ) -> dict[str, Any]:
        """Poll ``/v1/status`` (what the page does) until ``predicate`` holds."""
        while True:
            doc = await self.status(batch)
            if predicate(doc):
                return doc
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def page_daemon(
    folder: Path, receiver: Receiver, *, token: str | None = None, listen: str = "127.0.0.1:0"
) -> AsyncIterator[PageDaemon]:
    """The daemon of ``write_page_config`` running here, retries without waits."""
    retry.set_testing(True)
    config = write_page_config(folder, receiver.url, token=token, listen=listen)
    try:
        async with running_daemon(config) as d:
            assert d.control is not None
            yield PageDaemon(d, f"http://127.0.0.1:{d.control.port}", folder)
    finally:
        retry.set_testing(False)


def batch_in(doc: dict[str, Any], batch_id: str) -> dict[str, Any] | None:
    return next((b for b in doc["batches"] if b["batch_id"] == batch_id), None)


def _destination(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(d for d in doc["destinations"] if d["name"] == name)


def complete(batch_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda doc: (batch_in(doc, batch_id) or {}).get("state") == "complete"


# -- the JSON ----------------------------------------------------------------------------------


async def test_status_shows_a_running_batch_moving_and_the_down_destinations_open_circuit(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.slow(0.05)
    async with page_daemon(tmp_path, receiver) as page:
        await page.send_batch("churn-live")

        def moving(doc: dict[str, Any]) -> bool:
            batch = batch_in(doc, "churn-live")
            return bool(batch and batch["state"] == "running" and batch["records"]["delivered"])

        running = await page.wait_status(moving)
        batch = batch_in(running, "churn-live")
        assert batch is not None and batch["here"] is True
        assert 0 < batch["records"]["delivered"] < 2 * 60  # two routes of 60 records each
        assert running["summary"]["running"] == 1
        later = await page.wait_status(
            lambda doc: (
                (batch_in(doc, "churn-live") or {}).get("records", {}).get("delivered", 0)
                > batch["records"]["delivered"]
            )
        )
        partner = _destination(later, "partner_api")
        assert partner["circuit"] == "open"
        assert partner["role"] == "primary"
        assert "connection refused" in partner["last_error"]
        assert partner["last_error_at"] is not None
        assert "partner_api" in later["summary"]["open_circuits"]

        done = await page.wait_status(complete("churn-live"))

    finished = batch_in(done, "churn-live")
    assert finished is not None
    assert finished["records"] == {
        "read": 120,
        "delivered": 60,
        "dead_lettered": 60,
        "rejected": 0,
        "unchanged": 0,
        "chunks": 12 + 3,
        "tombstones": 0,
        "tombstones_dead_lettered": 0,
    }
    assert finished["reconciled"] is True
    scores = _destination(done, "scores_api")
    assert scores["circuit"] == "closed"
    assert scores["concurrency"] == 1 and scores["in_flight"] == 0
    assert scores["latency_p50_s"] >= 0.05 and scores["latency_p95_s"] >= scores["latency_p50_s"]
    assert done["dead_letters"]["since_start"] == {"dead": {"chunks": 3, "records": 60}}
    assert sum(done["throughput"]["records_per_s"]) > 0


async def test_one_batch_shows_its_chunks_reconciliation_and_the_replay_that_repairs_it(
    tmp_path: Path, receiver: Receiver
) -> None:
    async with page_daemon(tmp_path, receiver) as page:
        await page.send_batch("churn-repair")
        doc = await page.wait_status(complete("churn-repair"), batch="churn-repair")
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{page.url}/batches/churn-repair") as html_response,
            session.get(f"{page.url}/batches/no-such-batch") as missing,
        ):
            html = await html_response.text()
            assert missing.status == 404

    batch = doc["batch"]
    assert batch["reconciliation"]["partner"] == {
        "read": 60,
        "delivered": 0,
        "dead_lettered": 60,
        "rejected": 0,
        "unchanged": 0,
        "chunks": 3,
        "tombstones": 0,
        "tombstones_dead_lettered": 0,
        "reconciled": True,
    }
    assert batch["replay"]["chunks"] == 3
    config = tmp_path / "sender.toml"
    assert batch["replay"]["command"] == f"sender replay churn-repair -c {config}"
    dead = [c for c in batch["chunks"] if c["state"] == "dead_lettered"]
    assert [c["route"] for c in dead] == ["partner"] * 3
    assert batch["chunks"][0]["state"] == "dead_lettered"  # the ones with a story come first
    assert batch["chunks_total"] == 15
    assert f"sender replay churn-repair -c {config}" in html
    assert html.count('data-chunk="') == 15


async def test_without_the_token_the_page_asks_for_it_and_a_session_only_reads(
    tmp_path: Path, receiver: Receiver
) -> None:
    async with page_daemon(tmp_path, receiver, token=TOKEN) as page:
        await page.send_batch("churn-secret")
        await page.wait_status(complete("churn-secret"))
        jar = aiohttp.CookieJar(unsafe=True)  # keeps cookies of a bare IP address
        async with aiohttp.ClientSession(cookie_jar=jar) as session:
            async with session.get(f"{page.url}/") as r:
                assert r.status == 401
                login = await r.text()
            assert '<form method="post" action="/login">' in login
            assert "churn-secret" not in login
            async with session.get(f"{page.url}/v1/status") as r:
                assert r.status == 401
            async with session.post(f"{page.url}/login", data={"token": "wrong"}) as r:
                assert r.status == 401
                assert "wrong token" in await r.text()
            async with session.post(
                f"{page.url}/login",
                data={"token": TOKEN, "next": "//evil.example/"},
                allow_redirects=False,
            ) as r:
                assert r.status == 303
                assert r.headers["Location"] == "/"  # never off this server
                cookie = r.headers["Set-Cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
            async with session.get(f"{page.url}/") as r:
                assert r.status == 200
                html = await r.text()
            async with session.get(f"{page.url}/v1/status") as r:
                assert r.status == 200
                body = await r.text()
            async with session.get(f"{page.url}/v1/batches") as r:
                assert r.status == 401  # the session is for the page, not the API
            message = {"batch_id": "x", "dataset": "churn", "uri": str(tmp_path)}
            async with session.post(f"{page.url}/v1/batches", json=message) as r:
                assert r.status == 401
            async with session.post(f"{page.url}/logout", allow_redirects=False) as r:
                assert r.status == 303
            async with session.get(f"{page.url}/v1/status") as r:
                assert r.status == 401
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{page.url}/", headers=page.headers()) as r,
        ):
            assert r.status == 200  # the bearer header works for the page too

    assert "churn-secret" in html and "churn-secret" in body
    for secret in (TOKEN, HEADER_SECRET):
        assert secret not in html and secret not in body


async def test_the_page_ships_its_script_and_stylesheet_and_loads_nothing_from_elsewhere(
    tmp_path: Path, receiver: Receiver
) -> None:
    async with (
        page_daemon(tmp_path, receiver) as page,
        aiohttp.ClientSession() as session,
    ):
        async with session.get(f"{page.url}/") as r:
            html = await r.text()
            policy = r.headers["Content-Security-Policy"]
        async with session.get(f"{page.url}/static/page.js") as r:
            assert r.status == 200 and r.content_type == "text/javascript"
        async with session.get(f"{page.url}/static/page.css") as r:
            css = await r.text()
        async with session.get(f"{page.url}/static/..%2Fcli.py") as r:
            assert r.status == 404

    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert "http://" not in html.replace(page.url, "") and "https://" not in html
    assert "prefers-color-scheme: dark" in css and "@import" not in css and "url(" not in css
    assert 'name="viewport"' in html


async def test_with_the_ledger_down_the_page_still_shows_what_this_process_knows(
    tmp_path: Path, receiver: Receiver
) -> None:
    from sender.config import load_config
    from sender.errors import LedgerError
    from sender.statusdata import StatusSource
    from sender.statushtml import overview_page

    class DownLedger:
        async def list_batches(self, **filters: Any) -> list[Any]:
            raise LedgerError("database is locked")

    async def readiness() -> list[str]:
        return ["trigger: amqp not connected (reconnecting)"]

    live = LiveStatus()
    live.batch_started("churn-now", "churn", ["scores"])
    live.chunk_done("churn-now", "scores", "delivered", "scores_api", 5, 100, 50)
    config = load_config(write_page_config(tmp_path, receiver.url))
    source = StatusSource(config, DownLedger(), {}, live, lambda: {"churn-now"}, readiness)  # type: ignore[arg-type]

    doc = await source.snapshot()

    assert doc["problems"] == [
        "trigger: amqp not connected (reconnecting)",
        "ledger: database is locked",
    ]
    assert [b["batch_id"] for b in doc["batches"]] == ["churn-now"]
    html = overview_page(doc)
    assert '<p class="problem">ledger: database is locked</p>' in html
    assert 'data-batch-id="churn-now"' in html


# -- the live pieces on their own ---------------------------------------------------------------


def test_latency_percentiles_and_the_last_error_come_from_the_latest_attempts() -> None:
    log = AttemptLog(keep=100, wall=lambda: 1234.5)
    for ms in range(1, 201):  # only the latest 100 (101..200 ms) are kept
        log.answered(ms / 1000)
    log.failed("connection error: refused")  # no answer: no latency
    log.retried()

    stats = log.stats()

    assert stats["latency_p50_s"] == 0.15 and stats["latency_p95_s"] == 0.195
    assert stats["attempts"] == 201 and stats["failed_attempts"] == 1 and stats["retries"] == 1
    assert stats["last_error"] == "connection error: refused"
    assert stats["last_error_at"] == 1234.5
    assert percentile([], 0.5) is None


def test_throughput_history_counts_delivered_records_per_step_with_zeros_between() -> None:
    now = [1000.0]
    live = LiveStatus(step_s=2.0, history=5, wall=lambda: now[0], clock=lambda: now[0])
    live.batch_started("b", "churn", ["r"])
    live.chunk_done("b", "r", "delivered", "api", 10, 100, 50)
    now[0] = 1004.5
    live.chunk_done("b", "r", "delivered", "api", 20, 100, 50)
    live.chunk_done("b", "r", "dead_lettered", "dead", 7, 100, 50)

    history = live.throughput()

    assert history["records_per_s"] == [0.0, 0.0, 5.0, 0.0, 10.0]
    assert history["until"] == 1004.0
    assert live.dead_letters == {"dead": {"chunks": 1, "records": 7}}
    [batch] = live.batches()
    assert batch["records"]["delivered"] == 30 and batch["records"]["dead_lettered"] == 7


def test_masking_reaches_every_string_in_the_status_document() -> None:
    register_secret("masked-in-status-0042")
    doc = {"a": ["x masked-in-status-0042 y", {"b": "masked-in-status-0042"}], "n": 3}

    assert mask_values(doc) == {"a": ["x *** y", {"b": "***"}], "n": 3}


# -- in a real browser --------------------------------------------------------------------------


def _chromium_options(user_data: Path) -> Any:
    from selenium.webdriver.chrome.options import Options

    options = Options()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        "--window-size=1280,1000",
        f"--user-data-dir={user_data}",
    ):
        options.add_argument(flag)
    return options


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium with a fresh profile, driven through the system chromedriver."""
    if not Path(CHROMEDRIVER).exists():
        if os.environ.get("CI"):
            pytest.fail("chromium-driver is not installed (.ci/run installs it)")
        pytest.skip("no /usr/bin/chromedriver: apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    driver = webdriver.Chrome(
        service=Service(CHROMEDRIVER), options=_chromium_options(tmp_path / "chromium-profile")
    )
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _text(driver: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.CSS_SELECTOR, css).text)


async def _until(driver: Any, condition: Callable[[Any], Any], wait_s: float = 30) -> Any:
    """Wait in a thread (the daemon keeps running here) until ``condition(driver)`` holds."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(
        driver,
        wait_s,
        poll_frequency=0.1,
        ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
    )
    return await asyncio.to_thread(wait.until, condition)


async def test_the_page_in_chromium_follows_a_running_batch_without_a_reload(
    tmp_path: Path, receiver: Receiver, browser: Any
) -> None:
    receiver.slow(0.5)  # 12 chunks one at a time: 6 s, three polls of the page at least
    async with page_daemon(tmp_path, receiver) as page:
        await asyncio.to_thread(browser.get, f"{page.url}/")
        assert "no batches yet" in await asyncio.to_thread(_text, browser, "#batches")
        # a mark on this document: a reload would lose it
        await asyncio.to_thread(browser.execute_script, "window.__sameDocument = true")

        await page.send_batch("churn-browser")
        row = 'tr[data-batch-id="churn-browser"]'

        def delivered_while_running(driver: Any) -> int | None:
            cells = driver.find_elements("css selector", f"{row} td")
            if not cells or "running" not in cells[1].text:
                return None
            delivered = int(cells[4].text.replace(",", ""))  # batch, state, bar, read, delivered
            return delivered or None

        first = await _until(browser, delivered_while_running)
        moved = await _until(browser, lambda d: (delivered_while_running(d) or 0) > first)
        assert moved
        assert "running" in await asyncio.to_thread(_text, browser, row)
        partner = 'tr[data-destination="partner_api"]'
        await _until(browser, lambda d: d.find_element("css selector", partner).text)
        destination = await asyncio.to_thread(_text, browser, partner)
        assert "open" in destination.split() and "connection refused" in destination
        assert "closed" in await asyncio.to_thread(
            _text, browser, 'tr[data-destination="scores_api"]'
        )
        assert await asyncio.to_thread(browser.execute_script, "return window.__sameDocument")
        await asyncio.to_thread(browser.save_screenshot, str(tmp_path / "status-page.png"))

        await page.wait_status(complete("churn-browser"))
        await _until(browser, lambda d: "complete" in d.find_element("css selector", row).text)
        await asyncio.to_thread(browser.find_element("css selector", f"{row} a").click)
        await _until(browser, lambda d: d.find_elements("css selector", "pre.command"))
        command = await asyncio.to_thread(_text, browser, "pre.command")

    assert (tmp_path / "status-page.png").stat().st_size > 10_000
    assert command.startswith("sender replay churn-browser -c ")


async def test_the_page_in_chromium_asks_for_the_token_and_refuses_a_wrong_one(
    tmp_path: Path, receiver: Receiver, browser: Any
) -> None:
    async with page_daemon(tmp_path, receiver, token=TOKEN) as page:
        await page.send_batch("churn-locked")
        await page.wait_status(complete("churn-locked"))
        await asyncio.to_thread(browser.get, f"{page.url}/")
        assert "churn-locked" not in await asyncio.to_thread(lambda: browser.page_source)

        async def sign_in(token: str) -> None:
            def fill() -> None:
                field = browser.find_element("css selector", "input[name=token]")
                field.clear()
                field.send_keys(token)
                field.submit()

            await asyncio.to_thread(fill)

        await sign_in("not-the-token")
        await _until(browser, lambda d: "wrong token" in d.page_source)
        assert "churn-locked" not in await asyncio.to_thread(lambda: browser.page_source)
        await sign_in(TOKEN)
        await _until(browser, lambda d: d.find_elements("css selector", "#batches tr"))
        await _until(browser, lambda d: d.find_element("id", "live").text.strip() == "· live")
        html = await asyncio.to_thread(lambda: browser.page_source)
        await asyncio.to_thread(browser.find_element("css selector", "form.signout button").click)
        await _until(browser, lambda d: d.find_elements("css selector", "input[name=token]"))
        after = await asyncio.to_thread(lambda: browser.page_source)

    assert 'data-batch-id="churn-locked"' in html
    assert "churn-locked" not in after  # signed out: the form again, no data
    assert TOKEN not in html and HEADER_SECRET not in html
