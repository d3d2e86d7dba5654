"""The status page as HTML, rendered on the server from the ``/v1/status`` document.

The page works without JavaScript (a reload shows the state now); ``sender/page/page.js``
redraws the same sections from ``/v1/status`` every two seconds, with the same markup, so
the two must change together. No inline script or style: the page is served with a strict
Content-Security-Policy, so bars and the chart are SVG with sizes as attributes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import quote

__all__ = ["batch_page", "login_page", "overview_page", "throughput_svg"]

_NONE = "\u2013"  # an en dash: nothing to show
_MINUS = "\u2212"
_CIRCUIT_LABEL = {"closed": "closed", "open": "open", "half_open": "half-open"}


def _e(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


def _n(value: int | float | None) -> str:
    if value is None:
        return _NONE
    return f"{value:,.0f}" if isinstance(value, int) or value >= 100 else f"{value:,.1f}"


def _seconds(value: float | None) -> str:
    if value is None:
        return _NONE
    if value < 60:
        return f"{value:.1f}s"
    if value < 3600:
        return f"{int(value // 60)}m{int(value % 60):02d}s"
    return f"{int(value // 3600)}h{int(value % 3600 // 60):02d}m"


def _ms(value: float | None) -> str:
    return _NONE if value is None else f"{value * 1000:,.0f} ms"


def _clock(epoch: float | None) -> str:
    if epoch is None:
        return _NONE
    return datetime.fromtimestamp(epoch, UTC).strftime("%H:%M:%S UTC")


def _shell(title: str, body: str, *, data: dict[str, str] | None = None) -> str:
    attrs = "".join(f' data-{k}="{_e(v)}"' for k, v in (data or {}).items())
    script = '<script src="/static/page.js" defer></script>' if data is not None else ""
    refresh = '<noscript><meta http-equiv="refresh" content="10"></noscript>' if data else ""
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="color-scheme" content="light dark">'
        f"<title>{_e(title)}</title>{refresh}"
        '<link rel="stylesheet" href="/static/page.css">'
        f"{script}</head><body{attrs}>{body}</body></html>\n"
    )


def _header(doc: dict[str, Any] | None, crumb: str = "", *, sign_out: bool = False) -> str:
    meta = ""
    if doc is not None:
        meta = (
            f"<span class='meta'>v{_e(doc['version'])} · "
            f'updated <span id="updated">{_clock(doc["generated_at"])}</span>'
            '<span id="live" class="live" hidden> · live</span></span>'
        )
    out = (
        '<form class="signout" method="post" action="/logout"><button>sign out</button></form>'
        if sign_out
        else ""
    )
    return f'<header><a class="brand" href="/">integration-sender</a>{crumb}{meta}{out}</header>'


def _state(state: str) -> str:
    return f'<span class="state state-{_e(state)}">{_e(state.replace("_", "-"))}</span>'


def _bar(records: dict[str, int]) -> str:
    """Delivered / dead-lettered / rejected as shares of the records read."""
    read = max(records.get("read", 0), 1)
    parts = [("delivered", "ok"), ("dead_lettered", "dead"), ("rejected", "rej")]
    x = 0.0
    rects = []
    for key, css in parts:
        width = min(100.0 - x, 100.0 * records.get(key, 0) / read)
        if width > 0:
            rects.append(f'<rect class="{css}" x="{x:.2f}" y="0" width="{width:.2f}" height="6"/>')
            x += width
    done = sum(records.get(k, 0) for k, _ in parts)
    title = f"{done:,} of {records.get('read', 0):,} records settled"
    return (
        f'<svg class="bar" viewBox="0 0 100 6" preserveAspectRatio="none" role="img" '
        f'aria-label="{_e(title)}"><title>{_e(title)}</title>'
        f'<rect class="track" x="0" y="0" width="100" height="6"/>{"".join(rects)}</svg>'
    )


def _span(seconds: float) -> str:
    return _seconds(seconds).replace(".0s", "s").replace("m00s", "m")


def throughput_svg(throughput: dict[str, Any]) -> str:
    """Records per second over the last minutes as an area chart (600 x 120 user units)."""
    values: list[float] = list(throughput.get("records_per_s") or [])
    step = float(throughput.get("step_s") or 1)
    peak = max(values, default=0.0)
    top = peak * 1.15 or 1.0
    width, height = 600.0, 120.0
    n = max(len(values) - 1, 1)
    points = [f"{i * width / n:.1f},{height - v / top * height:.1f}" for i, v in enumerate(values)]
    area = f"M0,{height} L" + " L".join(points) + f" L{width},{height} Z" if points else ""
    line = "M" + " L".join(points) if points else ""
    span = _span(step * len(values))
    label = f"records delivered per second, last {span}; peak {_n(peak)}/s"
    return (
        f'<svg id="chart" class="chart" viewBox="0 0 {width:.0f} {height:.0f}" '
        f'preserveAspectRatio="none" role="img" aria-label="{_e(label)}">'
        f"<title>{_e(label)}</title>"
        f'<line class="grid" x1="0" y1="{height / 2}" x2="{width}" y2="{height / 2}"/>'
        f'<path class="area" d="{area}"/><path class="line" d="{line}"/></svg>'
        f'<div class="axis"><span>{_MINUS}{_e(span)}</span><span id="peak">peak {_n(peak)}/s</span>'
        "<span>now</span></div>"
    )


def _plural(count: int, word: str) -> str:
    return f"{_n(count)} {word}{'' if count == 1 else 's'}"


def _dead_total(doc: dict[str, Any]) -> str:
    stores = doc["dead_letters"]["since_start"].values()
    chunks = sum(c["chunks"] for c in stores)
    records = sum(c["records"] for c in stores)
    return f"{_plural(chunks, 'chunk')} · {_plural(records, 'record')}" if chunks else "none"


def _summary(doc: dict[str, Any]) -> str:
    s = doc["summary"]
    circuits = ", ".join(s["open_circuits"]) or "none"
    cards = [
        ("in flight", f"{s['running']} batch{'es' if s['running'] != 1 else ''}", ""),
        ("delivering", f"{_n(s['records_per_s'])} rec/s", ""),
        ("delivered since start", _n(doc["daemon"]["delivered_since_start"]), ""),
        ("circuits not closed", circuits, "bad" if s["open_circuits"] else ""),
        ("dead letters since start", _dead_total(doc), "bad" if _dead_total(doc) != "none" else ""),
    ]
    return "".join(
        f'<div class="card {css}"><div class="k">{_e(k)}</div><div class="v">{_e(v)}</div></div>'
        for k, v, css in cards
    )


def batches_table(batches: list[dict[str, Any]]) -> str:
    if not batches:
        return '<p class="empty">no batches yet</p>'
    rows = []
    for b in batches:
        r = b["records"]
        link = f"/batches/{quote(b['batch_id'], safe='')}"
        rows.append(
            f'<tr data-batch-id="{_e(b["batch_id"])}" data-state="{_e(b["state"])}">'
            f'<td class="id"><a href="{_e(link)}">{_e(b["batch_id"])}</a>'
            f'<div class="sub">{_e(b["dataset"])}</div></td>'
            f"<td>{_state(b['state'])}</td><td class='bar-cell'>{_bar(r)}</td>"
            f'<td class="num">{_n(r["read"])}</td><td class="num">{_n(r["delivered"])}</td>'
            f'<td class="num{" bad" if r["dead_lettered"] else ""}">{_n(r["dead_lettered"])}</td>'
            f'<td class="num">{_n(r["rejected"])}</td>'
            f'<td class="num">{_n(b.get("throughput_rps"))}</td>'
            f'<td class="num">{_seconds(b.get("elapsed_s"))}</td></tr>'
        )
    return (
        '<div class="scroll"><table><thead><tr><th>batch</th><th>state</th><th>progress</th>'
        '<th class="num">read</th><th class="num">delivered</th><th class="num">dead</th>'
        '<th class="num">rejected</th><th class="num">rec/s</th><th class="num">elapsed</th>'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def _circuit(d: dict[str, Any]) -> str:
    if d.get("gone"):  # answered 410 Gone: disabled until restart, whatever the circuit says
        return '<span class="circuit circuit-open">gone</span><div class="sub">410: disabled</div>'
    state = d["circuit"]
    label = _CIRCUIT_LABEL.get(state, state)
    wait = d.get("circuit_retry_after_s") or 0
    after = f'<div class="sub">probe in {_seconds(wait)}</div>' if state == "open" and wait else ""
    return f'<span class="circuit circuit-{_e(state)}">{_e(label)}</span>{after}'


def destinations_table(destinations: list[dict[str, Any]]) -> str:
    rows = []
    for d in destinations:
        limit = f"{d['in_flight']} / {d['concurrency']}" + (" (adaptive)" if d["adaptive"] else "")
        error = f'<span class="sub">{_NONE}</span>'
        if d.get("last_error"):
            error = (
                f'<div class="error">{_e(d["last_error"])}</div>'
                f'<div class="sub">{_clock(d.get("last_error_at"))}</div>'
            )
        rows.append(
            f'<tr data-destination="{_e(d["name"])}" data-circuit="{_e(d["circuit"])}">'
            f'<td class="id">{_e(d["name"])}<div class="sub">{_e(d["type"])} · {_e(d["role"])}'
            f"</div></td><td>{_circuit(d)}</td><td class='num'>{_e(limit)}</td>"
            f'<td class="num">{_n(d["ratelimit_waits"])}</td>'
            f'<td class="num">{_n(d["retries"])}</td>'
            f'<td class="num">{_ms(d.get("latency_p50_s"))}</td>'
            f'<td class="num">{_ms(d.get("latency_p95_s"))}</td><td>{error}</td></tr>'
        )
    return (
        '<div class="scroll"><table><thead><tr><th>destination</th><th>circuit</th>'
        '<th class="num">in flight</th><th class="num">rate waits</th>'
        '<th class="num">retries</th><th class="num">p50</th><th class="num">p95</th>'
        f"<th>last error</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def dead_letters(doc: dict[str, Any]) -> str:
    stores = doc["dead_letters"]["since_start"]
    if not stores:
        return '<p class="empty">no dead letters since the daemon started</p>'
    items = "".join(
        f"<li><b>{_e(name)}</b>: {_plural(c['chunks'], 'chunk')}, "
        f"{_plural(c['records'], 'record')}</li>"
        for name, c in stores.items()
    )
    return f"<ul>{items}</ul>"


def problems(doc: dict[str, Any]) -> str:
    """What the daemon's readiness check says is wrong, or nothing."""
    return "".join(f'<p class="problem">{_e(p)}</p>' for p in doc.get("problems") or ())


