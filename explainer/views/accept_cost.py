"""`explain report --cost`, cascade spend by part: per level, what describing, accepting (the
judge, or the valid-split simulation when simulation decides) and the kept explanations' final
scoring cost, from the ledger's stage names (cascade_accept.py): describe:LN, revise:LN ->
describe; judge-<method>:LN, simulate:LN -> accept; score:LN -> final.
"""

from __future__ import annotations

import re

from explainer import run as rundir

_STAGE = re.compile(r"^(describe|revise|judge-\w+|simulate|score):L(\d+)$")
PARTS = ("describe", "accept", "final")


def part_of(stage: str) -> tuple[str, int] | None:
    """(part, level) of a cascade stage name; None for a stage outside a cascade."""
    m = _STAGE.match(stage)
    if not m:
        return None
    kind = m.group(1)
    part = "describe" if kind in ("describe", "revise") else \
        "final" if kind == "score" else "accept"
    return part, int(m.group(2))


def split(rows) -> dict[int, dict[str, float | None]]:
    """{level: {part: dollars}} from the cost view's (stage, model) rows; None where a model
    has no price."""
    out: dict[int, dict[str, float | None]] = {}
    for r in rows:
        got = part_of(r.stage)
        if got is None:
            continue
        part, level = got
        g = out.setdefault(level, dict.fromkeys(PARTS, 0.0))
        g[part] = None if g[part] is None or r.usd is None else g[part] + r.usd
    return out


def render(run_dir, rows) -> str:
    """The table, or '' when the run's ledger holds no cascade level. Rows start `L1:`, `L2:`,
`all:`, apart from the level table's `L1`, `L2`, `kept`."""
    parts = split(rows)
    if not parts:
        return ""
    cascades = rundir.read_run_json(run_dir).get("cascades") or {}
    labels = next(iter(cascades.values()), {}).get("levels", []) if len(cascades) == 1 else []
    by = {e.get("accept_by", "simulation") for e in cascades.values()} or {"simulation"}
    fmt = lambda v: "—" if v is None else f"{v:.6f}"  # noqa: E731
    lines = [f"cascade spend by part (accepted by {', '.join(sorted(by))}; $)",
             f"{'level':<6} {'explainer':<24} {'describe $':>12} {'accept $':>12} "
             f"{'final $':>12} {'total $':>12}"]
    totals = dict.fromkeys(PARTS, 0.0)
    for level in sorted(parts):
        g = parts[level]
        label = labels[level - 1] if level - 1 < len(labels) else "?"
        tot = None if None in g.values() else sum(g.values())
        for p in PARTS:
            totals[p] = None if totals[p] is None or g[p] is None else totals[p] + g[p]
        lines.append(f"{f'L{level}:':<6} {label:<24} {fmt(g['describe']):>12} {fmt(g['accept']):>12} "
                     f"{fmt(g['final']):>12} {fmt(tot):>12}")
    all_ = None if None in totals.values() else sum(totals.values())
    lines.append(f"{'all:':<6} {'':<24} {fmt(totals['describe']):>12} {fmt(totals['accept']):>12} "
                 f"{fmt(totals['final']):>12} {fmt(all_):>12}")
    return "\n".join(lines)
