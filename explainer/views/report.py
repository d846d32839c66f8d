"""`explain report`: score summaries by layer, by model size and by explainer/simulator pair.

Each neuron counts once per (explainer, simulator): its chosen candidate's score on the valid
split (the headline of the paper, top + random excerpts together). How a status counts is
`score.metrics.counted`: a constant prediction is a score of 0 (the explanation predicted
nothing), a dead neuron (constant real activation) is left out and counted, and so is a failure. The aggregation functions are
pure (DataFrame in, rows out) so tests can check them against an independent computation.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from explainer import ExplainError
from explainer import run as rundir
from explainer.config import ReportConfig
from explainer.run.evidence import split_label
from explainer.score import metrics
from explainer.views.formats import format_params, num as _num

BYS = ("layer", "model")
FORMATS = ("table", "csv", "json")
GOOD = 0.8  # the paper counts neurons explained at least this well


@dataclass(frozen=True)
class ReportRow:
    """Summary of the headline scores of one group of neurons."""

    model: str  # the subject model's name (run.json), not its partition key
    layer: int | None  # None on a per-model or per-pair row
    depth: float | None  # layer / (n_layers - 1): 0 = first layer, 1 = last
    explainer: str
    simulator: str
    n_params: int | None
    n_neurons: int  # neurons with a score row, whatever its status
    n_scored: int  # neurons counted: a defined score, or a constant prediction as 0
    mean: float | None
    ci_low: float | None  # 95% bootstrap interval of the mean (percentile method)
    ci_high: float | None
    median: float | None
    share_good: float | None  # share of counted neurons with score >= GOOD
    mean_top: float | None
    mean_random: float | None
    mean_test: float | None  # the chosen candidate on the held-back test split
    n_dead: int  # dead neurons: the real activation is constant on the scored excerpts
    n_failed: int  # failed to simulate, or nothing to score
    # What the explainer saw (inputs | outputs | both); `explainer` is the stored name, NAME,
    # NAME+outputs or NAME+both (run/evidence.py), so each evidence is its own group.
    evidence: str = "inputs"
    side: str = "pos"  # pos, or neg: the negative side of a gated neuron, scored on its own
    mode: str = ""  # the simulator's mode: scores made in different modes are never pooled
    sim_prompt_hash: str = ""  # the simulator prompt: two versions are two rows, never one mean


# One neuron's headline: per model, layer, neuron, side, explainer, simulator, mode family and
# simulator prompt (run/query.py: two prompt versions are two rows of the report, never one mean).
GROUP = rundir.query.CHOICE


def headline(scores, current=None):
    """One valid-split row per neuron and `GROUP`: the chosen candidate (run.query.chosen).

    A neuron whose candidates all failed has no `best` row; its lowest candidate stands in, so it
    is counted as failed rather than silently dropped. `current`: the explanations still
    described (run.query.current_explanations); scores of texts described since are left out.
    """
    return rundir.query.chosen(scores, "valid", stand_in=True, current=current)


def _test_scores(scores, head):
    """The chosen candidates' counted test-split scores, aligned to `head`'s rows (NaN where
    absent; 0 for a constant prediction, on either split: a neuron whose chosen explanation
    predicted nothing on valid and was never tested still counts as 0)."""
    key = GROUP + ["candidate", "explanation_hash"]
    test = rundir.query.select(scores, split="test")[key + ["score", "status"]]
    merged = head[key + ["status"]].merge(test.drop_duplicates(key, keep="last"), on=key,
                                          how="left", suffixes=("_valid", ""))
    out = metrics.counted_values(merged["score"], merged["status"].fillna(""))
    constant = merged["status_valid"] == metrics.CONSTANT_PREDICTION
    out[np.isnan(out) & (merged["status"].isna() & constant).to_numpy()] = 0.0
    return out


def _column(rows, name: str) -> np.ndarray:
    """A top-only or random-only column counted as the headline is (metrics.counted with its
    own status: a constant prediction there is 0, a side dead on those excerpts is left out).
    Rows written before the status columns: a constant headline counts 0 there too."""
    status = rows[f"status_{name}"] if f"status_{name}" in rows else [None] * len(rows)
    vals = metrics.counted_values(rows[f"score_{name}"], status)
    const = (rows["status"] == metrics.CONSTANT_PREDICTION).to_numpy()
    vals[const & np.isnan(vals)] = 0.0
    return vals


def _mean(values) -> float | None:
    return metrics.mean_defined([None if v != v else float(v) for v in values])[0]


def summarize(rows, meta: dict, layer, explainer: str, simulator: str, seed: int = 0,
              n_boot: int = 2000, side: str = "pos", mode: str = "",
              sim_prompt_hash: str = "") -> ReportRow:
    """Aggregate headline rows (already one per neuron) into one ReportRow."""
    status = rows["status"].to_numpy()
    score = metrics.counted_values(rows["score"], status)
    ok = np.isfinite(score)  # defined, or a constant prediction counted as 0
    good = score[ok]
    dead = np.isin(status, list(metrics.DEAD))
    lo, hi = metrics.bootstrap_ci(good, n_boot=n_boot, seed=seed)
    n_layers = meta.get("n_layers")
    depth = None
    if layer is not None and n_layers:
        depth = float(layer) / (n_layers - 1) if n_layers > 1 else 0.0
    return ReportRow(
        model=meta.get("model", ""), layer=None if layer is None else int(layer), depth=depth,
        explainer=explainer, evidence=split_label(explainer)[1], simulator=simulator,
        n_params=meta.get("n_params"),
        n_neurons=int(len(rows)), n_scored=int(ok.sum()),
        mean=float(good.mean()) if good.size else None, ci_low=lo, ci_high=hi,
        median=float(np.median(good)) if good.size else None,
        share_good=float((good >= GOOD).mean()) if good.size else None,
        # Each over the neurons its own status counts, exactly as the headline's.
        mean_top=_mean(_column(rows, "top")),
        mean_random=_mean(_column(rows, "random")),
        mean_test=_mean(rows["test_score"].to_numpy(dtype=np.float64)[ok])
        if "test_score" in rows else None,
        n_dead=int(dead.sum()),
        # Anything neither counted nor dead: failed to simulate, or no tokens to score.
        n_failed=int((~ok & ~dead).sum()), side=side, mode=mode,
        sim_prompt_hash=sim_prompt_hash,
    )


def _size_key(meta: dict, mkey: str):
    n = meta.get("n_params")
    return (n is None, n or 0, mkey)


def aggregate(scores, models_meta: dict, by: str = "layer", seed: int = 0, n_boot: int = 2000):
    """Report rows grouped by (model, layer, pair), (model, pair) or pair; models by size."""
    head = headline(scores)
    if head.empty:
        return []
    head = head.assign(test_score=_test_scores(scores, head))
    mkeys = sorted(head["model"].unique(), key=lambda m: _size_key(models_meta.get(m, {}), m))
    out: list[ReportRow] = []
    pair = ["explainer", "simulator", "mode", "side", "sim_prompt_hash"]
    if by == "pair":
        for (ex, sim, mode, side, phash), g in head.groupby(pair, sort=True):
            meta = {"model": ", ".join(models_meta.get(m, {}).get("model", m)
                                       for m in mkeys if m in set(g["model"]))}
            out.append(summarize(g, meta, None, ex, sim, seed, n_boot, side, mode, phash))
        return out
    for mkey in mkeys:
        meta = {"model": mkey, **models_meta.get(mkey, {})}
        mrows = head[head["model"] == mkey]
        # Layer first, pair second: the baseline explainer's row sits beside the LLM's.
        keys = pair if by == "model" else ["layer"] + pair
        for k, g in mrows.groupby(keys, sort=True):
            layer = None if by == "model" else int(k[0])
            ex, sim, mode, side, phash = k[-5:]
            out.append(summarize(g, meta, layer, ex, sim, seed, n_boot, side, mode, phash))
    return out


def prompt_versions(scores, run: Path | str = "RUN") -> str:
    """A note for each simulator scored under several prompt versions: the newest version (the
    one written last), how many neurons are scored only under an older one, and the command
    that re-simulates them. '' when every simulator has one version."""
    head = headline(scores)
    own = rundir.query.select(scores)  # in read order: the newest write last
    lines = []
    for (mkey, sim, mode), g in head.groupby(["model", "simulator", "mode"], sort=True):
        mine = own[(own["model"] == mkey) & (own["simulator"] == sim) & (own["mode"] == mode)]
        versions = list(dict.fromkeys(mine["sim_prompt_hash"][::-1]))  # newest first
        if len(versions) < 2:
            continue
        unit = ["layer", "neuron", "side", "explainer"]
        fresh = set(map(tuple, g[g["sim_prompt_hash"] == versions[0]][unit].to_numpy()))
        stale = {k for k in map(tuple, g[unit].to_numpy()) if k not in fresh}
        lines.append(
            f"note: {sim} ({mode}) on {mkey} scored under {len(versions)} simulator prompt "
            f"versions, shown as separate rows (prompt {', '.join(v[:6] for v in versions)}); "
            f"{len(stale)} neuron sides have scores only under an older prompt than "
            f"{versions[0][:6]}: re-simulate them with `explain simulate --run {run} "
            f"--simulator {sim}`")
    return "\n".join(lines)


def load(run: Path):
    """The run's scores and its per-model metadata (keyed by partition key)."""
    run = Path(run)
    if not run.is_dir():
        raise ExplainError(f"--run {run}: no such run directory (create it with `explain record`)")
    scores = rundir.read(run, "scores")
    if scores.empty:
        raise ExplainError(f"--run {run}: has no scores yet (run `explain score` first)")
    # Scores of an explanation text described since are stale: not reported.
    scores = rundir.query.without_stale(scores, rundir.query.current_explanations(run))
    models_meta = rundir.read_run_json(run).get("models", {})
    return scores, models_meta


