"""Generation and steering in the report and on the neuron page.

Report: rows for the specificity table (views/controls.py renders them beside simulation's). Each
neuron side's chosen explanation has an own row (`control = none`) and a shuffled one (another
neuron's explanation of its layer, side and explainer, `source_neuron`); generation compares
their AUROCs (own texts vs the length-matched windows, the source's texts vs windows cut to
theirs), steering their named tokens' gains on the same steered passes. Pairs are summarised by
`controls.summarize` (mean own - shuffled, paired bootstrap interval, verdict), with the method
in the `mode` column. A row whose status is not `ok` (too few texts, no token named) is left out
with its pair.

Neuron page: the texts the generator wrote for each chosen explanation, each token shaded by
the neuron's activation (scaled to the top excerpts' maximum), dropped lines with the reason, and
the steering gains.
"""

from __future__ import annotations

import html

import numpy as np

from explainer.views import controls
from explainer.views.formats import token_text

METHODS = ("generation", "steering")
# sim_prompt_hash: texts asked with other prompts or settings are never paired or pooled
KEY = ["model", "layer", "neuron", "side", "explainer", "simulator", "method", "sim_prompt_hash"]
MAX_TEXTS = 12  # texts shown per explanation and role on a page


def paired(scores):
    """One row per neuron side and (explainer, judge, method): own and shuffled (NaN when not
    ok), and `mode` = the method (the column controls.summarize groups on)."""
    import pandas as pd

    from explainer import run as rundir

    query = rundir.query
    cols = KEY + ["own", "shuffled", "mode"]
    out = []
    for method in METHODS:
        value = "gain" if method == "steering" else "score"
        own = query.judged(query.select(scores, method=method), KEY, (method,))
        shuf = query.select(scores, method=method, control=query.SHUFFLED)
        if own.empty or shuf.empty:
            continue
        m = own[KEY + [value, "status"]].merge(
            shuf.drop_duplicates(KEY, keep="last")[KEY + [value, "status"]], on=KEY,
            suffixes=("_own", "_shuf"))
        out.append(m.assign(own=_ok(m[f"{value}_own"], m["status_own"]),
                            shuffled=_ok(m[f"{value}_shuf"], m["status_shuf"]),
                            mode=method)[cols])
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=cols)


def _ok(values, status):
    """The values of rows whose status is ok, NaN elsewhere (too few texts, no token named)."""
    return np.where(status == "ok", values.astype(float), np.nan)


def aggregate(scores, models_meta: dict, by: str = "layer", seed: int = 0,
              n_boot: int = 2000) -> list[controls.ControlRow]:
    """Specificity rows of generation and steering per (model, layer) or per model."""
    p = paired(scores)
    if p.empty:
        return []
    out = []
    keys = ["explainer", "simulator", "mode", "sim_prompt_hash"]
    keys = keys if by == "model" else ["layer"] + keys
    for mkey in sorted(p["model"].unique()):
        name = models_meta.get(mkey, {}).get("model", mkey)
        for k, g in p[p["model"] == mkey].groupby(keys, sort=True):
            layer = None if by == "model" else k[0]
            explainer, judge, method, phash = k[-4:]
            # The method named beside the judge, so the table reads without a mode column.
            out.append(controls.summarize(g, name, layer, (explainer, f"{judge} ({method})",
                                                           method, phash), seed, n_boot))
    return out


# --- the neuron page -----------------------------------------------------------------------


def shown(gen_rows: list[dict], score_rows: list[dict]) -> list[tuple[dict, list[dict]]]:
    """(generation score row, its texts and windows) for each chosen explanation, the texts of
    the prompt and explanation the row was scored with, in order."""
    out = []
    for s in score_rows:
        if s.get("method") != "generation" or s.get("control", "none") != "none" or \
                not s.get("best"):
            continue
        mine = [g for g in gen_rows if g["explainer"] == s["explainer"]
                and g["candidate"] == s["candidate"] and g["side"] == s.get("side", "pos")
                and g["judge"] == s["simulator"] and g["prompt_hash"] == s["sim_prompt_hash"]
                and g["explanation_hash"] == s["explanation_hash"]]
        out.append((s, sorted(mine, key=lambda g: (g["role"] != "own", g["role"], g["index"]))))
    return out


