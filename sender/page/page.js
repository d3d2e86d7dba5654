// The status page, live: polls /v1/status every two seconds and redraws the sections the
// server rendered (sender/statushtml.py draws the same markup: change both together).
// No framework, no build step; without this script a reload does the same.
(function () {
  "use strict";
  var body = document.body;
  var url = body.getAttribute("data-status-url");
  if (!url || !window.fetch) return;
  var batchId = body.getAttribute("data-batch");
  var POLL_MS = 2000;

  function e(value) {
    return String(value === null || value === undefined ? "" : value)
      .replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;").replace(/'/g, "&#x27;");
  }
  function n(value) {
    if (value === null || value === undefined) return "–";
    var digits = Number.isInteger(value) || value >= 100 ? 0 : 1;
    return value.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
  }
  function seconds(v) {
    if (v === null || v === undefined) return "–";
    if (v < 60) return v.toFixed(1) + "s";
    var pad = function (x) { return (x < 10 ? "0" : "") + x; };
    if (v < 3600) return Math.floor(v / 60) + "m" + pad(Math.floor(v % 60)) + "s";
    return Math.floor(v / 3600) + "h" + pad(Math.floor((v % 3600) / 60)) + "m";
  }
  function ms(v) { return v === null || v === undefined ? "–" : n(Math.round(v * 1000)) + " ms"; }
  function clock(epoch) {
    if (epoch === null || epoch === undefined) return "–";
    return new Date(epoch * 1000).toISOString().substring(11, 19) + " UTC";
  }
  function state(s) { return '<span class="state state-' + e(s) + '">' + e(s.replace(/_/g, "-")) + "</span>"; }
  function bar(r) {
    var read = Math.max(r.read || 0, 1), x = 0, rects = "";
    [["delivered", "ok"], ["dead_lettered", "dead"], ["rejected", "rej"]].forEach(function (p) {
      var w = Math.min(100 - x, 100 * (r[p[0]] || 0) / read);
      if (w > 0) { rects += '<rect class="' + p[1] + '" x="' + x.toFixed(2) + '" y="0" width="' + w.toFixed(2) + '" height="6"/>'; x += w; }
    });
    var done = (r.delivered || 0) + (r.dead_lettered || 0) + (r.rejected || 0);
    var title = n(done) + " of " + n(r.read || 0) + " records settled";
    return '<svg class="bar" viewBox="0 0 100 6" preserveAspectRatio="none" role="img" aria-label="' + e(title) +
      '"><title>' + e(title) + '</title><rect class="track" x="0" y="0" width="100" height="6"/>' + rects + "</svg>";
  }
  function chart(t) {
    var values = t.records_per_s || [], step = t.step_s || 1;
    var peak = Math.max.apply(null, values.concat([0]));
    var top = peak * 1.15 || 1, W = 600, H = 120, k = Math.max(values.length - 1, 1);
    var pts = values.map(function (v, i) { return (i * W / k).toFixed(1) + "," + (H - v / top * H).toFixed(1); });
    var area = pts.length ? "M0," + H + " L" + pts.join(" L") + " L" + W + "," + H + " Z" : "";
    var line = pts.length ? "M" + pts.join(" L") : "";
    var last = span(step * values.length);
    var label = "records delivered per second, last " + last + "; peak " + n(peak) + "/s";
    return '<svg id="chart" class="chart" viewBox="0 0 ' + W + " " + H + '" preserveAspectRatio="none" role="img" aria-label="' +
      e(label) + '"><title>' + e(label) + '</title><line class="grid" x1="0" y1="' + H / 2 + '" x2="' + W + '" y2="' + H / 2 +
      '"/><path class="area" d="' + area + '"/><path class="line" d="' + line + '"/></svg>' +
      '<div class="axis"><span>−' + e(last) + '</span><span id="peak">peak ' + n(peak) + "/s</span><span>now</span></div>";
  }
  function plural(count, word) { return n(count) + " " + word + (count === 1 ? "" : "s"); }
  function deadTotal(doc) {
    var stores = doc.dead_letters.since_start, chunks = 0, records = 0;
    Object.keys(stores).forEach(function (k) { chunks += stores[k].chunks; records += stores[k].records; });
    return chunks ? plural(chunks, "chunk") + " · " + plural(records, "record") : "none";
  }
  function span(v) { return seconds(v).replace(".0s", "s").replace("m00s", "m"); }
  function summary(doc) {
    var s = doc.summary, circuits = s.open_circuits.join(", ") || "none";
    var cards = [
      ["in flight", s.running + " batch" + (s.running !== 1 ? "es" : ""), ""],
      ["delivering", n(s.records_per_s) + " rec/s", ""],
      ["delivered since start", n(doc.daemon.delivered_since_start), ""],
      ["circuits not closed", circuits, s.open_circuits.length ? "bad" : ""],
      ["dead letters since start", deadTotal(doc), deadTotal(doc) !== "none" ? "bad" : ""]
    ];
    return cards.map(function (c) {
      return '<div class="card ' + c[2] + '"><div class="k">' + e(c[0]) + '</div><div class="v">' + e(c[1]) + "</div></div>";
    }).join("");
  }
  function batches(list) {
    if (!list.length) return '<p class="empty">no batches yet</p>';
    var rows = list.map(function (b) {
      var r = b.records, link = "/batches/" + encodeURIComponent(b.batch_id);
      return '<tr data-batch-id="' + e(b.batch_id) + '" data-state="' + e(b.state) + '"><td class="id"><a href="' + e(link) + '">' +
        e(b.batch_id) + '</a><div class="sub">' + e(b.dataset) + "</div></td><td>" + state(b.state) +
        '</td><td class="bar-cell">' + bar(r) + '</td><td class="num">' + n(r.read) + '</td><td class="num">' + n(r.delivered) +
        '</td><td class="num' + (r.dead_lettered ? " bad" : "") + '">' + n(r.dead_lettered) + '</td><td class="num">' + n(r.rejected) +
        '</td><td class="num">' + n(b.throughput_rps) + '</td><td class="num">' + seconds(b.elapsed_s) + "</td></tr>";
    });
    return '<div class="scroll"><table><thead><tr><th>batch</th><th>state</th><th>progress</th><th class="num">read</th>' +
      '<th class="num">delivered</th><th class="num">dead</th><th class="num">rejected</th><th class="num">rec/s</th>' +
      '<th class="num">elapsed</th></tr></thead><tbody>' + rows.join("") + "</tbody></table></div>";
  }
  var CIRCUIT = { closed: "closed", open: "open", half_open: "half-open" };
  function circuit(d) {
    if (d.gone) return '<span class="circuit circuit-open">gone</span><div class="sub">410: disabled</div>';
    var after = d.circuit === "open" && d.circuit_retry_after_s ? '<div class="sub">probe in ' + seconds(d.circuit_retry_after_s) + "</div>" : "";
    return '<span class="circuit circuit-' + e(d.circuit) + '">' + e(CIRCUIT[d.circuit] || d.circuit) + "</span>" + after;
  }
  function destinations(list) {
    var rows = list.map(function (d) {
      var limit = d.in_flight + " / " + d.concurrency + (d.adaptive ? " (adaptive)" : "");
      var error = d.last_error ? '<div class="error">' + e(d.last_error) + '</div><div class="sub">' + clock(d.last_error_at) + "</div>"
        : '<span class="sub">–</span>';
      return '<tr data-destination="' + e(d.name) + '" data-circuit="' + e(d.circuit) + '"><td class="id">' + e(d.name) +
        '<div class="sub">' + e(d.type) + " · " + e(d.role) + "</div></td><td>" + circuit(d) + '</td><td class="num">' + e(limit) +
        '</td><td class="num">' + n(d.ratelimit_waits) + '</td><td class="num">' + n(d.retries) + '</td><td class="num">' +
        ms(d.latency_p50_s) + '</td><td class="num">' + ms(d.latency_p95_s) + "</td><td>" + error + "</td></tr>";
    });
    return '<div class="scroll"><table><thead><tr><th>destination</th><th>circuit</th><th class="num">in flight</th>' +
      '<th class="num">rate waits</th><th class="num">retries</th><th class="num">p50</th><th class="num">p95</th>' +
      "<th>last error</th></tr></thead><tbody>" + rows.join("") + "</tbody></table></div>";
  }
  function deadLetters(doc) {
    var stores = doc.dead_letters.since_start, names = Object.keys(stores);
    if (!names.length) return '<p class="empty">no dead letters since the daemon started</p>';
    return "<ul>" + names.map(function (k) {
      return "<li><b>" + e(k) + "</b>: " + plural(stores[k].chunks, "chunk") + ", " + plural(stores[k].records, "record") + "</li>";
    }).join("") + "</ul>";
  }
  function batchSection(b) {
    var r = b.records;
    var meta = [["state", state(b.state)], ["dataset", e(b.dataset)], ["source", "<code>" + e(b.uri) + "</code>"],
      ["elapsed", seconds(b.elapsed_s)], ["rec/s", n(b.throughput_rps)], ["runs", e(b.runs)]];
    var dl = meta.map(function (m) { return "<div><dt>" + m[0] + "</dt><dd>" + m[1] + "</dd></div>"; }).join("");
    var error = b.error ? '<p class="error">error: ' + e(b.error) + "</p>" : "";
    var names = Object.keys(b.reconciliation);
    var recon = names.length ? '<div class="scroll"><table><thead><tr><th>route</th><th class="num">read</th>' +
      '<th class="num">delivered</th><th class="num">dead-lettered</th><th class="num">rejected</th><th>read = the rest</th>' +
      "</tr></thead><tbody>" + names.map(function (k) {
        var s = b.reconciliation[k];
        return "<tr><td>" + e(k) + '</td><td class="num">' + n(s.read) + '</td><td class="num">' + n(s.delivered) +
          '</td><td class="num">' + n(s.dead_lettered) + '</td><td class="num">' + n(s.rejected) + "</td><td>" +
          (s.reconciled ? "✓ balanced" : "✗ not yet") + "</td></tr>";
      }).join("") + "</tbody></table></div>"
      : '<p class="empty">no reconciliation yet (it is stored when a run ends)</p>';
    var rp = b.replay, repair = rp.command
      ? "<p>" + n(rp.chunks) + " dead-lettered chunks (" + n(rp.records) + " records) would go to " + e(Object.keys(rp.targets).join(", ")) +
        ':</p><pre class="command"><code>' + e(rp.command) + "</code></pre><p class='sub'>add <code>--dry-run</code> to see what it would send first</p>"
      : '<p class="empty">nothing dead-lettered: nothing to replay</p>';
    var rows = b.chunks.map(function (c) {
      return '<tr data-chunk="' + e(c.chunk) + '"><td>' + e(c.route) + '</td><td class="num">' + e(c.chunk) +
        (c.kind !== "data" ? " (rejects)" : "") + "</td><td>" + state(c.state) + '</td><td class="num">' + n(c.records) +
        "</td><td>" + e(c.target || "–") + '</td><td class="num">' + n(c.attempts) + "</td><td class='error'>" + e(c.last_error || "") + "</td></tr>";
    }).join("");
    var more = b.chunks_total - b.chunks.length;
    return '<h1 data-batch-id="' + e(b.batch_id) + '">' + e(b.batch_id) + '</h1><dl class="meta-list">' + dl + "</dl>" + bar(r) +
      '<p class="sub">read ' + n(r.read) + " · delivered " + n(r.delivered) + " · dead-lettered " + n(r.dead_lettered) +
      " · rejected " + n(r.rejected) + "</p>" + error + "<h2>reconciliation</h2>" + recon + "<h2>repair</h2>" + repair +
      "<h2>chunks (" + n(b.chunks_total) + ')</h2><div class="scroll"><table><thead><tr><th>route</th><th class="num">chunk</th>' +
      '<th>state</th><th class="num">records</th><th>target</th><th class="num">tries</th><th>last error</th></tr></thead><tbody>' +
      rows + "</tbody></table></div>" + (more > 0 ? '<p class="sub">… and ' + more + " more delivered chunks</p>" : "");
  }
  function put(id, html) { var el = document.getElementById(id); if (el && el.innerHTML !== html) el.innerHTML = html; }
  function live(ok) {
    var el = document.getElementById("live");
    if (!el) return;
    el.hidden = false;
    el.textContent = ok ? " · live" : " · not answering";
    el.className = ok ? "live" : "stale";
  }
  function problems(doc) {
    return (doc.problems || []).map(function (p) { return '<p class="problem">' + e(p) + "</p>"; }).join("");
  }
  function draw(doc) {
    put("updated", clock(doc.generated_at));
    put("problems", problems(doc));
    if (batchId) {
      if (doc.batch) put("batch", batchSection(doc.batch));
      return;
    }
    put("summary", summary(doc));
    put("throughput", chart(doc.throughput));
    put("batches", batches(doc.batches));
    put("destinations", destinations(doc.destinations));
    put("dead-letters", deadLetters(doc));
  }
  function poll() {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" }, cache: "no-store" })
      .then(function (response) {
        if (response.status === 401) { window.location.reload(); throw new Error("signed out"); }
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (doc) { draw(doc); live(true); })
      .catch(function () { live(false); })
      .then(function () { window.setTimeout(poll, POLL_MS); });
  }
  window.setTimeout(poll, POLL_MS);
}());
