"""`explain show`: one neuron in the terminal: explanations and scores, statistics, excerpts.

Each excerpt token is shaded by its real activation (relative to the neuron's largest shown
activation) and followed by the simulated value (0–10) from the best-scoring explanation, so
where the simulator and the neuron disagree is visible at a glance.
"""

from __future__ import annotations

import io
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from explainer import ExplainError, store
from explainer.config import ShowConfig

N_TOP = 6  # excerpts shown per kind; simulated ones first
N_RANDOM = 4


@dataclass(frozen=True)
class Excerpt:
    """One excerpt of the neuron with its real and (maybe) simulated activations."""

    kind: str
    rank: int
    split: str
    excerpt_id: int
    tokens: list[str]
    real: list[float]
    simulated: list[float] | None


@dataclass(frozen=True)
class NeuronView:
    """Everything shown about one neuron (also used by the HTML viewer)."""

    model: str  # run.json name
    model_key: str
    layer: int
    neuron: int
    stats: dict | None
    scores: list[dict]  # valid-split rows, one per (explainer, candidate, simulator), best first
    headline: dict | None  # the chosen row whose simulations are shown
    excerpts: list[Excerpt]


def resolve_model(run: Path, model: str | None) -> str:
    """The partition key of the subject model, or ExplainError naming the valid ones."""
    run = Path(run)
    if not run.is_dir():
        raise ExplainError(f"--run {run}: no such run directory (create it with `explain record`)")
    keys = sorted(set(store.models_in(run, "records")) | set(store.models_in(run, "scores"))
                  | set(store.read_run_json(run).get("models", {})))
    if not keys:
        raise ExplainError(f"--run {run}: holds no recorded model yet (run `explain record`)")
    if model is None:
        if len(keys) > 1:
            raise ExplainError(f"--model is needed: the run holds {', '.join(keys)}")
        return keys[0]
    if store.model_key(model) not in keys:
        raise ExplainError(f"--model {model}: the run holds {', '.join(keys)}")
    return store.model_key(model)


def _clean(x):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return None
    return x.item() if hasattr(x, "item") else x


def rows_by_neuron(df) -> dict[int, list[dict]]:
    """A layer's table as plain rows grouped by neuron (one pass; cheap per-neuron access)."""
    out: dict[int, list[dict]] = {}
    for r in df.to_dict("records"):
        out.setdefault(int(r["neuron"]), []).append({k: _clean(v) for k, v in r.items()})
    return out


def neuron_view(name: str, mkey: str, layer: int, neuron: int, records: list[dict],
                stats: dict | None, scores: list[dict], sims: list[dict], tokens: dict,
                n_top: int = N_TOP, n_random: int = N_RANDOM) -> NeuronView:
    """Assemble one neuron's view from its plain rows (see `rows_by_neuron`)."""
    rows = sorted((r for r in scores if r["split"] == "valid"), key=lambda r: (
        not r["best"], r["score"] is None, -(r["score"] or 0.0)))
    best = [r for r in rows if r["best"] and r["score"] is not None]
    head = max(best, key=lambda r: r["score"]) if best else (rows[0] if rows else None)
    predicted: dict[int, list[float]] = {}
    if head is not None:
        predicted = {int(r["excerpt_id"]): list(r["predicted"]) for r in sims
                     if r["predicted"] is not None and r["explainer"] == head["explainer"]
                     and r["candidate"] == head["candidate"]
                     and r["simulator"] == head["simulator"]}
    excerpts = []
    for kind, n in (("top", n_top), ("random", n_random), ("quantile", n_top)):
        # Simulated excerpts first: they are the ones whose two shadings can be compared.
        chosen = sorted((r for r in records if r["kind"] == kind),
                        key=lambda r: (int(r["excerpt_id"]) not in predicted, r["rank"]))[:n]
        for r in chosen:
            eid = int(r["excerpt_id"])
            real = [float(a) for a in r["activations"]]
            words = list(tokens.get(eid, [f"#{i}" for i in range(len(real))]))
            excerpts.append(Excerpt(kind, int(r["rank"]), r["split"], eid, words, real,
                                    predicted.get(eid)))
    return NeuronView(name, mkey, int(layer), int(neuron), stats, rows, head, excerpts)


def load_neuron(run: Path, mkey: str, layer: int, neuron: int, n_top: int = N_TOP,
                n_random: int = N_RANDOM) -> NeuronView:
    """Read one neuron's rows from the run and assemble its view."""
    t = {name: rows_by_neuron(store.read(run, name, mkey, layer)).get(neuron, [])
         for name in ("records", "neurons", "scores", "simulations")}
    if not t["records"] and not t["scores"]:
        raise ExplainError(f"--neuron {neuron}: layer {layer} of {mkey} has no records or "
                           "scores for it (see `explain report` for what the run holds)")
    ex = store.read(run, "excerpts", mkey)
    tokens = dict(zip(ex["excerpt_id"].astype(int), ex["tokens"]))
    name = store.read_run_json(run).get("models", {}).get(mkey, {}).get("model", mkey)
    stats = t["neurons"][0] if t["neurons"] else None
    return neuron_view(name, mkey, layer, neuron, t["records"], stats, t["scores"],
                       t["simulations"], tokens, n_top, n_random)


