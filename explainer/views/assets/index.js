// explain view: the neuron index. Data comes as <script> files (file:// forbids fetch):
// data/manifest.js calls EXPLAIN.manifest(...), each data/<model>/layer-<L>.js calls
// EXPLAIN.layer(...). Layers load only when shown, so runs of thousands of neurons stay quick.
// Every filter, the sort and the page live in the URL's hash, so a view survives a reload and
// can be shared as a link ("layer 29, negative side, sorted by score").
"use strict";
var EXPLAIN = (function () {
  var state = { manifest: null, rows: {}, pending: {}, sortKey: "score", sortDir: -1, page: 0 };
  var $ = function (id) { return document.getElementById(id); };
  // Row layout written by html.py: see _index_rows there.
  var COLS = ["neuron", "explainer", "simulator", "score", "score_top", "score_random", "status",
              "explanation", "max", "href", "side", "mode", "method", "variant"];
  var DESCENDING = { score: 1, score_top: 1, score_random: 1, max: 1 };  // first click: high first
  var ALL = "all";

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
      COLS.forEach(function (c, i) { o[c] = r[i] === undefined ? null : r[i]; });
      // Sorting by "max act." compares peaks by size: a negative side's peak is its minimum.
      o.peak = o.max === null ? null : Math.abs(o.max);
      return o;
    });
    (state.pending[id] || []).forEach(function (f) { f(); });
    delete state.pending[id];
  }

  function option(sel, value, text) {
    var o = document.createElement("option");
    o.value = value; o.textContent = text; sel.appendChild(o);
  }

  function hasOption(sel, value) {
    return Array.prototype.some.call(sel.options, function (o) { return o.value === value; });
  }

  function setOr(sel, value, fallback) {
    sel.value = value !== undefined && hasOption(sel, value) ? value : fallback;
  }

  // The selects that depend on the model, filled from its manifest entry; `h` (from the URL)
  // wins over the defaults: every side, the run's LLM simulator, simulation scores.
  function fillModel(h) {
    var m = model(), sel = $("layer");
    sel.textContent = "";
    m.layers.forEach(function (l) { option(sel, String(l.layer), l.layer + " (" + l.n + " neurons)"); });
    option(sel, ALL, "all layers");
    setOr(sel, h.layer, sel.options[0].value);
    var sides = { pos: "positive", neg: "negative" };
    var fills = [
      ["explainer", m.explainers.map(function (e) { return [e, e]; }), ALL],
      ["side", m.sides.map(function (s) { return [s, sides[s] || s]; }), ALL],
      ["sim", m.simulators.map(function (s) {
        var modes = s.modes.filter(function (x) { return x; });
        return [s.name, s.name + (modes.length ? " (" + modes.join(", ") + ")" : "")];
      }), m.default_simulator || ALL],
      ["method", m.methods.map(function (x) { return [x, x]; }),
        m.methods.indexOf("simulation") >= 0 ? "simulation" : ALL]];
    fills.forEach(function (f) {
      var s = $(f[0]);
      s.textContent = "";
      option(s, ALL, "all");
      f[1].forEach(function (o) { option(s, o[0], o[1]); });
      setOr(s, h[f[0]], f[2]);
    });
  }

  function wanted() {
    var m = model(), v = $("layer").value;
    return v === ALL ? m.layers.map(function (l) { return l.layer; }) : [Number(v)];
  }

  var HASHED = ["layer", "side", "sim", "method", "explainer", "size"];

  function toHash() {
    var parts = ["model=" + encodeURIComponent(model().key)];
    HASHED.forEach(function (id) { parts.push(id + "=" + encodeURIComponent($(id).value)); });
    if ($("search").value) parts.push("q=" + encodeURIComponent($("search").value));
    parts.push("sort=" + state.sortKey, "dir=" + (state.sortDir > 0 ? "asc" : "desc"),
               "page=" + (state.page + 1));
    var hash = "#" + parts.join("&");
    // replaceState: a filter change is not a step of the back button, and no hashchange fires.
    if (location.hash !== hash) history.replaceState(null, "", hash);
  }

  function refresh() {
    var m = model(), layers = wanted(), left = layers.length;
    layers.forEach(function (l) { loadLayer(m, l, function () { if (--left === 0) render(); }); });
  }

  function cmp(a, b) {
    var k = state.sortKey === "max" ? "peak" : state.sortKey, x = a[k], y = b[k];
    if (x === null || x === undefined) return 1;   // undefined scores sink, whatever the order
    if (y === null || y === undefined) return -1;
    if (x < y) return -state.sortDir;
    if (x > y) return state.sortDir;
    return a.layer - b.layer || a.neuron - b.neuron || (a.side || "").localeCompare(b.side || "");
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

  function matches(r, f) {
    // A neuron not scored yet has no side, simulator or method to filter by: it stays listed
    // (its score sorts last) until an explainer or words are asked for.
    if (r.method === null) return !f.explainer && !f.q;
    if (f.side && r.side !== f.side) return false;
    if (f.sim && r.simulator !== f.sim) return false;
    if (f.method && r.method !== f.method) return false;
    if (f.explainer && r.explainer !== f.explainer) return false;
    return !f.q || (r.explanation || "").toLowerCase().indexOf(f.q) >= 0;
  }

  function chosen(id) { var v = $(id).value; return v === ALL ? "" : v; }

  function render() {
    var m = model(), rows = [];
    var f = { side: chosen("side"), sim: chosen("sim"), method: chosen("method"),
              explainer: chosen("explainer"), q: $("search").value.toLowerCase() };
    wanted().forEach(function (l) { rows = rows.concat(state.rows[m.key + "/" + l] || []); });
    rows = rows.filter(function (r) { return matches(r, f); });
    rows.sort(cmp);
    var size = Number($("size").value), pages = Math.max(1, Math.ceil(rows.length / size));
    state.page = Math.max(0, Math.min(state.page, pages - 1));
    var body = document.querySelector("#neurons tbody");
    body.textContent = "";
    rows.slice(state.page * size, (state.page + 1) * size).forEach(function (r) {
      var tr = document.createElement("tr");
      if (r.side === "neg") tr.className = "neg";
      var td = function (col, text, cls) {
        var c = document.createElement("td"); c.dataset.col = col; if (cls) c.className = cls;
        if (text !== undefined) c.textContent = text; tr.appendChild(c); return c;
      };
      var num = function (v) { return v === null ? "\u2014" : v.toFixed(3); };
      td("layer", String(r.layer), "num");
      var a = document.createElement("a"); a.href = r.href; a.textContent = String(r.neuron);
      td("neuron", undefined, "num").appendChild(a);
      var side = td("side", r.side === null ? "\u2014" : r.side === "neg" ? "\u2212 neg" : "+ pos", "side");
      if (r.side === "neg") side.title = "negative side: what makes this neuron fire below zero";
      scoreCell(td("score", undefined, "num"), r.score);
      td("score_top", num(r.score_top), "num");
      td("score_random", num(r.score_random), "num");
      var mx = td("max", r.max === null ? "\u2014" : r.max.toPrecision(3), "num");
      if (r.side === "neg" && r.max !== null) {
        var lab = document.createElement("span"); lab.className = "peak"; lab.textContent = " min";
        mx.appendChild(lab);
        mx.title = "the negative side's peak: the neuron's minimum activation";
      }
      td("explainer", r.explainer || "\u2014");
      var sim = r.method === "simulation" && r.variant;  // a prompt version, where several exist
      td("simulator", r.simulator === null ? "\u2014" : r.simulator + (r.mode ? " \u00b7 " + r.mode : "") +
         (sim ? " \u00b7 prompt " + r.variant : ""));
      td("method", (r.method || "\u2014") + (r.variant && !sim ? " (" + r.variant + ")" : ""));
      var e = td("explanation", r.explanation || "", "expl");
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
    toHash();
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
    setOr(sel, h.model, data.models[0].key);
    fillModel(h);
    setOr($("size"), h.size, $("size").value);
    if (h.q) $("search").value = h.q;
    if (h.sort && document.querySelector('th.sortable[data-key="' + h.sort + '"]')) state.sortKey = h.sort;
    if (h.dir) state.sortDir = h.dir === "asc" ? 1 : -1;
    if (h.page) state.page = Math.max(0, (parseInt(h.page, 10) || 1) - 1);
    sel.onchange = function () { fillModel({}); state.page = 0; refresh(); };
    $("layer").onchange = function () { state.page = 0; refresh(); };
    ["side", "sim", "method", "explainer", "size"].forEach(function (id) {
      $(id).onchange = function () { state.page = 0; render(); };
    });
    $("search").oninput = function () { state.page = 0; render(); };
    $("prev").onclick = function () { state.page--; render(); };
    $("next").onclick = function () { state.page++; render(); };
    document.querySelectorAll("th.sortable").forEach(function (th) {
      th.onclick = function () {
        var k = th.dataset.key;
        state.sortDir = state.sortKey === k ? -state.sortDir : (DESCENDING[k] ? -1 : 1);
        state.sortKey = k; render();
      };
    });
    refresh();
  }

  return { manifest: manifest, layer: layer, state: state };
})();
