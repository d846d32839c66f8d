"""Puzzle accuracy: how often a simulator scores a puzzle's true explanation above the false ones.

Pure aggregation over rows of the `puzzles/` table (a DataFrame in, frozen rows out), the table
and JSON that `explain puzzles` prints, and the section `explain report` adds when a run holds
puzzle results. A score counts as the report counts neuron scores: a constant prediction is 0
(the explanation predicted nothing, which is the explanation failing); a failed simulation
fails the whole puzzle, which is then left out of every share and mean and counted apart.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass

from explainer.views.formats import num as _num

OK = "ok"
CONSTANT_PREDICTION = "constant_prediction"


@dataclass(frozen=True)
class PuzzleResult:
    """One puzzle under one simulator: its explanations' scores and whether the truth won."""

    puzzle: str
    category: str
    true_score: float | None  # as counted (a constant prediction is 0); None when failed
    false_scores: tuple[float | None, ...]  # in the file's order
    first: bool | None  # true strictly above every false one; None when the puzzle failed
    margin: float | None  # true minus the best false
    explained: str | None  # the explainer's own explanation (with --explain)
    explained_score: float | None
    n_tokens: int  # tokens of the puzzle's passages (each explanation simulates them all)
    error: str | None  # why the puzzle failed


@dataclass(frozen=True)
class Summary:
    """A simulator's accuracy over a puzzle set."""

    puzzle_set: str
    simulator: str
    mode: str
    n_puzzles: int
    n_scored: int  # puzzles whose every explanation was simulated
    n_first: int
    share_first: float | None  # n_first / n_scored
    chance: float | None  # the share a simulator guessing at random expects: mean 1/(1+n_false)
    mean_margin: float | None
    ci_low: float | None  # 95% bootstrap interval of the mean margin (over puzzles)
    ci_high: float | None
    mean_true: float | None
    mean_best_false: float | None
    mean_explained: float | None  # over puzzles with an explained score
    n_failed: int
    by_category: tuple[tuple[str, int, int], ...]  # (category, scored, ranked first)


def counted(score, status) -> float | None:
    """The value a puzzle's comparison uses: the score, 0 for a constant prediction, else None."""
    if status == OK and score is not None and score == score:
        return float(score)
    return 0.0 if status == CONSTANT_PREDICTION else None


def results(rows) -> list[PuzzleResult]:
    """One result per puzzle from `puzzles/` rows of one (puzzle set, simulator, mode)."""
    out = []
    for name, g in rows.sort_values(["puzzle", "role", "index"]).groupby("puzzle", sort=True):
        vals = [counted(s, st) for s, st in zip(g["score"], g["status"])]
        roles, errors = list(g["role"]), list(zip(g["error"], g["status"]))
        t = [v for v, r in zip(vals, roles) if r == "true"]
        f = tuple(v for v, r in zip(vals, roles) if r == "false")
        e = [(v, x) for v, r, x in zip(vals, roles, g["explanation"]) if r == "explained"]
        why = next((err or st for (err, st), v, r in zip(errors, vals, roles)
                    if r != "explained" and v is None), None)
        if why is None and (len(t) != 1 or not f):
            why = "the true or false explanations were not simulated"
        ok = why is None
        out.append(PuzzleResult(
            puzzle=str(name), category=str(g["category"].iloc[0]),
            true_score=t[0] if ok else None, false_scores=f,
            first=bool(t[0] > max(f)) if ok else None,
            margin=t[0] - max(f) if ok else None,
            explained=e[-1][1] if e else None, explained_score=e[-1][0] if e else None,
            n_tokens=int(g["n_tokens"].max()), error=None if ok else str(why)))
    return out


def summarize(res: list[PuzzleResult], puzzle_set: str, simulator: str, mode: str) -> Summary:
    """Share ranked first, chance, and the mean margin with its bootstrap interval."""
    from explainer.score.metrics import bootstrap_ci

    ok = [r for r in res if r.first is not None]
    margins = [r.margin for r in ok]
    lo, hi = bootstrap_ci(margins)
    cats = sorted({r.category for r in res})
    explained = [r.explained_score for r in res if r.explained_score is not None]

    def mean(xs):
        return sum(xs) / len(xs) if xs else None

    return Summary(
        puzzle_set=puzzle_set, simulator=simulator, mode=mode, n_puzzles=len(res),
        n_scored=len(ok), n_first=sum(r.first for r in ok),
        share_first=mean([float(r.first) for r in ok]),
        chance=mean([1.0 / (1 + len(r.false_scores)) for r in ok]),
        mean_margin=mean(margins), ci_low=lo, ci_high=hi,
        mean_true=mean([r.true_score for r in ok]),
        mean_best_false=mean([max(r.false_scores) for r in ok]),
        mean_explained=mean(explained), n_failed=len(res) - len(ok),
        by_category=tuple((c, sum(r.category == c for r in ok),
                           sum(r.category == c and r.first for r in ok)) for c in cats))


