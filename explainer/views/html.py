"""`explain view`: a static HTML site over a run, opened from disk with no server or network.

Layout of the output folder:
  index.html, assets/            the sortable, paginated neuron index (view_assets/)
  data/manifest.js               models and layers; data/<model>/layer-<L>.js one per layer
  neurons/<model>/L<layer>/N<neuron>.html   one page per neuron, rendered here
Browsers forbid fetch() on file://, so data travels as <script> files that call into index.js,
and a layer's rows load only when that layer is shown.
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path
from string import Template

import numpy as np

from explainer import ExplainError
from explainer import run as rundir
from explainer.config import ViewConfig
from explainer.views.formats import format_params, token_text
from explainer.views.neuron import (Excerpt, NeuronView, neuron_view, output_sides,
                                    rows_by_neuron)
from explainer.views.report import headline

ASSETS = Path(__file__).with_name("assets")
N_TOP = 10  # excerpts per kind on a neuron page; simulated ones first
N_RANDOM = 10


def _js(obj) -> str:
    # ASCII JSON with "</" broken up, so no token can close the <script> element early.
    return json.dumps(obj, ensure_ascii=True, allow_nan=False).replace("</", "<\\/")


def _f(x):
    return None if x is None or not np.isfinite(x) else round(float(x), 4)


def _sig(x):
    # activations span decades (a negative side's minimum may be -0.006): keep 4 significant
    # digits, not 4 decimals
    return None if x is None or not np.isfinite(x) else float(f"{float(x):.4g}")


def neuron_href(mkey: str, layer: int, neuron: int) -> str:
    """Path of a neuron page relative to the site root."""
    return f"neurons/{mkey}/L{layer}/N{neuron}.html"


def _index_rows(mkey, layer, neurons, head, stats) -> list[list]:
    """One row per (neuron, side, explainer, simulator and mode, method): the chosen simulation
    scores and the judges' rows; neurons without scores get one empty row. Columns in
    index.js's COLS order; `max` is the side's own peak (the minimum on the negative side);
    `variant` tells apart rows that would look alike: the simulator prompt's hash where one
    simulator and mode scored under several prompt versions, a judge's sampling preset."""
    peak = {}
    if not stats.empty:
        for n, hi, lo in zip(stats["neuron"].astype(int), stats["max"], stats["min"]):
            peak[(n, "pos")], peak[(n, "neg")] = hi, lo
    versions: dict[tuple, set] = {}
    for r in head.itertuples():
        if not r.judged:
            versions.setdefault((r.simulator, r.mode), set()).add(r.sim_prompt_hash)
    rows, seen = [], set()
    for r in head.itertuples():
        n, side = int(r.neuron), r.side or "pos"
        if r.judged:
            variant = r.sampling or ""
        else:
            several = len(versions[(r.simulator, r.mode)]) > 1
            variant = (r.sim_prompt_hash or "")[:6] if several else ""
        seen.add(n)
        score = _f(r.score) if r.status == "ok" and r.score is not None else None
        rows.append([n, r.explainer, r.simulator, score, _f(r.score_top), _f(r.score_random),
                     r.status, r.explanation, _sig(peak.get((n, side))),
                     neuron_href(mkey, layer, n), side, r.mode or "", r.method, variant])
    for n in sorted(set(neurons) - seen):
        rows.append([n, None, None, None, None, None, None, None, _sig(peak.get((n, "pos"))),
                     neuron_href(mkey, layer, n), None, None, None, None])
    return rows


def _index_head(scores):
    """The index's scored rows: each neuron side's chosen simulation score per simulator, mode
    and prompt (the report's headline rows), then one row per judge, method and preset."""
    import pandas as pd

    cols = ["neuron", "explainer", "simulator", "score", "score_top", "score_random", "status",
            "explanation", "side", "mode", "method", "sim_prompt_hash", "sampling"]
    methods = tuple(sorted(set(scores["method"].dropna()) - {"simulation"})) \
        if "method" in scores else ()
    # each judge's own rows (a generation or steering control scored elsewhere is not one)
    own = [rundir.query.select(scores, method=m) for m in methods]
    judges = rundir.query.judged(pd.concat(own), key=rundir.query.JUDGED + ["sampling"],
                                 methods=methods) if own else pd.DataFrame()
    parts = [rundir.query.filled(f)[cols].assign(judged=j)
             for f, j in ((headline(scores), False), (judges, True)) if not f.empty]
    return pd.concat(parts, ignore_index=True) if parts else \
        pd.DataFrame(columns=cols + ["judged"])


