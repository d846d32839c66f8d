// explain view: the neuron index. Data comes as <script> files (file:// forbids fetch):
// data/manifest.js calls EXPLAIN.manifest(...), each data/<model>/layer-<L>.js calls
// EXPLAIN.layer(...). Layers load only when shown, so runs of thousands of neurons stay quick.
"use strict";
var EXPLAIN = (function () {
  var state = { manifest: null, rows: {}, pending: {}, sortKey: "score", sortDir: -1, page: 0 };
  var $ = function (id) { return document.getElementById(id); };
  // Row layout written by view.py: see _index_rows there.
  var COLS = ["neuron", "explainer", "simulator", "score", "score_top", "score_random", "status", "explanation", "max", "href"];

  function model() {
    var key = $("model").value;
    return state.manifest.models.filter(function (m) { return m.key === key; })[0];
  }

  function loadLayer(m, layer, done) {
    var id = m.key + "/" + layer;
    if (state.rows[id]) { done(); return; }
    if (state.pending[id]) { state.pending[id].push(done); return; }
    state.pending[id] = [done];
    var info = m.layers.filter(function (l) { return l.layer === layer; })[0];
    var s = document.createElement("script");
    s.src = info.file;
    s.onerror = function () { $("empty").hidden = false; $("empty").textContent = "Could not load " + info.file; };
    document.body.appendChild(s);
  }

  function layer(key, lay, rows) {
    var id = key + "/" + lay;
    state.rows[id] = rows.map(function (r) {
      var o = { layer: lay };
      COLS.forEach(function (c, i) { o[c] = r[i]; });
      return o;
    });
    (state.pending[id] || []).forEach(function (f) { f(); });
    delete state.pending[id];
  }

  function option(sel, value, text) {
    var o = document.createElement("option");
    o.value = value; o.textContent = text; sel.appendChild(o);
  }

  function fillLayers() {
    var m = model(), sel = $("layer");
    sel.textContent = "";
    m.layers.forEach(function (l) { option(sel, String(l.layer), l.layer + " (" + l.n + " neurons)"); });
    option(sel, "all", "all layers");
    var pair = $("pair"), keep = pair.value;
    pair.textContent = "";
    option(pair, "", "all");
    m.pairs.forEach(function (p) { option(pair, p, p); });
    if (m.pairs.indexOf(keep) >= 0) pair.value = keep;
  }

  function wanted() {
    var m = model(), v = $("layer").value;
    return v === "all" ? m.layers.map(function (l) { return l.layer; }) : [Number(v)];
  }

  function refresh() {
    var m = model(), layers = wanted(), left = layers.length;
    location.hash = "model=" + encodeURIComponent(m.key) + "&layer=" + $("layer").value;
    layers.forEach(function (l) { loadLayer(m, l, function () { if (--left === 0) render(); }); });
  }

  function cmp(a, b) {
    var k = state.sortKey, x = a[k], y = b[k];
    if (x === null || x === undefined) return 1;   // undefined scores sink, whatever the order
    if (y === null || y === undefined) return -1;
    if (x < y) return -state.sortDir;
    if (x > y) return state.sortDir;
    return a.layer - b.layer || a.neuron - b.neuron;
  }

  function scoreCell(td, v) {
    var span = document.createElement("span");
    span.className = "score";
    if (v === null || v === undefined) { span.textContent = "\u2014"; }
    else {
      span.textContent = v.toFixed(3);
      var a = Math.max(0, Math.min(1, v));
      span.style.background = "rgba(46,160,67," + (0.08 + 0.6 * a).toFixed(2) + ")";
    }
    td.appendChild(span);
  }

  function render() {
    var m = model(), pair = $("pair").value, q = $("search").value.toLowerCase();
    var rows = [];
    wanted().forEach(function (l) { rows = rows.concat(state.rows[m.key + "/" + l] || []); });
    rows = rows.filter(function (r) {
      if (pair && r.explainer + " / " + r.simulator !== pair) return false;
      return !q || (r.explanation || "").toLowerCase().indexOf(q) >= 0;
    });
    rows.sort(cmp);
    var size = Number($("size").value), pages = Math.max(1, Math.ceil(rows.length / size));
    state.page = Math.min(state.page, pages - 1);
    var body = document.querySelector("#neurons tbody");
    body.textContent = "";
    rows.slice(state.page * size, (state.page + 1) * size).forEach(function (r) {
      var tr = document.createElement("tr");
      var td = function (text, cls) {
        var c = document.createElement("td"); if (cls) c.className = cls;
        if (text !== undefined) c.textContent = text; tr.appendChild(c); return c;
      };
      td(String(r.layer), "num");
      var a = document.createElement("a"); a.href = r.href; a.textContent = String(r.neuron);
      td(undefined, "num").appendChild(a);
      scoreCell(td(undefined, "num"), r.score);
      td(r.score_top === null ? "\u2014" : r.score_top.toFixed(3), "num");
      td(r.score_random === null ? "\u2014" : r.score_random.toFixed(3), "num");
      td(r.max === null ? "\u2014" : r.max.toPrecision(3), "num");
      td(r.explainer || "\u2014");
      var e = td(r.explanation || "", "expl");
      if (r.status && r.status !== "ok") {
        var s = document.createElement("span"); s.className = "status"; s.textContent = " [" + r.status + "]"; e.appendChild(s);
      }
      body.appendChild(tr);
    });
    $("empty").hidden = rows.length > 0;
    $("pageinfo").textContent = "page " + (state.page + 1) + " of " + pages + " \u00b7 " + rows.length + " rows";
    $("prev").disabled = state.page === 0;
    $("next").disabled = state.page >= pages - 1;
    document.querySelectorAll("th.sortable").forEach(function (th) {
      th.classList.remove("sorted-asc", "sorted-desc");
      if (th.dataset.key === state.sortKey) th.classList.add(state.sortDir > 0 ? "sorted-asc" : "sorted-desc");
    });
  }

  function fromHash() {
    var out = {};
    location.hash.replace(/^#/, "").split("&").forEach(function (kv) {
      var p = kv.split("="); if (p.length === 2) out[p[0]] = decodeURIComponent(p[1]);
    });
    return out;
  }

  function manifest(data) {
    state.manifest = data;
    var sel = $("model"), h = fromHash();
    data.models.forEach(function (m) { option(sel, m.key, m.name + (m.params ? " (" + m.params + ")" : "")); });
    if (h.model && data.models.some(function (m) { return m.key === h.model; })) sel.value = h.model;
    fillLayers();
    if (h.layer && Array.prototype.some.call($("layer").options, function (o) { return o.value === h.layer; })) $("layer").value = h.layer;
    sel.onchange = function () { fillLayers(); state.page = 0; refresh(); };
    $("layer").onchange = function () { state.page = 0; refresh(); };
    $("pair").onchange = $("size").onchange = function () { state.page = 0; render(); };
    $("search").oninput = function () { state.page = 0; render(); };
    $("prev").onclick = function () { state.page--; render(); };
    $("next").onclick = function () { state.page++; render(); };
    document.querySelectorAll("th.sortable").forEach(function (th) {
      th.onclick = function () {
        var k = th.dataset.key;
        state.sortDir = state.sortKey === k ? -state.sortDir : (k === "score" || k === "score_top" || k === "score_random" || k === "max" ? -1 : 1);
        state.sortKey = k; render();
      };
    });
    refresh();
  }

  return { manifest: manifest, layer: layer, state: state };
})();
