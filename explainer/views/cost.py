"""`explain report --cost`: what each stage's LLM calls cost, per neuron, from the run's ledger.

Read from the `calls` table of `llm.sqlite` (the ledger every LLM stage writes). Rows group by
(stage, model): `describe` rows are per explainer, `simulate` rows per simulator, `judge-detection`
and `judge-fuzzing` per judge; a stage that adds a level (e.g. a cascade) only needs its own stage
name. Each distinct request counts once, whether it was sent or read from the cache, so the
figures are what the method costs, not what this particular (resumed) run happened to pay.
Neurons are read off the call keys (`L<layer>/N<neuron>/...`); probes have no neuron. Dollars use
`explainer/llm/prices.json` (0 for the embedded model, unknown for a model without a price).
"""

from __future__ import annotations

import io
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from explainer import ExplainError

_NEURON = re.compile(r"^L(\d+)/N(\d+)\b")
ANSWERED = ("ok", "unusable")  # rows that carry an answer (failed attempts carry none)


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
    """Rows of (stage, key, request, model, host, prompt_tokens, completion_tokens, cached,
    status) -> one CostRow per (stage, model), sorted."""
    from explainer.llm.ledger import cost_usd

    groups: dict[tuple, dict] = {}
    for stage, key, request, model, host, pt, ct, cached, status in calls:
        if status not in ANSWERED:
            continue
        g = groups.setdefault((stage or "", model or ""), {"neurons": set(), "req": {},
                                                            "sent": set(), "free": False})
        m = _NEURON.match(key or "")
        if m:
            g["neurons"].add((int(m.group(1)), int(m.group(2))))
        g["req"].setdefault(request, (int(pt or 0), int(ct or 0)))
        if not cached:
            g["sent"].add(request)
        g["free"] = g["free"] or str(host or "").startswith("embedded:")
    out = []
    for (stage, model), g in sorted(groups.items()):
        pt = sum(p for p, _ in g["req"].values())
        ct = sum(c for _, c in g["req"].values())
        out.append(CostRow(stage, model, len(g["neurons"]), len(g["req"]), len(g["sent"]),
                           pt, ct, cost_usd(model, pt, ct, free=g["free"])))
    return out


def read_calls(run: Path) -> list[tuple]:
    """The ledger's rows, read-only (an ExplainError when the run has no ledger)."""
    path = Path(run) / "llm.sqlite"
    if not path.exists():
        raise ExplainError(f"--run {run}: has no llm.sqlite (no LLM call was made in this run)")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute("SELECT stage, key, request, model, host, prompt_tokens, "
                          "completion_tokens, cached, status FROM calls").fetchall()
    finally:
        db.close()


def render(rows: list[CostRow], width: int = 200) -> str:
    """The cost table as plain text."""
    from rich.console import Console
    from rich.table import Table

    from explainer.views.formats import num

    t = Table(title="LLM cost per neuron, by stage and model (from llm.sqlite)",
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

    rows = cost_rows(read_calls(run_dir))
    return "\n\n".join(p for p in (render(rows), cascade_cost.render(run_dir, rows)) if p)
