"""Generation's texts: the prompt that asks for them, the reading of the answer, and which of
the texts are kept. Pure functions, no I/O but prompt files.

The generator is asked for N sentences, one a line, each using a word the explanation quotes as
written (a worked example whose every line does so comes first). Whether a text holds a named
word is never a reason to keep or drop it: that would decide the score. A small generator
often writes *about* the explanation ('The token "by" is present in the first sentence.')
instead of an example of it, repeats itself, or answers with a bare word; those texts would
measure the generator, not the explanation, so each line gets a status and only `kept` ones are
read by the subject:

* empty: nothing left after numbering, bullets, a short label ("river: ") and quotes are
  stripped, or a preamble ("Here are ten sentences:");
* short: fewer than MIN_WORDS words (a bare token or number is not a text);
* restates: the explanation itself (three words or more) inside the text, a text made only of
  the explanation's own words, or a text that talks about text: a word such as "token",
  "sentence" or "explanation" together with a quoted span holding a word of the explanation;
* copied: mostly the words of a text of the worked example (a small generator copies it;
  word-set overlap, Jaccard, of COPIED or more with one of its lines);
* duplicate: the same words (case and punctuation aside) as a text kept before it;
* extra: kept texts past the N asked for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from explainer import prompts

SYSTEM, USER, EXAMPLE = "generate_system.txt", "generate_user.txt", "generate_example.txt"
MIN_WORDS = 3
COPIED = 0.5  # word-set overlap with a worked-example line from which a text counts as a copy
TOKENS_PER_TEXT = 32  # answer room per text asked for (one sentence)
# Sampled, seeded: greedy, the embedded 135M model repeated one line to max_tokens on most
# explanations (a third of the lines duplicates); at 0.5 it still looped, at 0.7 it kept 5 or
# more texts on 7 of 8 trial explanations.
TEMPERATURE = 0.7
KEPT = "kept"
# Words a text uses when it describes text instead of being one.
META = {"token", "tokens", "sentence", "sentences", "explanation", "description", "neuron",
        "neurons", "example", "examples", "phrase", "phrases", "word", "words", "text", "texts",
        "letter", "letters", "quote", "quoted"}
_BULLET = re.compile(r"^\s*(?:[-*•>#]+|\(?\d+[.):\]]|[a-z][.)])\s*", re.IGNORECASE)
# The word a line is written for, before the text: 'river: The river rose.' (one to three
# words, maybe quoted, then a colon and a space). The prompt asks for it because a small model
# copies a word it has just written far more often than one it read in the description.
_LABEL = re.compile(r"^[\"'“]?[^\s:\"“”]{1,30}(?:\s[^\s:\"“”]{1,30}){0,2}[\"'”]?"
                    r"\s*:\s+(?=\S)")
_QUOTED = re.compile(r"[\"“”«»]([^\"“”«»]+)[\"“”«»]|(?<!\w)'([^']+)'(?!\w)")
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")


@dataclass(frozen=True)
class Text:
    """One line of the generator's answer, cleaned, with whether it is kept and why not."""

    text: str
    status: str  # kept | empty | short | restates | copied | duplicate | extra


def prompt_hash(settings: str = "") -> str:
    """12 hex of the generation prompt files, plus the settings that shape what is scored."""
    import hashlib

    base = prompts.prompt_hash(SYSTEM, USER, EXAMPLE)
    return base if not settings else hashlib.sha256(f"{base}|{settings}".encode()).hexdigest()[:12]


def messages(explanation: str, n: int) -> list[dict]:
    """The chat messages asking for n texts exemplifying the explanation."""
    # One worked exchange first: a small model copies its one-text-a-line format.
    shot, _, answer = prompts.load(EXAMPLE).partition("\n=====\n")
    return [{"role": "system", "content": prompts.load(SYSTEM).strip()},
            {"role": "user", "content": shot.strip()},
            {"role": "assistant", "content": answer.strip()},
            {"role": "user", "content": prompts.render(USER, explanation=explanation,
                                                       n=n).strip()}]


def max_tokens(n: int) -> int:
    return TOKENS_PER_TEXT * n + 16


def example_texts() -> list[str]:
    """The texts of the worked example's answer (what a copy is compared with)."""
    return [_clean(ln) for ln in prompts.load(EXAMPLE).partition("\n=====\n")[2].splitlines()
            if ln.strip()]


def copied(text: str, examples: Sequence[str]) -> bool:
    t = set(words(text))
    for ex in examples:
        e = set(words(ex))
        if t and e and len(t & e) / len(t | e) >= COPIED:
            return True
    return False


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def _clean(line: str) -> str:
    line = _BULLET.sub("", line.strip()).strip()
    line = _LABEL.sub("", line, count=1)
    if len(line) >= 2 and line[0] in "\"“'" and line[-1] in "\"”'":  # one quoted whole line
        line = line[1:-1].strip()
    return line


def restates(text: str, explanation: str) -> bool:
    """Whether a text is about the explanation rather than an example of it (module doc)."""
    t, e = words(text), words(explanation)
    if len(e) >= 3 and " ".join(e) in " ".join(t):
        return True
    if t and set(t) <= set(e):
        return True
    named = {w for q in quoted(explanation) for w in words(q)} | set(e)
    return bool(set(t) & META) and any(set(words(q)) & named for q in quoted(text))


def screen(answers: Sequence[str], explanation: str, n: int,
           examples: Sequence[str] = ()) -> list[Text]:
    """Every line of the answers (several asks, in order) with its status; at most n kept
    (`examples`: the worked example's texts, whose copies are dropped)."""
    out: list[Text] = []
    seen: set[tuple[str, ...]] = set()
    n_kept = 0
    for answer in answers:
        end = answer.rfind("</think>")  # a reasoning model's thoughts are not texts
        for raw in answer[end + len("</think>") if end >= 0 else 0:].splitlines():
            text = _clean(raw)
            w = tuple(words(text))
            if not raw.strip():
                continue  # blank separator lines are not counted as texts written
            if not w or text.endswith(":"):
                status = "empty"
            elif len(w) < MIN_WORDS:
                status = "short"
            elif restates(text, explanation):
                status = "restates"
            elif copied(text, examples):
                status = "copied"
            elif w in seen:
                status = "duplicate"
            elif n_kept >= n:
                status = "extra"
            else:
                status = KEPT
                n_kept += 1
            seen.add(w)
            out.append(Text(text, status))
    return out


def quoted(explanation: str) -> list[str]:
    """The quoted spans of an explanation, in order, each once ('"an" and "a"' -> an, a)."""
    out: list[str] = []
    for m in _QUOTED.finditer(explanation):
        span = m.group(1) if m.group(1) is not None else m.group(2)
        if span.strip() and span not in out:
            out.append(span)
    return out