def _spans(tokens, acts, top: float) -> str:
    out = []
    for t, a in zip(tokens or [], acts or []):
        alpha = 0.0 if top <= 0 else min(1.0, max(0.0, a) / top)
        out.append(f'<span class="tok" style="background:rgba(255,140,0,{alpha:.2f})" '
                   f'title="{a:.3f}">{html.escape(token_text(t))}</span>')
    return "".join(out)


def _num(x, fmt: str = ".3f") -> str:
    return "—" if x is None or x != x else format(x, fmt)


def section_html(gen_rows: list[dict], score_rows: list[dict], top: float) -> str:
    """The generation and steering section of a neuron page ('' when neither ran)."""
    parts = []
    for s, rows in shown(gen_rows, score_rows):
        head = (f'{html.escape(s["explainer"])} c{s["candidate"]} · {s.get("side", "pos")} side · '
                f'judge {html.escape(s["simulator"])} · AUROC vs windows {_num(s["score"])} · '
                f'vs another neuron\'s texts {_num(s.get("auroc_other"))} · MAD '
                f'{_num(s.get("mad"), ".2f")} · {s.get("n_kept")} of {s.get("n_written")} '
                f'texts kept · {html.escape(s["status"])}')
        body, n_shown = [], {}
        for g in rows:
            if g["role"] == "own" and g["status"] != "kept":
                body.append(f'<tr class="dropped"><td>{g["status"]}</td><td class="muted">'
                            f'{html.escape(g["text"] or "")}</td></tr>')
            elif n_shown.setdefault(g["role"], 0) < MAX_TEXTS:
                n_shown[g["role"]] += 1
                label = {"own": "text", "other": f'N{g["source_neuron"]}\'s text',
                         "window": f'window of excerpt {g["excerpt_id"]}'}[g["role"]]
                body.append(f'<tr data-role="{g["role"]}"><td>{html.escape(label)} · max '
                            f'{_num(g["max_activation"], ".3g")}</td><td class="tokens">'
                            f'{_spans(g["tokens"], g["activations"], top)}</td></tr>')
        parts.append(f'<h3>{html.escape(s["explanation"] or "")}</h3>'
                     f'<div class="muted">{head}</div><table class="generation">'
                     + "".join(body) + "</table>")
    steer = [s for s in score_rows if s.get("method") == "steering"]
    if steer:
        rows = "".join(
            f'<tr><td>{html.escape(s["explainer"])} c{s["candidate"]}</td>'
            f'<td>{s.get("side", "pos")}</td><td>{html.escape(s.get("control", "none"))}'
            f'{"" if s.get("control") != "shuffled" else " (N" + str(s["source_neuron"]) + ")"}'
            f'</td><td class="num">{_num(s.get("gain"))}</td><td class="num">'
            f'{_num(s["score"])}</td><td>{html.escape(s["status"])}</td>'
            f'<td>{html.escape(s["explanation"] or "")}</td></tr>' for s in steer)
        parts.append('<h3>Steering</h3><div class="muted">Mean gain in log-probability of the '
                     'tokens each explanation names when k x the neuron\'s mean top activation '
                     'is added at every position; score = own gain - a shuffled '
                     'explanation\'s.</div><table class="steering"><tr><th>explanation</th>'
                     '<th>side</th><th>control</th><th>gain</th><th>score</th><th>status</th>'
                     f'<th>text</th></tr>{rows}</table>')
    if not parts:
        return ""
    return ('<h2>Generation and steering</h2><div class="muted">Texts the judge wrote from '
            'the explanation, read by the subject model (shaded by this neuron\'s activation), '
            'with the control windows and another neuron\'s texts.</div>' + "".join(parts)
            + "\n")


def into_page(page: str, gen_rows: list[dict], score_rows: list[dict], top: float) -> str:
    """A neuron page with the generation section placed before its activations."""
    section = section_html(gen_rows, score_rows, top)
    anchor = "<h2>Activations</h2>"
    if not section:
        return page
    return page.replace(anchor, section + anchor, 1) if anchor in page else \
        page.replace("</body>", section + "</body>", 1)
