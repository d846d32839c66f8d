"""The judges in `explain report`: detection and fuzzing beside simulation.

Each neuron-side counts once per (method, explainer, judge): the candidate marked `best` (the one
simulation chose), else its lowest-numbered candidate. The headline is balanced accuracy (chance
0.5), shown with a bootstrap interval; `ok` and `partial` rows count (a partial row's unreadable
answers are left out, and counted); `one_class` / `no_items` / `failed` rows do not. The rank
correlation between methods is taken across the neurons that both methods scored.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from explainer import run as rundir
from explainer.config import BASELINE_SIMULATOR
from explainer.score import classify, metrics
from explainer.views.formats import num as _num

JUDGES = ("detection", "fuzzing")
CHANCE = 0.5  # balanced accuracy of a judge that ignores the explanation
COUNTED = ("ok", "partial")
# sampling: judge rows of two presets (explain, delphi) never share a row of the report
KEY = ["model", "layer", "neuron", "side", "explainer", "simulator", "method", "sampling"]


@dataclass(frozen=True)
class JudgeRow:
    """Balanced accuracy of one group of judged neurons."""

    model: str
    layer: int | None  # None on a per-model row
    method: str
    explainer: str
    judge: str
    n_neurons: int  # neuron-sides with a row, any status
    n_scored: int  # counted (ok or partial)
    mean: float | None  # mean balanced accuracy
    ci_low: float | None
    ci_high: float | None
    chance: float
    mean_auroc: float | None  # over the counted rows that have one
    mean_f1: float | None
    n_unscored: int  # one class, no items, or failed
    items_failed: int  # unreadable answers, summed
    items: int  # answers asked for, summed
    sampling: str = "explain"  # the preset that drew the judge's excerpts


@dataclass(frozen=True)
class CorrRow:
    """Spearman correlation of two methods' per-neuron scores."""

    model: str
    explainer: str
    a: str
    b: str
    n: int
    rho: float | None


def judged(scores):
    """One row per neuron-side and (method, explainer, judge): best, else lowest candidate."""
    rows = rundir.query.filled(scores)
    # rows written before presets carry '' and were drawn by the explain preset
    rows["sampling"] = rows["sampling"].replace("", "explain")
    return rundir.query.judged(rows, KEY, JUDGES)


def _mean(x) -> float | None:
    return metrics.mean_defined([None if v != v else float(v) for v in x])[0]


def _summary(g, model: str, layer, key) -> JudgeRow:
    ok = g[g["status"].isin(COUNTED) & g["balanced_accuracy"].notna()]
    ba = ok["balanced_accuracy"].to_numpy(np.float64)
    lo, hi = metrics.bootstrap_ci(ba)
    failed = g["n_failed"].fillna(0).astype(int)
    return JudgeRow(model, layer, key[0], key[1], key[2], len(g), len(ok), _mean(ba), lo, hi,
                    CHANCE, _mean(ok["auroc"]), _mean(ok["f1"]), len(g) - len(ok),
                    int(failed.sum()), int((g["n_judged"].fillna(0).astype(int) + failed).sum()),
                    key[3])


def aggregate(scores, models_meta: dict, by: str = "layer") -> list[JudgeRow]:
    """Rows by (model, layer, method, explainer, judge), or by model when `by` is model."""
    head = judged(scores)
    out: list[JudgeRow] = []
    if head.empty:
        return out
    size = lambda m: (models_meta.get(m, {}).get("n_params") or 0, m)  # noqa: E731
    for mkey in sorted(head["model"].unique(), key=size):
        name = models_meta.get(mkey, {}).get("model", mkey)
        g_model = head[head["model"] == mkey]
        keys = ["method", "explainer", "simulator", "sampling"] if by == "model" else \
            ["layer", "method", "explainer", "simulator", "sampling"]
        for k, g in g_model.groupby(keys, sort=True):
            layer = None if by == "model" else int(k[0])
            out.append(_summary(g, name, layer, k[-4:]))
    return out