def _index_filters(rows: list[list]) -> dict:
    """What the index's filters offer for these rows: explainers, simulators with their
    modes, methods, sides, and how many simulation rows each simulator has."""
    out = {"explainers": set(), "simulators": {}, "methods": set(), "sides": set(),
           "n_sim": {}}
    for r in rows:
        if r[1] is None:
            continue
        out["explainers"].add(r[1])
        out["simulators"].setdefault(r[2], set()).add(r[11])
        out["methods"].add(r[12])
        out["sides"].add(r[10])
        if r[12] == "simulation":
            out["n_sim"][r[2]] = out["n_sim"].get(r[2], 0) + 1
    return out


def _default_simulator(filters: dict) -> str:
    """The run's LLM simulator: the one with the most simulation rows that is not the lexical
    baseline (`explain run` scores with both); the baseline when it is alone; '' when none."""
    from explainer.config import BASELINE_SIMULATOR

    n = filters["n_sim"]
    llm = sorted((-k, s) for s, k in n.items() if s != BASELINE_SIMULATOR)
    return llm[0][1] if llm else (BASELINE_SIMULATOR if n else "")


def _token_spans(ex: Excerpt, values, top: float, rgb: str, other: str) -> str:
    out = []
    for i, word in enumerate(ex.tokens):
        real = ex.real[i] if i < len(ex.real) else 0.0
        sim = ex.simulated[i] if ex.simulated is not None and i < len(ex.simulated) else None
        v = values[i] if values is not None and i < len(values) else 0.0
        alpha = 0.0 if top <= 0 else min(1.0, max(0.0, v) / top)
        tip = f"real {real:.3f}" + ("" if sim is None else f" · simulated {sim:.2f}")
        out.append(f'<span class="tok" style="background:rgba({rgb},{alpha:.2f})" '
                   f'title="{html.escape(tip)}">{html.escape(token_text(word))}</span>')
    return "".join(out) if values is not None else f'<span class="muted">{other}</span>'


def _excerpts_html(view: NeuronView, top: float) -> str:
    parts = ['<div class="colhead"><div>real activation</div><div>simulated</div></div>']
    for e in view.excerpts:
        kind = "bottom (negative side, negated)" if e.kind == "bottom" else e.kind
        meta = (f"{kind} #{e.rank} · {e.split} split · excerpt {e.excerpt_id} · "
                f"max {max(e.real, default=0):.3g}")
        parts.append(
            f'<div class="excerpt" data-kind="{e.kind}"><div class="meta">{html.escape(meta)}'
            f'</div><div class="tokens real">{_token_spans(e, e.real, top, "255,140,0", "")}</div>'
            f'<div class="tokens sim">'
            f'{_token_spans(e, e.simulated, 10.0, "30,120,255", "not simulated")}</div></div>')
    return "\n".join(parts) if view.excerpts else '<div class="muted">No excerpts recorded.</div>'


def _explanations_html(view: NeuronView) -> str:
    if not view.scores:
        return '<div class="muted">Not explained or scored yet.</div>'
    head = ("<tr><th></th><th>side</th><th>explainer</th><th>candidate</th><th>simulator</th>"
            "<th>score</th><th>top</th><th>random</th><th>status</th><th>explanation</th></tr>")
    body = []
    heads = list((view.heads or {"pos": view.headline}).values())
    for r in view.scores:
        chosen = any(r is h for h in heads)
        cls = ' class="headline"' if chosen else ""
        mark = "★" if chosen else ("chosen" if r["best"] else "")
        num = lambda x: "—" if x is None else f"{x:.3f}"  # noqa: E731
        text = r["explanation"] or r["error"] or ""
        cells = [mark, r.get("side", "pos"), r["explainer"], r["candidate"], r["simulator"],
                 num(r["score"]), num(r["score_top"]), num(r["score_random"]), r["status"], text]
        body.append(f"<tr{cls}>" + "".join(
            f'<td{" class=num" if i in (3, 5, 6, 7) else ""}>{html.escape(str(c))}</td>'
            for i, c in enumerate(cells)) + "</tr>")
    return f'<table class="explanations">{head}{"".join(body)}</table>'


