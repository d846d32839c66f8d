"""`explain report --cost --project N [--price MODEL]`: what this run's settings would cost for N
neurons, from the tokens its ledger measured per neuron.

Read through `explainer.llm.ledger` (calls, prices). Every answered request that names a neuron
(call keys `L<layer>/N<neuron>/...`) counts once per stage, as `report --cost` counts it, with
its billed-equivalent prompt and completion tokens; probes and puzzles name none and are left
out (a fixed cost, not per neuron). A neuron's tokens in a stage it never reached (a cascade's
later levels) count as 0, so the mean over the measured neurons is what the run's settings spend
per neuron, escalation included.

Dollars: at MODEL's prices for every call (`--price`), else at each call's own model's price (a
local model: 0). Live at the `usd_per_million_tokens` column of prices.json, batch at its
`batch_usd_per_million_tokens` column (the provider's batch interface, half price at OpenAI).

The unit is a neuron-side: a gated MLP (SwiGLU, e.g. the embedded SmolLM2) has two per
neuron, each explained and simulated under one call key `L<layer>/N<neuron>`, so the measured
per-neuron figures are divided by the run's sides per neuron (from `explanations/`); a GPT-2
neuron has one side, so N neuron-sides of GPT-2 are N neurons.

The interval is 95% for the total of N neurons drawn like the measured ones:
N·m ± 1.96·sqrt(N²·s²/n + N·s²), with m and s the mean and standard deviation of the measured
neurons' dollars and n their count: the first term is the uncertainty of m from n neurons (it
dominates for N >> n), the second the spread of the N neurons' own costs around it.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

from explainer import ExplainError

Z95 = 1.96


@dataclass(frozen=True)
class StageProjection:
    """One stage's measured tokens per neuron and what N neurons would cost."""

    stage: str
    model: str  # the model(s) whose calls these are ('+'-joined)
    prompt_per_neuron: float  # mean over the measured neurons (0 where a neuron had none)
    completion_per_neuron: float
    usd_per_neuron: float | None  # live price; None where a price is unknown
    usd: float | None  # live, N neurons
    usd_batch: float | None  # batch price, N neurons


@dataclass(frozen=True)
class Projection:
    """The projected bill of N neurons."""

    n: int  # neuron-sides projected
    measured: int  # neurons measured in the ledger
    sides: float  # sides per measured neuron (2 on a gated MLP that explained both signs)
    price_model: str | None  # --price, or None (each call's own model)
    stages: tuple[StageProjection, ...]
    usd: float | None
    low: float | None  # 95% interval of the live total
    high: float | None
    usd_batch: float | None


def _price(model: str, batch: bool) -> tuple[float, float] | None:
    from explainer.llm import ledger

    from explainer.llm import prices

    return prices.batch_price(model) if batch else ledger.price(model)


def _usd(model: str, free: bool, prompt: float, completion: float, price_model: str | None,
         batch: bool) -> float | None:
    if price_model is None and free:
        return 0.0
    p = _price(price_model or model, batch)
    return None if p is None else (prompt * p[0] + completion * p[1]) / 1e6


def per_neuron(calls) -> dict[str, dict[tuple[int, int], list]]:
    """{stage: {(layer, neuron): [prompt tokens, completion tokens, [(model, free, pt, ct)]]}},
    each distinct (stage, request) once, answered calls with a neuron only."""
    from explainer.llm import ledger

    seen: set[tuple[str, str]] = set()
    out: dict[str, dict[tuple[int, int], list]] = {}
    for c in calls:
        if c.status not in ledger.ANSWERED or c.neuron is None or (c.stage, c.request) in seen:
            continue
        seen.add((c.stage, c.request))
        g = out.setdefault(c.stage, {}).setdefault(c.neuron, [0, 0, []])
        g[0] += c.prompt_tokens
        g[1] += c.completion_tokens
        g[2].append((c.model, c.free, c.prompt_tokens, c.completion_tokens))
    return out


def interval(values: list[float], n: int) -> tuple[float, float]:
    """95% interval of the total of n neurons drawn like `values` (see the module doc)."""
    k = len(values)
    m = sum(values) / k
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (k - 1)) if k > 1 else 0.0
    half = Z95 * math.sqrt(n * n * s * s / k + n * s * s)
    return max(0.0, n * m - half), n * m + half