def overview_page(doc: dict[str, Any], *, sign_out: bool = False) -> str:
    """``GET /``; ``sign_out`` adds the button (the request came with a session)."""
    body = (
        f"{_header(doc, sign_out=sign_out)}<main>"
        f'<section id="problems">{problems(doc)}</section>'
        f'<section class="cards" id="summary">{_summary(doc)}</section>'
        f'<section><h2>throughput</h2><div id="throughput">{throughput_svg(doc["throughput"])}'
        "</div></section>"
        f'<section><h2>batches</h2><div id="batches">{batches_table(doc["batches"])}</div>'
        "</section>"
        '<section><h2>destinations</h2><div id="destinations">'
        f"{destinations_table(doc['destinations'])}</div></section>"
        f'<section><h2>dead letters</h2><div id="dead-letters">{dead_letters(doc)}</div>'
        "</section></main>"
        "<noscript><p class='note'>Without JavaScript this page refreshes every 10 s.</p>"
        "</noscript>"
    )
    return _shell("sender · status", body, data={"status-url": "/v1/status"})


def batch_section(batch: dict[str, Any]) -> str:
    r = batch["records"]
    meta = [
        ("state", _state(batch["state"])),
        ("dataset", _e(batch["dataset"])),
        ("source", f"<code>{_e(batch.get('uri'))}</code>"),
        ("elapsed", _seconds(batch.get("elapsed_s"))),
        ("rec/s", _n(batch.get("throughput_rps"))),
        ("runs", _e(batch.get("runs"))),
    ]
    dl = "".join(f"<div><dt>{k}</dt><dd>{v}</dd></div>" for k, v in meta)
    error = f'<p class="error">error: {_e(batch["error"])}</p>' if batch.get("error") else ""
    recon_rows = "".join(
        f"<tr><td>{_e(name)}</td><td class='num'>{_n(s['read'])}</td>"
        f"<td class='num'>{_n(s['delivered'])}</td><td class='num'>{_n(s['dead_lettered'])}</td>"
        f"<td class='num'>{_n(s['rejected'])}</td>"
        f"<td>{'✓ balanced' if s['reconciled'] else '✗ not yet'}</td></tr>"
        for name, s in batch["reconciliation"].items()
    )
    recon = (
        '<div class="scroll"><table><thead><tr><th>route</th><th class="num">read</th>'
        '<th class="num">delivered</th><th class="num">dead-lettered</th>'
        f'<th class="num">rejected</th><th>read = the rest</th></tr></thead><tbody>{recon_rows}'
        "</tbody></table></div>"
        if recon_rows
        else '<p class="empty">no reconciliation yet (it is stored when a run ends)</p>'
    )
    replay = batch["replay"]
    if replay["command"]:
        repair = (
            f"<p>{_n(replay['chunks'])} dead-lettered chunks ({_n(replay['records'])} records) "
            f"would go to {_e(', '.join(replay['targets']))}:</p>"
            f'<pre class="command"><code>{_e(replay["command"])}</code></pre>'
            "<p class='sub'>add <code>--dry-run</code> to see what it would send first</p>"
        )
    else:
        repair = '<p class="empty">nothing dead-lettered: nothing to replay</p>'
    chunk_rows = "".join(
        f'<tr data-chunk="{_e(c["chunk"])}"><td>{_e(c["route"])}</td>'
        f'<td class="num">{_e(c["chunk"])}{" (rejects)" if c["kind"] != "data" else ""}</td>'
        f"<td>{_state(c['state'])}</td><td class='num'>{_n(c['records'])}</td>"
        f"<td>{_e(c['target'] or _NONE)}</td><td class='num'>{_n(c['attempts'])}</td>"
        f"<td class='error'>{_e(c['last_error'] or '')}</td></tr>"
        for c in batch["chunks"]
    )
    more = batch["chunks_total"] - len(batch["chunks"])
    hidden = f'<p class="sub">… and {more} more delivered chunks</p>' if more > 0 else ""
    return (
        f'<h1 data-batch-id="{_e(batch["batch_id"])}">{_e(batch["batch_id"])}</h1>'
        f'<dl class="meta-list">{dl}</dl>{_bar(r)}'
        f'<p class="sub">read {_n(r["read"])} · delivered {_n(r["delivered"])} · '
        f"dead-lettered {_n(r['dead_lettered'])} · rejected {_n(r['rejected'])}</p>{error}"
        f"<h2>reconciliation</h2>{recon}<h2>repair</h2>{repair}"
        f"<h2>chunks ({_n(batch['chunks_total'])})</h2>"
        '<div class="scroll"><table><thead><tr><th>route</th><th class="num">chunk</th>'
        '<th>state</th><th class="num">records</th><th>target</th><th class="num">tries</th>'
        f"<th>last error</th></tr></thead><tbody>{chunk_rows}</tbody></table></div>{hidden}"
    )