def token_text(token: str) -> str:
    """A token made visible: newlines and tabs as symbols, so an excerpt stays one line."""
    return token.replace("\n", "↵").replace("\t", "⇥").replace("\r", "")


_SUP = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")


def superscript(value: float) -> str:
    """A simulated value (0–10) rounded and raised, so it sits beside its token compactly."""
    return str(int(round(value))).translate(_SUP)


def _shade(value: float, top: float) -> str:
    # Orange background whose strength follows the activation, like the paper's viewer.
    frac = 0.0 if top <= 0 else min(1.0, max(0.0, value) / top)
    r, g, b = 255, int(255 - 115 * frac), int(255 - 255 * frac)
    return f"black on rgb({r},{g},{b})" if frac > 0.02 else ""


def excerpt_text(ex: Excerpt, top: float):
    """A rich Text: tokens shaded by real activation, each followed by the simulated value."""
    from rich.text import Text

    text = Text()
    for i, (word, a) in enumerate(zip(ex.tokens, ex.real)):
        text.append(token_text(word), style=_shade(a, top))
        if ex.simulated is not None and i < len(ex.simulated):
            text.append(superscript(ex.simulated[i]), style="cyan")
    return text


def _num(x, fmt="{:.3f}") -> str:
    return "—" if x is None else fmt.format(x)


def renderables(view: NeuronView) -> list:
    """The rich renderables of one neuron, top to bottom."""
    from rich.panel import Panel
    from rich.table import Table

    out = [Panel.fit(f"[bold]{view.model}[/]  layer {view.layer}  neuron {view.neuron}")]
    expl = Table(title="Explanations (valid split)", title_justify="left", header_style="bold")
    for col in ("", "explainer", "cand", "simulator", "score", "top", "random", "status",
                "explanation"):
        expl.add_column(col, overflow="fold", ratio=4 if col == "explanation" else None,
                        justify="right" if col in ("cand", "score", "top", "random") else "left")
    for r in view.scores:
        mark = "★" if r is view.headline else ("best" if r["best"] else "")
        expl.add_row(mark, r["explainer"], str(r["candidate"]), r["simulator"],
                     _num(r["score"]), _num(r["score_top"]), _num(r["score_random"]),
                     r["status"], r["explanation"] or (r["error"] or ""))
    out.append(expl)
    if view.stats:
        s = view.stats
        q = ", ".join(f"{v:.3g}" for v in (s.get("quantiles") or []))
        out.append(f"[bold]stats[/] mean {s['mean']:.4g}  std {s['std']:.4g}  max {s['max']:.4g}"
                   f"  min {s['min']:.4g}  density {s['density']:.1%}  tokens {s['n_tokens']}"
                   f"  quantiles [{q}]")
    top = max([max(e.real) for e in view.excerpts if e.real] or [0.0])
    if view.headline is not None:
        out.append(f"[dim]simulated values (cyan superscripts, 0–10) from {view.headline['explainer']} "
                   f"candidate {view.headline['candidate']} via {view.headline['simulator']}; "
                   f"shading = real activation (max shown {top:.3g})[/]")
    for kind in ("top", "random", "quantile"):
        shown = [e for e in view.excerpts if e.kind == kind]
        if not shown:
            continue
        out.append(f"[bold]{kind} excerpts[/]")
        for e in shown:
            from rich.text import Text

            line = Text(f"#{e.rank:<3} {e.split:<9} max {max(e.real, default=0):6.3g}  ",
                        style="dim")
            out.append(line + excerpt_text(e, top))
    return out


def run(cfg: ShowConfig) -> str:
    """Render one neuron; colours only when stdout is a terminal."""
    from rich.console import Console

    mkey = resolve_model(cfg.run, cfg.model)
    layers = store.layers_in(cfg.run, "records", mkey) or store.layers_in(cfg.run, "scores", mkey)
    if cfg.layer not in layers:
        raise ExplainError(f"--layer {cfg.layer}: the run holds layers "
                           f"{', '.join(map(str, layers)) or 'none'} of {mkey}")
    view = load_neuron(Path(cfg.run), mkey, cfg.layer, cfg.neuron)
    tty = sys.stdout.isatty()
    console = Console(file=io.StringIO(), force_terminal=tty, color_system="truecolor" if tty
                      else None, width=shutil.get_terminal_size((120, 40)).columns)
    for r in renderables(view):
        console.print(r)
    return console.file.getvalue().rstrip("\n")