def _stats_html(stats: dict | None) -> str:
    if not stats:
        return '<div class="muted">No statistics recorded.</div>'
    q = ", ".join(f"{v:.3g}" for v in (stats.get("quantiles") or []))
    items = [("mean", f"{stats['mean']:.4g}"), ("std", f"{stats['std']:.4g}"),
             ("max", f"{stats['max']:.4g}"), ("min", f"{stats['min']:.4g}"),
             ("density", f"{stats['density']:.1%}"), ("tokens", f"{stats['n_tokens']:,}"),
             ("quantiles", f"[{q}]")]
    return '<div class="stats">' + "".join(
        f"<span><b>{k}</b> {html.escape(v)}</span>" for k, v in items) + "</div>"


def _outputs_html(view: NeuronView) -> str:
    """Per side, the next tokens the neuron promotes and suppresses, with their logit effects."""
    sides = output_sides(view)
    if not sides:
        return '<div class="muted">No output side recorded (re-record the run).</div>'
    rows = []
    for side, tokens in sides:
        for verb, pairs in (("promotes", tokens.promoted), ("suppresses", tokens.suppressed)):
            cells = "".join(f'<span class="otok"><code>{html.escape(t)}</code> {v:+.2f}</span>'
                            for t, v in pairs)
            label = f"{side} side {verb}" if len(view.sides) > 1 else verb
            rows.append(f'<tr class="{verb}"><th>{label}</th><td>{cells}</td></tr>')
    return f'<table class="outputs">{"".join(rows)}</table>'


def histogram_svg(series: dict[str, np.ndarray], bins: int = 30, width: int = 640,
                  height: int = 200) -> str:
    """Inline SVG histogram of activations per series (log-scaled counts, shared bins)."""
    vals = [v for v in series.values() if v.size]
    if not vals:
        return '<div class="muted">No activations recorded.</div>'
    lo, hi = float(min(v.min() for v in vals)), float(max(v.max() for v in vals))
    hi = hi if hi > lo else lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    left, pw, ph = 46, width - 60, height - 48  # plot area inside axis labels
    counts = {k: np.histogram(v, edges)[0] for k, v in series.items() if v.size}
    peak = np.log1p(max(c.max() for c in counts.values()))
    colors = {"top excerpts": "rgba(255,140,0,0.65)", "random excerpts": "rgba(90,100,110,0.55)"}
    out = [f'<svg class="hist" width="{width}" height="{height}" role="img" '
           f'aria-label="activation histogram">']
    bw = pw / bins
    for name, c in counts.items():
        for i, n in enumerate(c):
            if n:
                h = ph * np.log1p(n) / peak
                out.append(f'<rect x="{left + i * bw:.1f}" y="{8 + ph - h:.1f}" '
                           f'width="{max(bw - 1, 1):.1f}" height="{h:.1f}" '
                           f'fill="{colors.get(name, "steelblue")}"><title>{html.escape(name)}: '
                           f'{n} tokens in [{edges[i]:.3g}, {edges[i + 1]:.3g})</title></rect>')
    axis_y = 8 + ph
    out.append(f'<line x1="{left}" y1="{axis_y}" x2="{left + pw}" y2="{axis_y}" stroke="#888"/>')
    out.append(f'<line x1="{left}" y1="8" x2="{left}" y2="{axis_y}" stroke="#888"/>')
    out.append(f'<text x="{left}" y="{axis_y + 14}">{lo:.3g}</text>')
    out.append(f'<text x="{left + pw}" y="{axis_y + 14}" text-anchor="end">{hi:.3g}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 4}" text-anchor="middle">'
               "activation</text>")
    out.append(f'<text x="12" y="{8 + ph / 2}" transform="rotate(-90 12 {8 + ph / 2})" '
               'text-anchor="middle">tokens (log)</text>')
    for i, name in enumerate(counts):
        out.append(f'<rect x="{left + pw - 150}" y="{12 + 16 * i}" width="10" height="10" '
                   f'fill="{colors.get(name, "steelblue")}"/><text x="{left + pw - 135}" '
                   f'y="{21 + 16 * i}">{html.escape(name)}</text>')
    out.append("</svg>")
    return "".join(out)