def batch_page(doc: dict[str, Any], batch_id: str, *, sign_out: bool = False) -> str:
    """``GET /batches/{id}`` (``doc`` has the batch under ``"batch"``, None if unknown)."""
    batch = doc.get("batch")
    crumb = f' <span class="crumb">/ {_e(batch_id)}</span>'
    inner = (
        batch_section(batch)
        if batch
        else f'<h1>{_e(batch_id)}</h1><p class="empty">no such batch in the ledger</p>'
    )
    body = (
        f"{_header(doc, crumb, sign_out=sign_out)}"
        f'<main><section id="problems">{problems(doc)}</section>'
        f'<section id="batch">{inner}</section></main>'
    )
    url = f"/v1/status?batch={quote(batch_id, safe='')}"
    return _shell(f"sender · {batch_id}", body, data={"status-url": url, "batch": batch_id})


def login_page(next_path: str, *, wrong: bool = False) -> str:
    note = '<p class="error">wrong token</p>' if wrong else ""
    body = (
        f"{_header(None)}<main><section class='login'><h1>Sign in</h1>"
        "<p>This daemon's status page needs its control token (<code>daemon.token</code>).</p>"
        f'{note}<form method="post" action="/login">'
        f'<input type="hidden" name="next" value="{_e(next_path)}">'
        '<label for="token">token</label> <input id="token" name="token" type="password" '
        'autocomplete="current-password" required autofocus> '
        '<button type="submit">sign in</button></form></section></main>'
    )
    return _shell("sender · sign in", body)
