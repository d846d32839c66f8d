"""`explain report --cost`, cascade part: per level of an `explain describe --cascade` run, the
neurons it handled, its calls, tokens and dollars (describe:LN + simulate:LN + revise:LN in the
ledger), its mean valid score, and the kept explanations' mean test score and total cost.

The choice is redone from the stored scores with the rule the cascade used
(`score.cascade.choose_level`, settings from run.json's `cascades`), so the two always agree.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from explainer import run as rundir
from explainer.score.metrics import mean_defined
from explainer.views.formats import num

# judge-<method>:LN accepts a level, score:LN is its kept explanations' final scoring
# (cascade_accept.py; views/accept_cost.py splits the parts)
_LEVEL = re.compile(r"^(describe|simulate|revise|judge-\w+|score):L(\d+)$")


def _level_costs(rows) -> dict[int, dict]:
    """Sum the cost view's (stage, model) rows per cascade level."""
    out: dict[int, dict] = {}
    for r in rows:
        m = _LEVEL.match(r.stage)
        if not m:
            continue
        g = out.setdefault(int(m.group(2)), {"calls": 0, "prompt": 0, "completion": 0,
                                              "usd": 0.0, "neurons": 0})
        g["calls"] += r.calls
        g["prompt"] += r.prompt_tokens
        g["completion"] += r.completion_tokens
        g["usd"] = None if g["usd"] is None or r.usd is None else g["usd"] + r.usd
        if m.group(1) == "describe":
            g["neurons"] = max(g["neurons"], r.neurons)
    return out


def _scores(run_dir: Path, model: str, entry: dict, split: str) -> list[dict]:
    """Per level: {(layer, side, neuron): counted score} of the level's best explanation."""
    from explainer.score.metrics import counted

    sc = rundir.query.read_scores(run_dir, model)
    out = []
    for mine in rundir.query.cascade_levels(sc, entry["levels"], entry["simulator"],
                                            entry["sim_prompt_hash"], split):
        out.append({(int(la), sd, int(n)): counted(None if s != s else float(s), st)
                    for la, sd, n, s, st in zip(mine["layer"], mine["side"], mine["neuron"],
                                                mine["score"], mine["status"])})
    return out


def render(run_dir: Path, rows) -> str:
    """The cascade table(s), or '' when the run holds no cascade."""
    from explainer.score.cascade import choose_level

    cascades = rundir.read_run_json(run_dir).get("cascades") or {}
    costs = _level_costs(rows)
    parts = []
    for model, entry in sorted(cascades.items()):
        valid, test = (_scores(run_dir, model, entry, s) for s in ("valid", "test"))
        keys = set().union(*valid)
        chosen = {k: choose_level([v.get(k) for v in valid], entry["accept"]) for k in keys}
        lines = [f"cascade of {model} (accept {entry['accept']}, simulator {entry['simulator']})",
                 f"{'level':<6} {'explainer':<24} {'neurons':>7} {'calls':>7} {'prompt tok':>11} "
                 f"{'compl. tok':>10} {'$/neuron':>10} {'mean valid':>10} {'kept':>5} "
                 f"{'test (kept)':>11}"]
        total, n_all = 0.0, len(keys)
        for i, label in enumerate(entry["levels"]):
            c = costs.get(i + 1, {"calls": 0, "prompt": 0, "completion": 0, "usd": 0.0,
                                  "neurons": 0})
            kept = [k for k, j in chosen.items() if j == i]
            kt = [test[i][k] for k in kept if test[i].get(k) is not None]
            per = "—" if c["usd"] is None or not c["neurons"] else f"{c['usd'] / c['neurons']:.6f}"
            total = math.nan if c["usd"] is None else total + c["usd"]
            lines.append(f"L{i + 1:<5} {label:<24} {len(valid[i]):>7} {c['calls']:>7,} "
                         f"{c['prompt']:>11,} {c['completion']:>10,} {per:>10} "
                         f"{_mean(valid[i].values()):>10} {len(kept):>5} {_mean(kt):>11}")
        tests = [test[j][k] for k, j in chosen.items() if j is not None and test[j].get(k) is not None]
        per_all = "—" if not n_all or math.isnan(total) else f"{total / n_all:.6f}"
        lines.append(f"{'kept':<6} {'(the cascade)':<24} {n_all:>7} {'':>7} {'':>11} {'':>10} "
                     f"{per_all:>10} {'':>10} {len(tests):>5} {_mean(tests):>11}")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _mean(values) -> str:
    """The mean of the defined values, formatted (an em dash when none is defined)."""
    return num(mean_defined(list(values))[0])
