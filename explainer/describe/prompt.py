"""What the explainer sees and what we keep of its answer: pure functions, no I/O but prompt files.

An excerpt is a list of (token, activation) pairs. Activations are shown as integers 0-10 scaled
per neuron (REFERENCE.md, Activation display): v = floor(10 * max(a, 0) / m), m the maximum over
the excerpts shown.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache

from explainer import prompts

SYSTEM = "explain_system.txt"
USER = "explain_user.txt"
NONZERO = "explain_nonzero.txt"
COMPLETION = "explain_completion.txt"
COMPLETION_SHOT = "explain_completion_shot.txt"
EXAMPLES = ("explain_example_1.txt", "explain_example_2.txt")
FILES = (SYSTEM, USER, NONZERO, COMPLETION, COMPLETION_SHOT, *EXAMPLES)
# Below this share of non-zero tokens, each excerpt is repeated with its non-zero tokens only,
# which helps the explainer find a sparse neuron's trigger (REFERENCE.md).
SPARSE_SHARE = 0.2
MAX_CHARS = 300  # longer "explanations" are rambles, not one phrase

Excerpt = list[tuple[str, float]]


def prompt_hash() -> str:
    """Hash of every prompt file describe uses (chat and completion forms alike)."""
    return prompts.prompt_hash(*FILES)


def scale(excerpts: list[list[float]]) -> list[list[int]]:
    """Activations -> integers 0..10 per neuron; all zeros when nothing is positive."""
    m = max((a for acts in excerpts for a in acts), default=0.0)
    if not m > 0:
        return [[0] * len(acts) for acts in excerpts]
    return [[min(10, max(0, math.floor(10 * max(a, 0.0) / m))) for a in acts] for acts in excerpts]


def _listing(tokens: list[str], values: list[int], nonzero_only: bool = False) -> str:
    lines = [f"{prompts.show_token(t)}\t{v}" for t, v in zip(tokens, values) if v > 0 or not nonzero_only]
    return "\n".join(["<start>", *lines, "<end>"])


def question(excerpts: list[Excerpt]) -> str:
    """The user message for one neuron: its excerpts, plus non-zero repeats when it is sparse."""
    scaled = scale([[a for _, a in ex] for ex in excerpts])
    tokens = [[t for t, _ in ex] for ex in excerpts]
    body = "\n".join(_listing(t, v) for t, v in zip(tokens, scaled))
    n_tokens = sum(len(v) for v in scaled)
    n_nonzero = sum(1 for v in scaled for x in v if x > 0)
    nonzero = ""
    if n_tokens and n_nonzero / n_tokens < SPARSE_SHARE:
        nonzero = prompts.render(NONZERO, excerpts="\n".join(
            _listing(t, v, nonzero_only=True) for t, v in zip(tokens, scaled) if any(v)))
    return prompts.render(USER, excerpts=body, nonzero=nonzero)


@lru_cache(maxsize=8)
def _example(name: str) -> tuple[tuple[tuple[tuple[str, float], ...], ...], str]:
    """A few-shot file: excerpts of `token<TAB>value` lines framed by <start>/<end>, '=> answer'."""
    excerpts, current, answer = [], None, None
    for line in prompts.load(name).splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line == "<start>":
            current = []
        elif line == "<end>":
            excerpts.append(tuple(current))
            current = None
        elif line.startswith("=> "):
            answer = line[3:].strip()
        elif current is not None and "\t" in line:
            tok, value = line.rsplit("\t", 1)
            current.append((tok, float(value)))
    if not excerpts or not answer:
        raise ValueError(f"few-shot file {name} needs <start>/<end> excerpts and a '=> ' answer")
    return tuple(excerpts), answer


def examples() -> list[tuple[list[Excerpt], str]]:
    """The few-shot examples as (excerpts, answer)."""
    return [([list(ex) for ex in excerpts], answer)
            for excerpts, answer in (_example(n) for n in EXAMPLES)]


@lru_cache(maxsize=1)
def _shots() -> tuple[tuple[str, str], ...]:
    # The few-shot questions are the same for every neuron: render them once per process.
    return tuple((question(ex), answer) for ex, answer in examples())


def chat_messages(excerpts: list[Excerpt]) -> list[dict]:
    """System prompt, few-shot turns, then the neuron; no assistant prefill needed."""
    msgs = [{"role": "system", "content": prompts.load(SYSTEM).strip()}]
    for q, answer in _shots():
        msgs.append({"role": "user", "content": q})
        msgs.append({"role": "assistant", "content": answer})
    msgs.append({"role": "user", "content": question(excerpts)})
    return msgs


def completion_prompt(excerpts: list[Excerpt]) -> str:
    """The same content as one text for completion models; the answer ends at a newline."""
    shots = "".join(prompts.render(COMPLETION_SHOT, question=q, answer=answer)
                    for q, answer in _shots())
    return prompts.render(COMPLETION, system=prompts.load(SYSTEM).strip(), examples=shots,
                          question=question(excerpts))


_THINK = re.compile(r"<think>.*?(</think>|$)", re.S | re.I)
_LABEL = re.compile(r"^(explanation|answer|response|this neuron fires on)\s*:\s*", re.I)
_LIST = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)]|\(\d+\))\s+")
_NEURON = re.compile(r"^(?:this|the) neuron (?:mainly |mostly |primarily |strongly )?"
                     r"(?:fires|activates|responds|reacts|is active)(?: strongly)? "
                     r"(?:on|to|for)\s+", re.I)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_QUOTES = "\"'`\u201c\u201d\u2018\u2019*_ "
_REFUSAL = re.compile(r"^(i'm sorry|i am sorry|i cannot|i can't|as an ai)", re.I)


def parse_explanation(text: str) -> str | None:
    """One clean phrase from an answer, or None when nothing usable is in it."""
    text = _THINK.sub("", text or "")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # Drop preambles such as "Sure! Here is the explanation:" that only introduce the answer.
    while len(lines) > 1 and lines[0].endswith(":"):
        lines.pop(0)
    if not lines:
        return None
    line = lines[0]
    for _ in range(3):  # labels, list markers and quotes may come in any order
        line = _LIST.sub("", _LABEL.sub("", line)).strip(_QUOTES)
    line = _NEURON.sub("", line)
    line = _SENTENCE_END.split(line, maxsplit=1)[0]
    line = line.strip().rstrip(".").strip(_QUOTES).rstrip(".").strip()
    if (len(line) < 2 or len(line) > MAX_CHARS or not re.search(r"[A-Za-z]", line)
            or _REFUSAL.match(line)):
        return None
    return line
