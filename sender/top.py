"""``sender top``: the status page in a terminal, refreshed every second (rich).

It reads ``GET /v1/status`` from the daemon the config names (``daemon.listen``, with
``daemon.token`` as the bearer token) and draws batches, destinations and a throughput
sparkline in 80 columns. ``--once`` prints one frame and exits, for scripts and tests. When
no daemon answers, it says so and exits 1 (``DaemonUnreachable``: nothing can be shown, as
nothing could be delivered); a daemon that refuses the configured token is a config error
(exit 2).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .config import AppConfig
from .errors import ConfigError, DaemonUnreachable
from .log import mask

__all__ = ["fetch_status", "render_frame", "run_top", "status_url"]

_SPARK = "▁▂▃▄▅▆▇█"
_CIRCUIT_STYLE = {"closed": "green", "open": "bold red", "half_open": "yellow"}
_STATE_STYLE = {"complete": "green", "running": "cyan", "incomplete": "yellow", "failed": "red"}
_REFRESH_S = 1.0
_TIMEOUT_S = 5.0


def status_url(config: AppConfig) -> str:
    """``/v1/status`` of the daemon at ``daemon.listen`` (a wildcard address means here)."""
    host = config.daemon.host
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.daemon.port}/v1/status"


async def fetch_status(config: AppConfig, session: aiohttp.ClientSession) -> dict[str, Any]:
    """The daemon's ``/v1/status`` document; raises ``DaemonUnreachable`` or ``ConfigError``."""
    url = status_url(config)
    headers = {"Accept": "application/json"}
    if config.daemon.token is not None:
        headers["Authorization"] = f"Bearer {config.daemon.token.get_secret_value()}"
    try:
        async with session.get(
            url, headers=headers, timeout=aiohttp.ClientTimeout(total=_TIMEOUT_S)
        ) as response:
            body = await response.read()
            status = response.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        reason = str(exc) or type(exc).__name__
        raise DaemonUnreachable(
            f"no daemon answers at {url} ({reason}); is `sender run` up with this config?"
        ) from exc
    if status == 401:
        raise ConfigError(f"daemon.token: the daemon at {url} refused it (HTTP 401)")
    if status != 200:
        raise DaemonUnreachable(f"{url} answered HTTP {status}: not a sender daemon?")
    try:
        doc: dict[str, Any] = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise DaemonUnreachable(f"{url} answered something that is not JSON") from exc
    return doc


def _n(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if isinstance(value, int) or value >= 100 else f"{value:,.1f}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.1f}s"
    if value < 3600:
        return f"{int(value // 60)}m{int(value % 60):02d}s"
    return f"{int(value // 3600)}h{int(value % 3600 // 60):02d}m"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:,.0f}ms"