def neuron_page(view: NeuronView, records: list[dict], nav: str,
                template: Template | None = None) -> str:
    """The HTML of one neuron's page (`records`: all of its record rows, for the histogram)."""
    top = max([max(e.real, default=0.0) for e in view.excerpts] or [0.0])
    series = {f"{k} excerpts": np.asarray([a for r in records if r["kind"] == k
                                           for a in r["activations"]], np.float32)
              for k in ("top", "bottom", "random") if any(r["kind"] == k for r in records)}
    source = "; ".join(f"{side}: {h['explainer']} candidate {h['candidate']} via "
                       f"{h['simulator']}" for side, h in
                       (view.heads or {"pos": view.headline}).items() if h is not None)
    index_href = f"../../../index.html#model={view.model_key}&layer={view.layer}"
    template = template or Template((ASSETS / "neuron.html").read_text())
    return template.substitute(
        model=html.escape(view.model), layer=view.layer, neuron=view.neuron,
        index_href=html.escape(index_href), nav=nav, explanations=_explanations_html(view),
        stats=_stats_html(view.stats), histogram=histogram_svg(series),
        outputs=_outputs_html(view),
        top_act=f"{top:.3g}", sim_source=html.escape(source), excerpts=_excerpts_html(view, top))


def _nav(neurons: list[int], i: int) -> str:
    links = []
    if i > 0:
        links.append(f'<a id="prev" href="N{neurons[i - 1]}.html">&larr; neuron {neurons[i - 1]}</a>')
    if i + 1 < len(neurons):
        links.append(f'<a id="next" href="N{neurons[i + 1]}.html">neuron {neurons[i + 1]} &rarr;</a>')
    return " · ".join([""] + links) if links else ""


def _write_layer(run, out, mkey, name, layer, tokens,
                 scored_only: bool = False) -> tuple[int, dict]:
    t = {n: rundir.read(run, n, mkey, layer)
         for n in ("records", "neurons", "scores", "simulations")}
    head = _index_head(t["scores"])
    neurons = set(head["neuron"].astype(int))
    if not scored_only:
        neurons |= set(t["records"]["neuron"].astype(int))
    neurons = sorted(neurons)
    if scored_only:  # a few neurons of thousands recorded: only their rows become dicts
        keep = set(neurons)
        t = {k: df[df["neuron"].isin(keep)] if "neuron" in df.columns else df
             for k, df in t.items()}
    rows = _index_rows(mkey, layer, neurons, head, t["neurons"])
    data = out / "data" / mkey / f"layer-{layer}.js"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text(f"EXPLAIN.layer({_js(mkey)}, {layer}, {_js(rows)});\n")
    # Split every table by neuron once, so each page touches a few plain rows, not a frame.
    split = {k: rows_by_neuron(df) for k, df in t.items()}
    page_dir = out / "neurons" / mkey / f"L{layer}"
    page_dir.mkdir(parents=True, exist_ok=True)
    template = Template((ASSETS / "neuron.html").read_text())
    from explainer.views import judgments

    judged = rows_by_neuron(rundir.read(run, "judgments", mkey, layer))
    from explainer.views import generation  # texts the generation judge wrote, steering gains

    generated = rows_by_neuron(rundir.read(run, "generations", mkey, layer))
    for i, n in enumerate(neurons):
        stats = split["neurons"].get(n)
        nv = neuron_view(name, mkey, layer, n, split["records"].get(n, []),
                         stats[0] if stats else None, split["scores"].get(n, []),
                         split["simulations"].get(n, []), tokens, N_TOP, N_RANDOM)
        page = neuron_page(nv, split["records"].get(n, []), _nav(neurons, i), template)
        page = judgments.into_page(page, judged.get(n, []), tokens)
        page = generation.into_page(page, generated.get(n, []), split["scores"].get(n, []),
                                    max(abs(stats[0]["max"]), abs(stats[0]["min"])) if stats
                                    else 1.0)
        (page_dir / f"N{n}.html").write_text(page)
    return len(neurons), _index_filters(rows)


