"""`explain show`: one neuron in the terminal: explanations and scores, statistics, excerpts.

Each excerpt token is shaded by its real activation (relative to the neuron's largest shown
activation) and followed by the simulated value (0–10) from the best-scoring explanation, so
where the simulator and the neuron disagree is visible at a glance.
"""

from __future__ import annotations

import io
import shutil
import sys
from pathlib import Path

from explainer import ExplainError
from explainer import run as rundir
from explainer.config import ShowConfig
from explainer.views.formats import num as _num, token_text
from explainer.views.neuron import (Excerpt, NeuronView, load_neuron, output_sides,
                                    resolve_model)

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


def renderables(view: NeuronView) -> list:
    """The rich renderables of one neuron, top to bottom."""
    from rich.panel import Panel
    from rich.table import Table

    out = [Panel.fit(f"[bold]{view.model}[/]  layer {view.layer}  neuron {view.neuron}")]
    expl = Table(title="Explanations (valid split)", title_justify="left", header_style="bold")
    two_sides = len(view.sides) > 1
    for col in ("", *(("side",) if two_sides else ()), "explainer", "cand", "simulator",
                "score", "top", "random", "status", "explanation"):
        expl.add_column(col, overflow="fold", ratio=4 if col == "explanation" else None,
                        justify="right" if col in ("cand", "score", "top", "random") else "left")
    for r in view.scores:
        heads = view.heads or {"pos": view.headline}
        mark = "★" if any(r is h for h in heads.values()) else ("best" if r["best"] else "")
        side = (r.get("side", "pos"),) if two_sides else ()
        expl.add_row(mark, *side, r["explainer"], str(r["candidate"]), r["simulator"],
                     _num(r["score"]), _num(r["score_top"]), _num(r["score_random"]),
                     r["status"], r["explanation"] or (r["error"] or ""))
    out.append(expl)
    if view.stats:
        s = view.stats
        q = ", ".join(f"{v:.3g}" for v in (s.get("quantiles") or []))
        out.append(f"[bold]stats[/] mean {s['mean']:.4g}  std {s['std']:.4g}  max {s['max']:.4g}"
                   f"  min {s['min']:.4g}  density {s['density']:.1%}  tokens {s['n_tokens']}"
                   f"  quantiles [{q}]")
    out += output_lines(view)
    top = max([max(e.real) for e in view.excerpts if e.real] or [0.0])
    for side, head in (view.heads or {"pos": view.headline}).items():
        if head is None:
            continue
        shown_on = "bottom excerpts" if side == "neg" else "top, random and quantile excerpts"
        out.append(f"[dim]{shown_on}: simulated values (cyan superscripts, 0–10) from "
                   f"{head['explainer']} candidate {head['candidate']} via {head['simulator']}; "
                   f"shading = real activation (max shown {top:.3g})[/]")
    for kind in ("top", "bottom", "random", "quantile"):
        shown = [e for e in view.excerpts if e.kind == kind]
        if not shown:
            continue
        title = "bottom excerpts (negative side, activations negated)" if kind == "bottom" \
            else f"{kind} excerpts"
        out.append(f"[bold]{title}[/]")
        for e in shown:
            from rich.text import Text

            line = Text(f"#{e.rank:<3} {e.split:<9} max {max(e.real, default=0):6.3g}  ",
                        style="dim")
            out.append(line + excerpt_text(e, top))
    return out


def output_lines(view: NeuronView) -> list[str]:
    """What the neuron writes: per side, the next tokens it promotes and suppresses most, each
    with its direct effect on the logits per unit of activation (rich markup)."""
    from rich.markup import escape

    out = []
    for side, tokens in output_sides(view):
        label = f"{side} side " if len(view.sides) > 1 else ""
        for verb, pairs in (("promotes", tokens.promoted), ("suppresses", tokens.suppressed)):
            items = "  ".join(f'"{escape(token_text(t))}" {v:+.2f}' for t, v in pairs)
            out.append(f"[bold]{label}{verb}[/] {items}")
    return out


def run(cfg: ShowConfig) -> str:
    """Render one neuron; colours only when stdout is a terminal."""
    from rich.console import Console

    mkey = resolve_model(cfg.run, cfg.model)
    layers = rundir.layers_in(cfg.run, "records", mkey) or rundir.layers_in(cfg.run, "scores", mkey)
    if cfg.layer not in layers:
        raise ExplainError(f"--layer {cfg.layer}: the run holds layers "
                           f"{', '.join(map(str, layers)) or 'none'} of {mkey}")
    view = load_neuron(Path(cfg.run), mkey, cfg.layer, cfg.neuron)
    tty = sys.stdout.isatty()
    console = Console(file=io.StringIO(), force_terminal=tty, color_system="truecolor" if tty
                      else None, width=shutil.get_terminal_size((120, 40)).columns)
    for r in renderables(view):
        console.print(r)
    from explainer.views import judgments

    for r in judgments.renderables(*judgments.load(Path(cfg.run), mkey, cfg.layer, cfg.neuron)):
        console.print(r)
    return console.file.getvalue().rstrip("\n")