def _clock(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%H:%M:%S")


def _chunks(count: int) -> str:
    return f"{count:,} chunk{'' if count == 1 else 's'}"


def sparkline(values: list[float], width: int) -> str:
    """``values`` squeezed into ``width`` characters (each the mean of its share)."""
    if not values or width <= 0:
        return ""
    if len(values) <= width:
        means = list(values)
    else:
        groups = [
            values[i * len(values) // width : (i + 1) * len(values) // width] for i in range(width)
        ]
        means = [sum(g) / len(g) for g in groups]
    peak = max(means) or 1.0
    return "".join(_SPARK[min(7, int(m / peak * 7.999))] if m else " " for m in means)


def _table() -> Table:
    return Table(box=None, pad_edge=False, collapse_padding=True, header_style="bold")


def _batches(batches: list[dict[str, Any]], limit: int) -> RenderableType:
    if not batches:
        return Text("no batches yet", style="dim")
    table = _table()
    table.add_column("batch", overflow="ellipsis", no_wrap=True, max_width=24)
    for name in ("state", "read", "deliv.", "dead", "rej.", "rec/s", "elapsed"):
        table.add_column(name, justify="left" if name == "state" else "right", no_wrap=True)
    for b in batches[:limit]:
        r = b["records"]
        table.add_row(
            Text(b["batch_id"]),
            Text(b["state"].replace("_", "-"), style=_STATE_STYLE.get(b["state"], "")),
            _n(r["read"]),
            _n(r["delivered"]),
            Text(_n(r["dead_lettered"]), style="red" if r["dead_lettered"] else ""),
            _n(r["rejected"]),
            _n(b.get("throughput_rps")),
            _seconds(b.get("elapsed_s")),
        )
    return table


def _destinations(destinations: list[dict[str, Any]], width: int) -> RenderableType:
    table = _table()
    table.add_column("destination", overflow="ellipsis", no_wrap=True, max_width=20)
    for name in ("circuit", "flight", "waits", "retries", "p50", "p95", "error at"):
        right = name not in ("circuit", "error at")
        table.add_column(name, justify="right" if right else "left", no_wrap=True)
    for d in destinations:
        circuit = Text(d["circuit"].replace("_", "-"), style=_CIRCUIT_STYLE.get(d["circuit"], ""))
        when = _clock(d.get("last_error_at")) if d.get("last_error") else "-"
        table.add_row(
            Text(d["name"]),
            circuit,
            f"{d['in_flight']}/{d['concurrency']}",
            _n(d["ratelimit_waits"]),
            _n(d["retries"]),
            _ms(d.get("latency_p50_s")),
            _ms(d.get("latency_p95_s")),
            when,
        )
    lines: list[RenderableType] = [table]
    for d in destinations:  # errors on lines of their own: they are long
        if d.get("last_error"):
            text = Text(f"  {d['name']}: ", style="bold")
            text.append(mask(str(d["last_error"])), style="red")
            text.truncate(width, overflow="ellipsis")
            lines.append(text)
    return Group(*lines)


def render_frame(doc: dict[str, Any], *, address: str, width: int = 80) -> RenderableType:
    """One frame of ``sender top`` for the ``/v1/status`` document ``doc``."""
    summary = doc["summary"]
    head = Text.assemble(
        ("sender top", "bold"),
        f" · {address} · v{doc['version']} · up {_seconds(doc['daemon']['uptime_s'])}"
        f" · {_clock(doc['generated_at'])} UTC",
    )
    head.truncate(width, overflow="ellipsis")
    circuits = ", ".join(summary["open_circuits"])
    running = summary["running"]
    line = Text(
        f"{running} batch{'' if running == 1 else 'es'} in flight · "
        f"{_n(summary['records_per_s'])} rec/s · "
        f"{_n(doc['daemon']['delivered_since_start'])} delivered · "
    )
    line.append(
        f"not closed: {circuits}" if circuits else "all circuits closed",
        style="bold red" if circuits else "green",
    )
    line.truncate(width, overflow="ellipsis")
    throughput = doc["throughput"]
    values = throughput["records_per_s"]
    span = _seconds(throughput["step_s"] * len(values)).replace(".0s", "s").replace("m00s", "m")
    label = f" {span} peak {_n(max(values, default=0))}/s"
    spark = Text("rec/s ", style="dim")
    spark.append(sparkline(values, width - len(label) - 6), style="cyan")
    spark.append(label, style="dim")
    dead = doc["dead_letters"]["since_start"]
    dead_line = Text(
        "dead letters since start: "
        + (", ".join(f"{k} {_chunks(v['chunks'])}" for k, v in dead.items()) or "none"),
        style="red" if dead else "dim",
    )
    dead_line.truncate(width, overflow="ellipsis")
    problems = []
    for problem in doc.get("problems") or ():
        text = Text(f"! {problem}", style="bold red")
        text.truncate(width, overflow="ellipsis")
        problems.append(text)
    return Group(
        head,
        line,
        *problems,
        spark,
        Text(""),
        _batches(doc["batches"], limit=10),
        Text(""),
        _destinations(doc["destinations"], width),
        dead_line,
    )


async def run_top(config: AppConfig, *, once: bool, console: Console) -> int:
    """``sender top``: one frame (``once``), or a live view until Ctrl-C."""
    address = config.daemon.listen
    width = min(console.width, 100) if console.is_terminal else 80
    async with aiohttp.ClientSession() as session:
        doc = await fetch_status(config, session)
        if once:
            console.print(render_frame(doc, address=address, width=width), width=width)
            return 0
        with Live(
            render_frame(doc, address=address, width=width),
            console=console,
            auto_refresh=False,
            screen=False,
        ) as live:
            while True:
                await asyncio.sleep(_REFRESH_S)
                width = min(console.width, 100)
                try:
                    frame: RenderableType = render_frame(
                        await fetch_status(config, session), address=address, width=width
                    )
                except DaemonUnreachable as exc:
                    frame = Text(f"{exc} (retrying every second)", style="red")
                live.update(frame, refresh=True)
