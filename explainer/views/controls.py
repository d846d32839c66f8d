"""The report's specificity table: each neuron's own score beside a shuffled explanation's.

`explain simulate --control shuffled` scores every neuron's chosen explanation on another neuron
of its layer and side too (rows with `control = 'shuffled'`, keyed by the neuron they were scored
on). Here each such row is paired with the target neuron's own headline score: the same excerpts,
the same simulator, its own explanation against someone else's. The paired difference own −
shuffled, with a bootstrap interval over neurons, says whether the explanations are specific to
their neurons under this simulator. An interval that contains 0 is flagged "no signal": a score
that a random other neuron's explanation matches says nothing about the explanation.

Pure aggregation (DataFrame in, rows out) plus the plot panel; scores are counted as everywhere
in the report (`metrics.counted`: a constant prediction is 0, a dead neuron or a failure is left
out, and so is its pair).
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import numpy as np

from explainer import run as rundir
from explainer.score import metrics
from explainer.views.formats import num as _num

# A group: one explainer/simulator pair (and mode). Its unit is a neuron's side: both sides of
# a gated neuron are separate explanation targets, each deranged within its own side, pooled here.
PAIR = ["explainer", "simulator", "mode", "sim_prompt_hash"]
KEY = ["model", "layer", "neuron", "side"] + PAIR
NO_SIGNAL = "no signal"
MIN_PAIRS = 5  # below this a bootstrap interval is too narrow to trust: no verdict


@dataclass(frozen=True)
class ControlRow:
    """Own vs shuffled scores of one group of neurons under one explainer/simulator pair."""

    model: str
    layer: int | None  # None on a per-model row
    explainer: str
    simulator: str
    mode: str
    sides: str  # the sides pooled: pos, neg or neg+pos
    n_pairs: int  # neuron sides with both scores counted
    own: float | None  # mean own score over those neurons
    shuffled: float | None  # mean score of the other neurons' explanations on them
    diff: float | None  # mean of own − shuffled (paired by neuron)
    diff_low: float | None  # 95% bootstrap interval of that mean
    diff_high: float | None
    verdict: str  # signal | no signal | worse than shuffled | too few pairs
    sim_prompt_hash: str = ""  # own and shuffled both simulated under this simulator prompt


def paired(scores):
    """One row per neuron with a shuffled control: KEY + own, shuffled (counted; NaN when left
    out) and source_neuron. Own and shuffled come from one simulator prompt (run.query.pairs)."""
    import pandas as pd

    cols = KEY + ["own", "shuffled", "source_neuron"]
    merged = rundir.query.pairs(scores)
    if merged.empty:
        return pd.DataFrame(columns=cols)
    return merged.assign(own=metrics.counted_values(merged["score_own"], merged["status_own"]),
                         shuffled=metrics.counted_values(merged["score_ctl"],
                                                         merged["status_ctl"]))[cols]


def summarize(g, model: str, layer, key: tuple, seed: int = 0,
              n_boot: int = 2000) -> ControlRow:
    """One ControlRow from paired rows (one per neuron) of one group."""
    ok = np.isfinite(g["own"].to_numpy()) & np.isfinite(g["shuffled"].to_numpy())
    own, shuf = g["own"].to_numpy()[ok], g["shuffled"].to_numpy()[ok]
    d = own - shuf
    lo, hi = metrics.bootstrap_ci(d, n_boot=n_boot, seed=seed)
    if d.size < MIN_PAIRS:
        verdict = "too few pairs"
    elif lo > 0:
        verdict = "signal"
    elif hi < 0:
        verdict = "worse than shuffled"
    else:
        verdict = NO_SIGNAL
    return ControlRow(model=model, layer=None if layer is None else int(layer),
                      explainer=key[0], simulator=key[1], mode=key[2],
                      sim_prompt_hash=key[3],
                      sides="+".join(sorted(set(g["side"]))),
                      n_pairs=int(d.size), own=float(own.mean()) if d.size else None,
                      shuffled=float(shuf.mean()) if d.size else None,
                      diff=float(d.mean()) if d.size else None, diff_low=lo, diff_high=hi,
                      verdict=verdict)


def aggregate(scores, models_meta: dict, by: str = "layer", seed: int = 0,
              n_boot: int = 2000) -> list[ControlRow]:
    """Control rows per (model, layer, pair) with by='layer', per (model, pair) with by='model'."""
    p = paired(scores)
    if p.empty:
        return []
    out = []
    keys = PAIR if by == "model" else ["layer"] + PAIR
    for mkey in sorted(p["model"].unique(), key=lambda m: _size(models_meta.get(m, {}), m)):
        name = models_meta.get(mkey, {}).get("model", mkey)
        for k, g in p[p["model"] == mkey].groupby(keys, sort=True):
            layer = None if by == "model" else k[0]
            out.append(summarize(g, name, layer, tuple(k[-4:]), seed, n_boot))
    return out


def _size(meta: dict, mkey: str):
    n = meta.get("n_params")
    return (n is None, n or 0, mkey)


def dicts(rows: list[ControlRow]) -> list[dict]:
    return [asdict(r) for r in rows]


def render(rows: list[ControlRow], width: int = 220) -> str:
    """The control table as plain text (empty without controls)."""
    if not rows:
        return ""
    from rich.console import Console
    from rich.table import Table

    t = Table(title="Specificity: own explanation vs another neuron's (shuffled control, valid "
                    "split)", title_justify="left", header_style="bold")
    cols = [("model", lambda r: r.model)]
    cols += [("layer", lambda r: "all" if r.layer is None else str(r.layer))] if any(r.layer is not None for r in rows) else []
    cols += [("explainer", lambda r: r.explainer), ("simulator", lambda r: r.simulator)]
    cols += [("mode", lambda r: r.mode)] if len({r.mode for r in rows}) > 1 else []
    cols += [("prompt", lambda r: r.sim_prompt_hash[:6])] \
        if len({r.sim_prompt_hash for r in rows}) > 1 else []
    cols += [("sides", lambda r: r.sides)] if any(r.sides != "pos" for r in rows) else []
    cols += [("pairs", lambda r: str(r.n_pairs)), ("own", lambda r: _num(r.own)),
             ("shuffled", lambda r: _num(r.shuffled)), ("own−shuffled", lambda r: _num(r.diff)),
             ("95% CI", lambda r: "—" if r.diff_low is None
              else f"{r.diff_low:.3f}…{r.diff_high:.3f}"),
             ("verdict", lambda r: r.verdict)]
    for name, _ in cols:
        left = name in ("model", "explainer", "simulator", "mode", "prompt", "sides", "verdict")
        t.add_column(name, justify="left" if left else "right", no_wrap=True)
    for r in rows:
        t.add_row(*(fn(r) for _, fn in cols))
    t.caption = ("own−shuffled: mean paired difference over neuron sides, 95% bootstrap interval; "
                 "\"no signal\": it contains 0, so the scores do not tell these explanations "
                 f"from another neuron's; no verdict under {MIN_PAIRS} pairs")
    t.caption_justify = "left"
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(t)
    return "\n".join(line.rstrip() for line in console.file.getvalue().splitlines())


def draw(ax, rows: list[ControlRow]) -> None:
    """Plot panel: own − shuffled per pair with its interval; hollow and labelled where there is
    no signal (or too few pairs to say)."""
    rows = [r for r in rows if r.diff is not None]
    labels = [f"{r.explainer} × {r.simulator} (n={r.n_pairs})"
              + (f" · {r.model}" if len({x.model for x in rows}) > 1 else "") for r in rows]
    y = np.arange(len(rows))[::-1]
    for yi, r in zip(y, rows):
        flat = r.verdict != "signal"
        color = "0.5" if flat else "C2"
        ax.errorbar(r.diff, yi, xerr=[[r.diff - r.diff_low], [r.diff_high - r.diff]], fmt="o",
                    color=color, mfc="white" if flat else color, capsize=3)
        if flat:
            ax.annotate(r.verdict, (r.diff_high, yi), xytext=(6, 0),
                        textcoords="offset points", va="center", fontsize="small", color="0.3")
    ax.axvline(0.0, color="0.3", linewidth=1)
    ax.set_yticks(y, labels, fontsize="small")
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel("own − shuffled score (mean over neurons, 95% CI)")
    ax.set_title("Specificity: own vs shuffled explanation")
    ax.grid(alpha=0.3, axis="x")
