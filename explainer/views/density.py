"""Frequency-aware judge figures in `explain report`: each judge's balanced accuracy beside the
judged neurons' firing density, a density-weighted mean, and a panel of score against density.

Dense neurons are easier to "detect": a judge that says yes to anything common scores well on a
neuron that fires on a third of all tokens. So the report shows, per row of the judge table
(views/judged.py: one neuron-side per method, explainer, judge and preset), the mean firing
density of the neurons it counted, the mean balanced accuracy weighted by density
(sum d·s / sum d: what the figure would be if every token counted once), and Spearman's rho
between score and density (near 0: the judge's numbers do not just track frequency).

Firing density is `neurons.density`, the share of the neuron's recorded tokens above 0
(record/stats). For a gated neuron's negative side it is 1 − density, the share at or below 0
(tokens exactly 0 are rare in a float activation).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from explainer import run as rundir
from explainer.views.formats import num
from explainer.views.judged import COUNTED  # the judge table's rule for a counted row


@dataclass(frozen=True)
class DensityRow:
    """One judge row's scores against the firing density of the neurons it counted."""

    model: str
    layer: int | None  # None on a per-model row
    method: str
    explainer: str
    judge: str
    sampling: str
    n_scored: int  # counted neuron-sides with a known density
    mean: float | None  # mean balanced accuracy (as the judge table's)
    mean_density: float | None
    weighted_mean: float | None  # sum(density * score) / sum(density)
    rho: float | None  # Spearman correlation of score and density


def weighted_mean(values, weights) -> float | None:
    """sum(w·v) / sum(w) over the pairs where both are finite and w >= 0; None when the
    weights sum to 0 (or nothing is left)."""
    v = np.asarray(values, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    keep = np.isfinite(v) & np.isfinite(w) & (w >= 0)
    total = w[keep].sum()
    return float((w[keep] * v[keep]).sum() / total) if keep.any() and total > 0 else None


def with_density(scores, run_dir: Path):
    """The judge table's counted rows (one per neuron-side and group), with `density`."""
    import pandas as pd

    from explainer.views import judged

    head = judged.judged(scores)
    if head.empty:
        return head.assign(density=pd.Series(dtype="float64"))
    head = head[head["status"].isin(COUNTED) & head["balanced_accuracy"].notna()]
    parts = []
    for model in sorted(head["model"].unique()):
        nd = rundir.read(run_dir, "neurons", model=model, columns=["neuron", "density"])
        if "layer" in nd and not nd.empty:
            parts.append(nd.assign(model=model)[["model", "layer", "neuron", "density"]])
    if not parts:
        return head.assign(density=np.nan)
    dens = pd.concat(parts, ignore_index=True)
    dens["layer"] = dens["layer"].astype(int)
    dens["neuron"] = dens["neuron"].astype(int)
    out = head.assign(layer=head["layer"].astype(int), neuron=head["neuron"].astype(int)) \
        .merge(dens, on=["model", "layer", "neuron"], how="left")
    out["density"] = np.where(out["side"] == "neg", 1.0 - out["density"], out["density"])
    return out


def aggregate(scores, run_dir: Path, models_meta: dict, by: str = "layer") -> list[DensityRow]:
    """Rows grouped as the judge table's (by layer, or by model)."""
    from explainer.score import classify

    rows = with_density(scores, run_dir)
    rows = rows[rows["density"].notna()] if not rows.empty else rows
    out: list[DensityRow] = []
    if rows.empty:
        return out
    keys = ["model", "method", "explainer", "simulator", "sampling"] if by == "model" else \
        ["model", "layer", "method", "explainer", "simulator", "sampling"]
    for k, g in rows.groupby(keys, sort=True):
        name = models_meta.get(k[0], {}).get("model", k[0])
        layer = None if by == "model" else int(k[1])
        s, d = g["balanced_accuracy"].to_numpy(float), g["density"].to_numpy(float)
        rho = classify.rank_correlation(list(s), list(d)) if len(g) > 2 else None
        out.append(DensityRow(name, layer, k[-4], k[-3], k[-2], k[-1], len(g), float(s.mean()),
                              float(d.mean()), weighted_mean(s, d), rho))
    return out


def render(rows: list[DensityRow], width: int = 200) -> str:
    """The table as plain text ('' with no row)."""
    if not rows:
        return ""
    from rich.console import Console
    from rich.table import Table

    t = Table(title="Judges by firing density (dense neurons are easier to detect)",
              title_justify="left", header_style="bold")
    cols = [("model", lambda r: r.model),
            ("layer", lambda r: "all" if r.layer is None else str(r.layer)),
            ("method", lambda r: r.method), ("explainer", lambda r: r.explainer),
            ("judge", lambda r: r.judge), ("sampling", lambda r: r.sampling),
            ("scored", lambda r: str(r.n_scored)), ("mean", lambda r: num(r.mean)),
            ("density", lambda r: num(r.mean_density, "{:.4f}")),
            ("density-weighted mean", lambda r: num(r.weighted_mean)),
            ("rho(score, density)", lambda r: num(r.rho))]
    for name, _ in cols:
        t.add_column(name, justify="left" if name in ("model", "method", "explainer", "judge",
                                                      "sampling") else "right", no_wrap=True)
    for r in rows:
        t.add_row(*(fn(r) for _, fn in cols))
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(t)
    return "\n".join(line.rstrip() for line in console.file.getvalue().splitlines())


def draw(ax, points) -> None:
    """The panel: balanced accuracy against firing density (log scale), one series per
    (method, preset), chance at 0.5."""
    for (method, sampling), g in sorted(points.groupby(["method", "sampling"]),
                                        key=lambda kv: kv[0]):
        d = g["density"].clip(lower=1e-4)
        ax.scatter(d, g["balanced_accuracy"], s=14, alpha=0.7, label=f"{method} ({sampling})")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("firing density (share of tokens > 0)")
    ax.set_ylabel("balanced accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title("judge score vs firing density")
    ax.legend(fontsize=8)