def run(cfg: ViewConfig) -> str:
    """Write the site and return the path of its index.html."""
    run_dir = Path(cfg.run)
    if not run_dir.is_dir():
        raise ExplainError(f"--run {run_dir}: no such run directory")
    mkeys = sorted(set(rundir.models_in(run_dir, "records")) | set(rundir.models_in(run_dir, "scores")))
    if not mkeys:
        raise ExplainError(f"--run {run_dir}: holds no recorded model yet (run `explain record`)")
    out = Path(cfg.out) if cfg.out is not None else run_dir / "view"
    if out.exists() and not out.is_dir():
        raise ExplainError(f"--out {out}: exists and is not a folder")
    meta_all = rundir.read_run_json(run_dir).get("models", {})
    mkeys.sort(key=lambda k: (meta_all.get(k, {}).get("n_params") is None,
                              meta_all.get(k, {}).get("n_params") or 0, k))
    (out / "assets").mkdir(parents=True, exist_ok=True)
    for asset in ("style.css", "index.js"):
        shutil.copyfile(ASSETS / asset, out / "assets" / asset)
    from rich.console import Console
    from rich.progress import Progress

    models = []
    with Progress(console=Console(stderr=True), transient=True) as bar:  # stdout: the path only
        for mkey in mkeys:
            meta = meta_all.get(mkey, {})
            name = meta.get("model", mkey)
            layers = sorted(set(rundir.layers_in(run_dir, "records", mkey))
                            | set(rundir.layers_in(run_dir, "scores", mkey)))
            task = bar.add_task(f"view {name}", total=len(layers))
            ex = rundir.read(run_dir, "excerpts", mkey)
            tokens = dict(zip(ex["excerpt_id"].astype(int), ex["tokens"]))
            entry = {"key": mkey, "name": name, "params": format_params(meta.get("n_params"))
                     if meta.get("n_params") else None, "layers": []}
            seen = {"explainers": set(), "simulators": {}, "methods": set(), "sides": set(),
                    "n_sim": {}}
            for layer in layers:
                n, got = _write_layer(run_dir, out, mkey, name, layer, tokens,
                                      cfg.scored_only)
                entry["layers"].append({"layer": layer, "n": n,
                                        "file": f"data/{mkey}/layer-{layer}.js"})
                for k in ("explainers", "methods", "sides"):
                    seen[k] |= got[k]
                for sim, modes in got["simulators"].items():
                    seen["simulators"].setdefault(sim, set()).update(modes)
                for sim, k in got["n_sim"].items():
                    seen["n_sim"][sim] = seen["n_sim"].get(sim, 0) + k
                bar.advance(task)
            entry.update(explainers=sorted(seen["explainers"]), methods=sorted(seen["methods"]),
                         sides=sorted(seen["sides"]), default_simulator=_default_simulator(seen),
                         simulators=[{"name": k, "modes": sorted(m)}
                                     for k, m in sorted(seen["simulators"].items())])
            models.append(entry)
    manifest = {"run": run_dir.name, "models": models}
    (out / "data" / "manifest.js").write_text(f"EXPLAIN.manifest({_js(manifest)});\n")
    index = Template((ASSETS / "index.html").read_text()).substitute(
        title=html.escape(run_dir.resolve().name))
    (out / "index.html").write_text(index)
    return str(out / "index.html")
