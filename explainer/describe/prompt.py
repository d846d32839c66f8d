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
from explainer.run.evidence import OutputTokens

SYSTEM = "explain_system.txt"
USER = "explain_user.txt"
NONZERO = "explain_nonzero.txt"
COMPLETION = "explain_completion.txt"
COMPLETION_SHOT = "explain_completion_shot.txt"
EXAMPLES = ("explain_example_1.txt", "explain_example_2.txt")
FILES = (SYSTEM, USER, NONZERO, COMPLETION, COMPLETION_SHOT, *EXAMPLES)
# With output-side evidence (--evidence outputs|both): what the neuron writes, listed as tokens.
OUT_SYSTEM = "explain_outputs_system.txt"
OUTPUTS = "explain_outputs.txt"
BOTH_USER = "explain_both_user.txt"
OUT_USER = "explain_outputs_user.txt"
EVIDENCE_FILES = {
    "inputs": FILES,
    "both": (SYSTEM, OUT_SYSTEM, BOTH_USER, NONZERO, OUTPUTS, COMPLETION, COMPLETION_SHOT,
             *EXAMPLES),
    # No few-shot turns: they show excerpts, which this variant does not.
    "outputs": (SYSTEM, OUT_SYSTEM, OUT_USER, OUTPUTS, COMPLETION),
}
# Below this share of non-zero tokens, each excerpt is repeated with its non-zero tokens only,
# which helps the explainer find a sparse neuron's trigger (REFERENCE.md).
SPARSE_SHARE = 0.2
MAX_CHARS = 300  # longer "explanations" are rambles, not one phrase

Excerpt = list[tuple[str, float]]


def prompt_hash(evidence: str = "inputs") -> str:
    """Hash of every prompt file describe uses with this evidence (chat and completion alike)."""
    return prompts.prompt_hash(*EVIDENCE_FILES[evidence])


def scale(excerpts: list[list[float]]) -> list[list[int]]:
    """Activations -> integers 0..10 per neuron; all zeros when nothing is positive."""
    m = max((a for acts in excerpts for a in acts), default=0.0)
    if not m > 0:
        return [[0] * len(acts) for acts in excerpts]
    return [[min(10, max(0, math.floor(10 * max(a, 0.0) / m))) for a in acts] for acts in excerpts]


def _listing(tokens: list[str], values: list[int], nonzero_only: bool = False) -> str:
    """One token a line, a tab and its value after each token above 0; a token at 0 stands
    alone. Most tokens are 0, and a bare line is 2 tokens where "token<TAB>0" is 4: a question
    of 5 excerpts is ~1,000 tokens instead of ~1,580 (SmolLM2's tokenizer), for the same
    information, which makes the embedded explainer's prompt pass 2x faster (its attention
    grows with the square of the length) and an endpoint's bill smaller."""
    lines = [f"{prompts.show_token(t)}\t{v}" if v > 0 else prompts.show_token(t)
             for t, v in zip(tokens, values) if v > 0 or not nonzero_only]
    return "\n".join(["<start>", *lines, "<end>"])


def question(excerpts: list[Excerpt], outputs: OutputTokens | None = None,
             evidence: str = "inputs") -> str:
    """The user message for one neuron: its excerpts, plus non-zero repeats when it is sparse;
    with output evidence, the tokens it promotes and suppresses (instead, or as well)."""
    if evidence == "outputs":
        return prompts.render(OUT_USER, outputs=output_listing(outputs))
    scaled = scale([[a for _, a in ex] for ex in excerpts])
    tokens = [[t for t, _ in ex] for ex in excerpts]
    body = "\n".join(_listing(t, v) for t, v in zip(tokens, scaled))
    n_tokens = sum(len(v) for v in scaled)
    n_nonzero = sum(1 for v in scaled for x in v if x > 0)
    nonzero = ""
    if n_tokens and n_nonzero / n_tokens < SPARSE_SHARE:
        nonzero = prompts.render(NONZERO, excerpts="\n".join(
            _listing(t, v, nonzero_only=True) for t, v in zip(tokens, scaled) if any(v)))
    if evidence == "both":
        return prompts.render(BOTH_USER, excerpts=body, nonzero=nonzero,
                              outputs=output_listing(outputs))
    return prompts.render(USER, excerpts=body, nonzero=nonzero)


def output_listing(outputs: OutputTokens) -> str:
    """The promoted and suppressed tokens, one `token<TAB>effect` line each, strongest first."""
    def lines(pairs):
        return "\n".join(f"{prompts.show_token(t)}\t{v:+.2f}" for t, v in pairs)

    return prompts.render(OUTPUTS, promoted=lines(outputs.promoted),
                          suppressed=lines(outputs.suppressed))


def system(evidence: str = "inputs") -> str:
    """The system prompt; output evidence adds a paragraph saying what the token lists mean."""
    text = prompts.load(SYSTEM).strip()
    if evidence != "inputs":
        text += "\n\n" + prompts.load(OUT_SYSTEM).strip()
    return text


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


def chat_messages(excerpts: list[Excerpt], outputs: OutputTokens | None = None,
                  evidence: str = "inputs") -> list[dict]:
    """System prompt, few-shot turns, then the neuron; no assistant prefill needed."""
    msgs = [{"role": "system", "content": system(evidence)}]
    for q, answer in (_shots() if evidence != "outputs" else ()):
        msgs.append({"role": "user", "content": q})
        msgs.append({"role": "assistant", "content": answer})
    msgs.append({"role": "user", "content": question(excerpts, outputs, evidence)})
    return msgs


def completion_prompt(excerpts: list[Excerpt], outputs: OutputTokens | None = None,
                      evidence: str = "inputs") -> str:
    """The same content as one text for completion models; the answer ends at a newline."""
    shots = "".join(prompts.render(COMPLETION_SHOT, question=q, answer=answer)
                    for q, answer in (_shots() if evidence != "outputs" else ()))
    return prompts.render(COMPLETION, system=system(evidence), examples=shots,
                          question=question(excerpts, outputs, evidence))


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
