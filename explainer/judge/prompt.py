"""The judge's prompts and the reading of its answers: pure functions, no I/O but prompt files.

One prompt carries several numbered excerpts; the judge answers one `number: yes|no` line per
excerpt. Each excerpt's answer is read on its own: a missing, repeated-and-contradicting or
unreadable line fails that excerpt with a reason, and no label is ever guessed. Where the
endpoint returned `top_logprobs`, P(yes) is read at the yes/no token of the excerpt's line.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

from explainer import prompts

METHODS = ("detection", "fuzzing")
OPEN, CLOSE = "<<", ">>"  # how fuzzing marks the highlighted tokens
_LINE = re.compile(r"^[ \t>*#\-]*(?:excerpt\s*)?(\d+)\s*[:.)\t\-]?[ \t*]*(yes|no)\b",
                   re.IGNORECASE | re.MULTILINE)


def files(method: str) -> tuple[str, str, str]:
    """The (system, user, worked example) prompt files of a method."""
    return (f"judge_{method}_system.txt", f"judge_{method}_user.txt",
            f"judge_{method}_example.txt")


def prompt_hash(method: str, settings: str = "") -> str:
    """12 hex of the method's prompt files, plus the sampling settings that shape its prompts."""
    import hashlib

    base = prompts.prompt_hash(*files(method))
    return base if not settings else hashlib.sha256(f"{base}|{settings}".encode()).hexdigest()[:12]


def excerpt_text(tokens: Sequence[str], highlighted: Sequence[int] | None = None) -> str:
    """An excerpt on one line (tokens escaped by `show_token`); runs of highlighted tokens are
    wrapped in << >> as one span."""
    marked = set(highlighted or ())
    out: list[str] = []
    for i, tok in enumerate(tokens):
        if i in marked and i - 1 not in marked:
            out.append(OPEN)
        out.append(prompts.show_token(tok))
        if i in marked and i + 1 not in marked:
            out.append(CLOSE)
    return "".join(out)


def messages(method: str, explanation: str,
             excerpts: Sequence[tuple[Sequence[str], Sequence[int] | None]]) -> list[dict]:
    """The chat messages asking about `excerpts` ((tokens, highlighted positions or None))."""
    system, user, example = files(method)
    listing = "\n".join(f"{k}) {excerpt_text(toks, hl)}"
                        for k, (toks, hl) in enumerate(excerpts, start=1))
    # One worked exchange first: small models copy its answer format far more reliably.
    shot, _, answer = prompts.load(example).partition("\n=====\n")
    return [{"role": "system", "content": prompts.load(system).strip()},
            {"role": "user", "content": shot.strip()},
            {"role": "assistant", "content": answer.strip()},
            {"role": "user", "content": prompts.render(user, explanation=explanation,
                                                       excerpts=listing,
                                                       n=len(excerpts)).strip()}]


def max_tokens(n: int) -> int:
    """Room for n answer lines (~4 tokens each: number, colon, word, newline) and some slack."""
    return 6 * n + 16


@dataclass(frozen=True)
class Answer:
    """The judge's answer on one excerpt."""

    prediction: bool | None  # None when it could not be read
    probability: float | None  # P(yes), from top_logprobs
    line: str | None  # the answer line as written
    error: str | None


def _think_end(text: str) -> int:
    """Where the answer starts: after a reasoning model's closing </think>, if any."""
    end = text.rfind("</think>")
    return 0 if end < 0 else end + len("</think>")


def parse(text: str, n: int, logprobs=None) -> list[Answer]:
    """One Answer per excerpt 1..n from the judge's reply (`logprobs`: Completion.chat_logprobs)."""
    found: dict[int, list[tuple[bool, int, str]]] = {}
    start = _think_end(text)
    for m in _LINE.finditer(text, start):
        k = int(m.group(1))
        if 1 <= k <= n:
            line = text[m.start():text.find("\n", m.start()) % (len(text) + 1)].strip()
            found.setdefault(k, []).append((m.group(2).lower() == "yes", m.start(2), line))
    spans = _token_spans(text, logprobs)
    out = []
    for k in range(1, n + 1):
        got = found.get(k, [])
        if not got:
            out.append(Answer(None, None, None, f"no answer line for excerpt {k}: "
                              f"{text[start:][:80]!r}"))
        elif len({yes for yes, _, _ in got}) > 1:
            out.append(Answer(None, None, got[0][2], f"excerpt {k} answered both yes and no"))
        else:
            yes, pos, line = got[0]
            out.append(Answer(yes, _p_yes(spans, pos), line, None))
    return out


def _token_spans(text: str, logprobs) -> list[tuple[int, int, str, list]] | None:
    """(start, end, token, alternatives) of each answer token, or None when the tokens do not
    spell the text (then no probability can be placed)."""
    if not logprobs:
        return None
    spans, pos = [], 0
    for tok, lp, alts in logprobs:
        spans.append((pos, pos + len(tok), tok, [(tok, lp)] + list(alts)))
        pos += len(tok)
    return spans if "".join(t for _, _, t, _ in spans) == text else None


def _p_yes(spans, pos: int) -> float | None:
    """P(yes) / (P(yes) + P(no)) over the alternatives of the token holding the word at `pos`."""
    if spans is None:
        return None
    for a, b, tok, alts in spans:
        if a <= pos < b:
            if tok.strip().lower() not in ("yes", "no"):
                return None  # the word shares its token with other text: no clean reading
            mass = {"yes": 0.0, "no": 0.0}
            seen = set()
            for t, lp in alts:
                word = t.strip().lower()
                if word in mass and t not in seen:
                    seen.add(t)
                    mass[word] += math.exp(lp)
            total = mass["yes"] + mass["no"]
            return mass["yes"] / total if total > 0 else None
    return None
