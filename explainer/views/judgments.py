"""One neuron's judgments (detection, fuzzing) for `explain show` and `explain view`.

Each judged excerpt is shown with its true label, the judge's answer line, P(yes) where the
endpoint gave one, and its status; fuzzing's highlighted tokens are marked as the judge saw them.
"""

from __future__ import annotations

import html
from pathlib import Path

from explainer import run as rundir
from explainer.views.formats import token_text

MAX_SHOWN = 40  # judgments per neuron on a page or in the terminal


def load(run: Path, mkey: str, layer: int, neuron: int) -> tuple[list[dict], dict]:
    """(the neuron's judgment rows, tokens of their excerpts by excerpt id)."""
    from explainer.views.neuron import rows_by_neuron

    rows = rows_by_neuron(rundir.read(run, "judgments", mkey, layer)).get(neuron, [])
    if not rows:
        return [], {}
    ids = {int(r["excerpt_id"]) for r in rows}
    ex = rundir.read(run, "excerpts", mkey)
    return rows, {int(e): list(t) for e, t in zip(ex["excerpt_id"], ex["tokens"]) if int(e) in ids}


def _ordered(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (r["method"], r["explainer"], r["candidate"], r["judge"],
                                       not r["label"], r["excerpt_id"]))[:MAX_SHOWN]


def label_text(r: dict) -> str:
    """The true label in words."""
    if r["method"] == "fuzzing":
        return "real highlights" if r["label"] else "decoy"
    return "activating" if r["label"] else "not activating"


def answer_text(r: dict) -> str:
    """The judge's answer, with P(yes) when known."""
    if r["status"] != "ok":
        return f"unreadable: {r['error'] or ''}"[:120]
    p = "" if r["probability"] is None else f" (P(yes) {r['probability']:.2f})"
    return ("yes" if r["prediction"] else "no") + p


def _marked(tokens: list[str], highlighted) -> list[tuple[str, bool]]:
    hl = set(highlighted or ())
    return [(token_text(t), i in hl) for i, t in enumerate(tokens)]


def renderables(rows: list[dict], tokens: dict) -> list:
    """Rich renderables for `explain show` (nothing when the neuron was not judged)."""
    if not rows:
        return []
    from rich.table import Table
    from rich.text import Text

    t = Table(title="Judgments (detection / fuzzing; highlighted tokens in bold)",
              title_justify="left", header_style="bold")
    for col in ("method", "explainer", "judge", "excerpt", "label", "answer", "text"):
        t.add_column(col, overflow="fold", ratio=5 if col == "text" else None)
    for r in _ordered(rows):
        text = Text()
        for word, on in _marked(tokens.get(int(r["excerpt_id"]), []), r["highlighted"]):
            text.append(word, style="bold reverse" if on else "")
        right = r["status"] == "ok" and r["prediction"] == r["label"]
        t.add_row(r["method"], f"{r['explainer']} c{r['candidate']}", r["judge"],
                  str(r["excerpt_id"]), label_text(r),
                  Text(answer_text(r), style="green" if right else "red"), text)
    return [t]


def section_html(rows: list[dict], tokens: dict) -> str:
    """The judgments section of a neuron page ('' when the neuron was not judged)."""
    if not rows:
        return ""
    body = []
    for r in _ordered(rows):
        spans = "".join(f'<mark>{html.escape(w)}</mark>' if on else html.escape(w)
                        for w, on in _marked(tokens.get(int(r["excerpt_id"]), []),
                                             r["highlighted"]))
        right = r["status"] == "ok" and r["prediction"] == r["label"]
        cells = [r["method"], f"{r['explainer']} c{r['candidate']}", r["judge"],
                 str(r["excerpt_id"]), label_text(r), answer_text(r)]
        body.append(f'<tr class="{"right" if right else "wrong"}">'
                    + "".join(f"<td>{html.escape(c)}</td>" for c in cells)
                    + f'<td class="tokens">{spans}</td></tr>')
    head = "".join(f"<th>{h}</th>" for h in ("method", "explanation", "judge", "excerpt",
                                             "label", "answer", "excerpt text"))
    return (f'<h2>Judgments</h2><div class="muted">Detection and fuzzing: what the judge said '
            f'about each held-out excerpt, given only the explanation.</div>'
            f'<table class="judgments"><tr>{head}</tr>{"".join(body)}</table>\n')


def into_page(page: str, rows: list[dict], tokens: dict) -> str:
    """A neuron page with the judgments section placed before its activations."""
    section = section_html(rows, tokens)
    anchor = "<h2>Activations</h2>"
    return page.replace(anchor, section + anchor, 1) if section and anchor in page else \
        page.replace("</body>", section + "</body>", 1)
