"""`explain report --cost`: what each stage's LLM calls cost, per neuron, from the run's ledger.

Read through `explainer.llm.ledger` (the ledger every LLM stage writes). Rows group by
(stage, model): `describe` rows are per explainer, `simulate` rows per simulator, `judge-detection`
and `judge-fuzzing` per judge; a stage that adds a level (e.g. a cascade) only needs its own stage
name. Each distinct request counts once, whether it was sent or read from the cache, so the
figures are what the method costs, not what this particular (resumed) run happened to pay.
Neurons are read off the call keys (`L<layer>/N<neuron>/...`); probes have no neuron. Dollars use
`explainer/llm/prices.json` (0 for the embedded and in-process models, unknown for a model
without a price).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from explainer import ExplainError


@dataclass(frozen=True)
class CostRow:
    """The LLM calls of one (stage, model)."""

    stage: str
    model: str
    neurons: int  # distinct (layer, neuron) named by the calls' keys
    calls: int  # distinct requests answered
    sent: int  # of those, answered by the endpoint at least once (the rest came from cache)
    prompt_tokens: int
    completion_tokens: int
    usd: float | None  # estimated, from prices.json; None when the model has no price

    @property
    def per_neuron(self) -> tuple[float, float, float, float | None] | None:
        """(calls, prompt tokens, completion tokens, dollars) per neuron."""
        if not self.neurons:
            return None
        n = self.neurons
        return (self.calls / n, self.prompt_tokens / n, self.completion_tokens / n,
                None if self.usd is None else self.usd / n)


def cost_rows(calls) -> list[CostRow]:
    """The ledger's `Call` rows -> one CostRow per (stage, model), sorted."""
    from explainer.llm import ledger

    return [CostRow(stage, model, t.neurons, t.calls, t.sent, t.prompt_tokens,
                    t.completion_tokens, t.usd)
            for (stage, model), t in ledger.totals(calls, by=("stage", "model")).items()]


def read_calls(run: Path) -> list:
    """The ledger's rows (an ExplainError when the run has no ledger)."""
    from explainer.llm import ledger

    if not ledger.exists(run):
        raise ExplainError(f"--run {run}: has no LLM ledger (no LLM call was made in this run)")
    return ledger.calls(run)


def render(rows: list[CostRow], width: int = 200) -> str:
    """The cost table as plain text."""
    from rich.console import Console
    from rich.table import Table

    from explainer.views.formats import num

    t = Table(title="LLM cost per neuron, by stage and model (from the run's ledger)",
              title_justify="left", header_style="bold")
    heads = ["stage", "model", "neurons", "calls", "sent", "prompt tok", "completion tok",
             "calls/neuron", "prompt/neuron", "compl./neuron", "$/neuron", "$ total"]
    for h in heads:
        t.add_column(h, justify="left" if h in ("stage", "model") else "right", no_wrap=True)
    for r in rows:
        per = r.per_neuron
        t.add_row(r.stage, r.model, str(r.neurons), f"{r.calls:,}", f"{r.sent:,}",
                  f"{r.prompt_tokens:,}", f"{r.completion_tokens:,}",
                  "—" if per is None else f"{per[0]:.1f}", "—" if per is None else f"{per[1]:,.0f}",
                  "—" if per is None else f"{per[2]:,.0f}",
                  "—" if per is None or per[3] is None else f"{per[3]:.6f}",
                  num(r.usd, "{:.4f}"))
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(t)
    return "\n".join(line.rstrip() for line in console.file.getvalue().splitlines())


def run(run_dir: Path) -> str:
    """`explain report --run DIR --cost`."""
    from explainer.views import cascade_cost

    from explainer.views import accept_cost

    rows = cost_rows(read_calls(run_dir))
    return "\n\n".join(p for p in (render(rows), cascade_cost.render(run_dir, rows),
                                   accept_cost.render(run_dir, rows)) if p)