def summaries(rows) -> list[tuple[Summary, list[PuzzleResult]]]:
    """Every (puzzle set, simulator, mode) in a `puzzles/` table, summarised."""
    out = []
    for (pset, sim, mode), g in rows.groupby(["model", "simulator", "mode"], sort=True):
        res = results(g)
        out.append((summarize(res, pset, sim, mode), res))
    return out


def _share(s: Summary) -> str:
    if s.share_first is None:
        return "—"
    return f"{s.n_first}/{s.n_scored} = {s.share_first:.0%}"


def _ci(s: Summary) -> str:
    return "—" if s.ci_low is None else f"{s.ci_low:+.3f}…{s.ci_high:+.3f}"


def render(s: Summary, res: list[PuzzleResult], usage: str, width: int = 160) -> str:
    """What `explain puzzles` prints: a row per puzzle, then the summary lines."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"Puzzles ({s.puzzle_set}): simulator {s.simulator}, mode {s.mode}",
              title_justify="left", header_style="bold")
    show_expl = any(r.explained_score is not None or r.explained for r in res)
    for name in ("puzzle", "category", "true", "false", "margin", "first") + \
            (("explained",) if show_expl else ()):
        t.add_column(name, justify="left" if name in ("puzzle", "category", "false") else "right",
                     no_wrap=True)
    for r in res:
        first = "—" if r.first is None else ("yes" if r.first else "no")
        row = [r.puzzle, r.category, _num(r.true_score),
               " ".join(_num(f) for f in r.false_scores), _num(r.margin, "{:+.3f}"), first]
        t.add_row(*row, *((_num(r.explained_score),) if show_expl else ()))
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(t)
    lines = [line.rstrip() for line in console.file.getvalue().splitlines()]
    lines.append(f"ranked first: {_share(s)} (chance {_num(s.chance, '{:.0%}')}); mean margin "
                 f"{_num(s.mean_margin, '{:+.3f}')} (95% CI {_ci(s)}); mean true "
                 f"{_num(s.mean_true)}, mean best false {_num(s.mean_best_false)}"
                 + (f", mean explained {_num(s.mean_explained)}" if show_expl else ""))
    lines.append("by category: " + ", ".join(f"{c} {k}/{n}" for c, n, k in s.by_category))
    if s.n_failed:
        why = next((r.error for r in res if r.first is None), "")
        lines.append(f"failed: {s.n_failed} puzzles left out ({why})")
    lines.append(f"tokens: {usage}")
    return "\n".join(lines)


def as_dict(s: Summary, res: list[PuzzleResult]) -> dict:
    """The same results for scripts (`--format json`)."""
    return {"summary": asdict(s), "puzzles": [asdict(r) for r in res]}


def report_section(run, width: int = 220) -> tuple[str, list[dict]] | None:
    """`explain report`'s puzzle table for a run holding puzzle results (None when it holds none)."""
    from rich.console import Console
    from rich.table import Table

    from explainer import run as rundir

    rows = rundir.read(run, "puzzles")
    if rows.empty:
        return None
    found = summaries(rows)
    t = Table(title="Simulator on known-answer puzzles (true explanation ranked first)",
              title_justify="left", header_style="bold")
    for name in ("puzzles", "simulator", "mode", "scored", "ranked first", "chance", "margin",
                 "95% CI", "failed"):
        t.add_column(name, justify="left" if name in ("puzzles", "simulator", "mode")
                     else "right", no_wrap=True)
    for s, _ in found:
        t.add_row(s.puzzle_set, s.simulator, s.mode, str(s.n_scored), _share(s),
                  _num(s.chance, "{:.0%}"), _num(s.mean_margin, "{:+.3f}"), _ci(s),
                  str(s.n_failed))
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(t)
    text = "\n".join(line.rstrip() for line in console.file.getvalue().splitlines())
    return text, [asdict(s) for s, _ in found]