def _per_neuron(scores) -> dict[str, dict[tuple, float]]:
    """method -> {(model, layer, neuron, side, explainer): the neuron's headline number}."""
    out: dict[str, dict[tuple, float]] = {}
    sim = rundir.query.chosen(scores, "valid", stand_in=True)
    # One simulator per neuron: an LLM's before the lexical baseline's.
    sim = sim[sim["status"] == "ok"].sort_values(
        "simulator", key=lambda s: s == BASELINE_SIMULATOR, kind="stable")
    for src, col in ((sim, "score"), (judged(scores), "balanced_accuracy")):
        if src.empty:
            continue
        src = src[src[col].notna()] if col == "score" else \
            src[src["status"].isin(COUNTED) & src[col].notna()]
        for r in src.drop_duplicates(KEY, keep="first").itertuples(index=False):
            key = (r.model, int(r.layer), int(r.neuron), r.side, r.explainer)
            name = r.method if r.method == "simulation" else f"{r.method} ({r.sampling})"
            out.setdefault(name, {}).setdefault(key, float(getattr(r, col)))
    return out


def correlations(scores, models_meta: dict) -> list[CorrRow]:
    """Spearman correlation across neurons between every two methods, per model and explainer."""
    per = _per_neuron(scores)
    methods = [m for m in ("simulation",) if m in per] + sorted(set(per) - {"simulation"})
    out = []
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            both = sorted(set(per[a]) & set(per[b]))
            for model, explainer in sorted({(k[0], k[4]) for k in both}):
                keys = [k for k in both if k[0] == model and k[4] == explainer]
                rho = classify.rank_correlation([per[a][k] for k in keys], [per[b][k] for k in keys])
                out.append(CorrRow(models_meta.get(model, {}).get("model", model), explainer,
                                   a, b, len(keys), rho))
    return out


def render(rows: list[JudgeRow], corr: list[CorrRow], width: int = 220) -> str:
    """The judge tables as plain text ('' when the run has no judge rows)."""
    if not rows:
        return ""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=io.StringIO(), width=width, color_system=None)
    t = Table(title="Judges: balanced accuracy (held-out excerpts; chance 0.5)",
              title_justify="left", header_style="bold")
    cols = [("model", lambda r: r.model),
            ("layer", lambda r: "all" if r.layer is None else str(r.layer)),
            ("method", lambda r: r.method), ("explainer", lambda r: r.explainer),
            ("judge", lambda r: r.judge), ("sampling", lambda r: r.sampling),
            ("neurons", lambda r: str(r.n_neurons)),
            ("scored", lambda r: str(r.n_scored)), ("mean", lambda r: _num(r.mean)),
            ("95% CI", lambda r: "—" if r.ci_low is None else f"{r.ci_low:.3f}…{r.ci_high:.3f}"),
            ("chance", lambda r: f"{r.chance:.3f}"), ("AUROC", lambda r: _num(r.mean_auroc)),
            ("F1", lambda r: _num(r.mean_f1)), ("unscored", lambda r: str(r.n_unscored)),
            ("unreadable", lambda r: f"{r.items_failed}/{r.items}")]
    for name, _ in cols:
        t.add_column(name, justify="left" if name in ("model", "method", "explainer", "judge",
                                                      "sampling")
                     else "right", no_wrap=True)
    for r in rows:
        t.add_row(*(fn(r) for _, fn in cols))
    console.print(t)
    if corr:
        c = Table(title="Rank correlation between methods across neurons (Spearman)",
                  title_justify="left", header_style="bold")
        for name in ("model", "explainer", "methods", "neurons", "rho"):
            c.add_column(name, justify="right" if name in ("neurons", "rho") else "left")
        for r in corr:
            c.add_row(r.model, r.explainer, f"{r.a} ~ {r.b}", str(r.n), _num(r.rho))
        console.print(c)
    return "\n".join(line.rstrip() for line in console.file.getvalue().splitlines())