def project(calls, n: int, price_model: str | None = None, sides: float = 1.0) -> Projection:
    """The projection of `n` neuron-sides from the ledger's `calls` (`sides` per neuron)."""
    from explainer.llm import ledger, prices

    if n < 1:
        raise ExplainError(f"--project {n}: the number of neurons to project must be 1 or more")
    if price_model is not None and ledger.price(price_model) is None:
        raise ExplainError(f"--price {price_model}: not in prices.json; priced models: "
                           f"{', '.join(prices.models())}")
    by_stage = per_neuron(calls)
    neurons = sorted({k for g in by_stage.values() for k in g})
    if not neurons:
        raise ExplainError("--project: the run's ledger has no call for a neuron to measure; "
                           "run describe or simulate first")
    k = len(neurons)
    unit = k * sides  # what a per-neuron mean is divided by: neuron-sides measured
    stages, totals, totals_batch = [], {nr: 0.0 for nr in neurons}, 0.0
    known = known_batch = True
    for stage, g in sorted(by_stage.items()):
        live = batch = 0.0
        for nr, (_, _, parts) in g.items():
            for model, free, pt, ct in parts:
                one = _usd(model, free, pt, ct, price_model, False)
                two = _usd(model, free, pt, ct, price_model, True)
                if one is None:
                    known = False
                else:
                    live += one
                    totals[nr] += one
                if two is None:
                    known_batch = False
                else:
                    batch += two
        totals_batch += batch
        models = "+".join(sorted({m for _, _, parts in g.values() for m, *_ in parts}))
        per = live / unit
        stages.append(StageProjection(
            stage, models, sum(v[0] for v in g.values()) / unit,
            sum(v[1] for v in g.values()) / unit, per if known else None,
            per * n if known else None, batch / unit * n if known_batch else None))
    if not known:
        return Projection(n, k, sides, price_model, tuple(stages), None, None, None, None)
    low, high = interval([totals[nr] / sides for nr in neurons], n)
    return Projection(n, k, sides, price_model, tuple(stages), sum(totals.values()) / unit * n,
                      low, high, totals_batch / unit * n if known_batch else None)


def render(p: Projection, width: int = 200) -> str:
    """The projection as plain text."""
    from rich.console import Console
    from rich.table import Table

    from explainer.views.formats import num

    at = f"at {p.price_model}'s prices" if p.price_model else "at each call's own model's price"
    per_side = "" if p.sides == 1 else f" ({p.sides:g} sides each: figures per neuron-side)"
    t = Table(title=f"Projected bill for {p.n:,} neurons {at}, from {p.measured} measured "
                    f"neurons of this run's ledger{per_side}", title_justify="left",
              header_style="bold")
    for h in ("stage", "model", "prompt/neuron", "compl./neuron", "$/neuron", "$ live",
              "$ batch"):
        t.add_column(h, justify="left" if h in ("stage", "model") else "right", no_wrap=True)
    money = lambda v: num(v, "{:,.2f}")  # noqa: E731
    for s in p.stages:
        t.add_row(s.stage, s.model, f"{s.prompt_per_neuron:,.0f}",
                  f"{s.completion_per_neuron:,.0f}", num(s.usd_per_neuron, "{:.6f}"),
                  money(s.usd), money(s.usd_batch))
    t.add_row("total", "", "", "", "", money(p.usd), money(p.usd_batch))
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(t)
    lines = [line.rstrip() for line in console.file.getvalue().splitlines()]
    if p.usd is not None:
        lines.append(f"projected: ${p.usd:,.2f} live (95% interval ${p.low:,.2f} to "
                     f"${p.high:,.2f}, from the spread over the measured neurons)"
                     + (f", ${p.usd_batch:,.2f} through the batch interface"
                        if p.usd_batch is not None else ""))
    else:
        lines.append("projected: unknown (a model without a price; name one with --price)")
    return "\n".join(lines)


def run(run_dir: Path, n: int, price_model: str | None = None) -> str:
    """`explain report --cost --project N [--price MODEL]`."""
    from explainer.views import cost

    return render(project(cost.read_calls(run_dir), n, price_model, sides_per_neuron(run_dir)))


def sides_per_neuron(run_dir: Path) -> float:
    """Mean distinct sides explained per (model, layer, neuron) of the run (1 when none)."""
    from explainer import run as rundir

    ex = rundir.read(run_dir, "explanations", columns=["neuron", "side"])
    if ex.empty:
        return 1.0
    return float(ex.groupby(["model", "layer", "neuron"])["side"].nunique().mean())