def run(cfg: ReportConfig) -> str:
    """Aggregate a run's scores and render them; write the plot when asked."""
    if cfg.by not in BYS:
        raise ExplainError(f"--by {cfg.by}: expected one of {', '.join(BYS)}")
    if cfg.format not in FORMATS:
        raise ExplainError(f"--format {cfg.format}: expected one of {', '.join(FORMATS)}")
    if cfg.plot is not None and Path(cfg.plot).suffix.lower() != ".png":
        raise ExplainError(f"--plot {cfg.plot}: expected a file name ending in .png")
    if (cfg.project is not None or cfg.price is not None) and not cfg.cost:
        raise ExplainError("--project/--price: only with --cost (the projection reads the ledger)")
    if cfg.price is not None and cfg.project is None:
        raise ExplainError(f"--price {cfg.price}: only with --project N")
    if cfg.cost:
        from explainer.views import cost, projection

        text = cost.run(cfg.run)
        if cfg.project is not None:  # what N neurons would cost at this run's tokens per neuron
            text += "\n\n" + projection.run(cfg.run, cfg.project, cfg.price)
        return text
    known = _puzzles(cfg)
    if known is not None and not rundir.files(cfg.run, "scores"):
        return known[0] if cfg.format != "json" else json.dumps(
            {"run": str(cfg.run), "puzzles": known[1]}, indent=2)
    scores, models_meta = load(cfg.run)
    from explainer.views import judged

    judges = judged.aggregate(scores, models_meta, cfg.by)
    corr = judged.correlations(scores, models_meta)
    from explainer.views import density  # judge scores beside the neurons' firing density

    dens = density.aggregate(scores, cfg.run, models_meta, cfg.by) if judges else []
    rows = aggregate(scores, models_meta, cfg.by)
    per_model = aggregate(scores, models_meta, "model") if cfg.by == "layer" else rows
    pairs = aggregate(scores, models_meta, "pair")
    from explainer.views import controls  # own vs shuffled explanations, where simulated

    ctl_model = controls.aggregate(scores, models_meta, "model")
    ctl = (controls.aggregate(scores, models_meta, "layer") if cfg.by == "layer" else []) \
        + ctl_model
    from explainer.views import generation  # generation and steering: own vs shuffled too

    gen_model = generation.aggregate(scores, models_meta, "model")
    ctl += (generation.aggregate(scores, models_meta, "layer") if cfg.by == "layer" else []) \
        + gen_model
    ctl_model += gen_model
    if cfg.plot is not None:
        from explainer.views import plot

        layer_rows = rows if cfg.by == "layer" else aggregate(scores, models_meta, "layer")
        plot.write(Path(cfg.plot), layer_rows, headline(scores), models_meta,
                   controls=ctl_model,
                   density=density.with_density(scores, cfg.run) if judges else None)
    if cfg.format == "csv":
        return to_csv(rows)
    if cfg.format == "json":
        return json.dumps({"run": str(cfg.run), "by": cfg.by, "rows": _dicts(rows),
                           "models": _dicts(per_model), "pairs": _dicts(pairs),
                           "puzzles": known[1] if known else [],
                           "judges": _dicts(judges), "correlations": _dicts(corr),
                           "density": [asdict(r) for r in dens],
                           "controls": controls.dicts(ctl)}, indent=2)
    text = render_tables(rows, per_model, pairs, cfg.by) + (f"\n{known[0]}" if known else "")
    versions = prompt_versions(scores, cfg.run)
    text += f"\n{versions}" if versions else ""
    from explainer.views import digits  # value slots without a digit, beside each pair

    text += digits.section(headline(scores))
    text += f"\n{controls.render(ctl)}" if ctl else ""
    text += f"\n{judged.render(judges, corr)}" if judges else ""
    text += f"\n{density.render(dens)}" if dens else ""
    return text + (f"\nplot: {cfg.plot}" if cfg.plot is not None else "")


def _puzzles(cfg: ReportConfig):
    """The simulators' puzzle accuracy when the run holds `explain puzzles` results, else None."""
    from explainer.views import puzzles

    return puzzles.report_section(cfg.run) if Path(cfg.run).is_dir() else None


def _dicts(rows: list[ReportRow]) -> list[dict]:
    return [asdict(r) for r in rows]


def to_csv(rows: list[ReportRow]) -> str:
    """Rows as CSV with a header (empty cells for undefined values)."""
    import csv

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([f.name for f in fields(ReportRow)])
    for r in rows:
        writer.writerow(["" if v is None else v for v in (getattr(r, f.name)
                                                         for f in fields(ReportRow))])
    return buf.getvalue().rstrip("\n")


def _table(title: str, rows: list[ReportRow], first: list[tuple[str, callable]]):
    from rich.table import Table

    t = Table(title=title, title_justify="left", header_style="bold")
    several_sims = len({r.simulator for r in rows}) > 1
    cols = first + [("explainer", lambda r: r.explainer)]
    if any(r.evidence != "inputs" for r in rows):  # the explainer's own name, then its evidence
        cols[-1:] = [("explainer", lambda r: split_label(r.explainer)[0]),
                     ("evidence", lambda r: r.evidence)]
    cols += [("simulator", lambda r: r.simulator)] if several_sims else []
    cols += [("mode", lambda r: r.mode)] if len({r.mode for r in rows}) > 1 else []
    cols += [("side", lambda r: r.side)] if any(r.side != "pos" for r in rows) else []
    if len({(r.simulator, r.mode, r.sim_prompt_hash) for r in rows}) > \
            len({(r.simulator, r.mode) for r in rows}):  # several prompt versions: say which
        cols += [("prompt", lambda r: r.sim_prompt_hash[:6])]
    cols += [
        ("neurons", lambda r: str(r.n_neurons)),
        ("scored", lambda r: str(r.n_scored)),
        ("mean", lambda r: _num(r.mean)),
        ("95% CI", lambda r: "—" if r.ci_low is None else f"{r.ci_low:.3f}…{r.ci_high:.3f}"),
        ("median", lambda r: _num(r.median)),
        (f"≥{GOOD}", lambda r: _num(r.share_good, "{:.0%}")),
        ("top", lambda r: _num(r.mean_top)),
        ("random", lambda r: _num(r.mean_random)),
        ("test", lambda r: _num(r.mean_test)),
        ("dead", lambda r: str(r.n_dead)),
        ("failed", lambda r: str(r.n_failed)),
    ]
    text_cols = ("model", "models", "explainer", "evidence", "simulator", "mode", "side",
                 "prompt")
    for name, _ in cols:
        t.add_column(name, justify="left" if name in text_cols else "right", no_wrap=True)
    previous = None
    for r in rows:
        if previous is not None and r.model != previous:
            t.add_section()  # a rule between subject models
        previous = r.model
        t.add_row(*(fn(r) for _, fn in cols))
    if not several_sims and rows:
        t.caption = f"simulator: {rows[0].simulator}" + (
            f" ({rows[0].mode} mode)" if rows[0].mode else "")
        t.caption_justify = "left"
    return t


def render_tables(rows, per_model, pairs, by: str, width: int = 220) -> str:
    """The rich tables as plain text: by layer (when asked), by model, and by pair."""
    from rich.console import Console

    console = Console(file=io.StringIO(), width=width, color_system=None, record=False)
    model_cols = [("model", lambda r: r.model), ("params", lambda r: format_params(r.n_params))]
    if by == "layer":
        console.print(_table("Score by layer (valid split, chosen candidate)", rows,
                             model_cols + [("layer", lambda r: str(r.layer)),
                                           ("depth", lambda r: _num(r.depth, "{:.2f}"))]))
    console.print(_table("Score by model (smallest first)", per_model, model_cols))
    if len({(r.explainer, r.simulator, r.mode, r.side, r.sim_prompt_hash) for r in pairs}) > 1:
        console.print(_table("Score by explainer / simulator", pairs,
                             [("models", lambda r: r.model)]))
    # Tables take their natural width; strip the padding rich adds to the console's width.
    return "\n".join(line.rstrip() for line in console.file.getvalue().splitlines())
