"""Simulator prompts (built from the files in prompts/) and the parsers of simulator answers.

Pure: text in, text or numbers out; no I/O beyond reading prompt files, no LLM. `simulate.py`
sends what these build and hands the answers back here.

Value format: the simulator writes activations as one digit 0-9. Many tokenizers (SmolLM2's,
Llama's, Qwen's) split "10" into "1" + "0", so a 0-10 scale cannot be read from one position;
every single digit is one token for every tokenizer we know. Predictions are stored on the 0-10
scale the explainer sees (`TO_DISPLAY`); correlations do not depend on that factor.

Alignment: predictions belong to the subject model's tokens by their position in the list we
sent, never by re-tokenising: the logprob parser finds each value slot by its character offset in
the prompt, the chat parser by the index written in each answer line.

A value slot whose returned alternatives hold no digit predicts 0, as the paper's reference code
does (the expected value over the digits present, none of them): a small simulator puts its mass
elsewhere at a slot or two of most excerpts, and failing the whole excerpt for one slot left
such simulators with no score at all. Such slots are counted (`Parsed.no_digit`, the
simulations' `n_no_digit` column, the scores' `no_digit_share`); `strict` keeps the old rule.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from explainer import prompts

VALUES = tuple(str(v) for v in range(10))  # the value tokens, in value order
TO_DISPLAY = 10.0 / 9.0  # prompt scale 0-9 -> stored scale 0-10
PLACEHOLDER = "unknown"  # the value slot of a token whose activation the simulator predicts
# The embedded simulator's value slot: nothing between the tab and the newline. Its tokenizer
# keeps both separate, so a listing line is 3 tokens instead of 4 (the demo's simulation: 21%
# fewer tokens, 17% less time) and the row read is still the tab's. Endpoints keep the paper's
# "unknown": an unknown tokenizer may merge a tab with a newline (REFERENCE.md).
EMPTY_SLOT = ""
FILES = ("simulate_logprob", "simulate_logprob_shot", "simulate_chat_system",
         "simulate_chat_user", "simulate_examples")
MERGED_FILE = "simulate_chat_user_many"  # the chat user turn listing K excerpts at once


@dataclass(frozen=True)
class Example:
    """One few-shot example: an explanation and a token list with activations 0-9."""

    explanation: str
    tokens: tuple[str, ...]  # as the simulator sees them (already escaped)
    values: tuple[int, ...]


@dataclass(frozen=True)
class LogprobPrompt:
    """An all-at-once prompt and the character offset of every token's value slot."""

    text: str
    offsets: tuple[int, ...]  # offsets[k]: where token k's value slot starts in `text`
    slot: str = PLACEHOLDER  # what stands in each value slot


@dataclass(frozen=True)
class Parsed:
    """Predicted activations for every subject token (0-10 scale), or why there are none."""

    predicted: list[float] | None
    error: str | None
    mode: str  # logprob | chat-logprob | chat
    no_digit: tuple[int, ...] = ()  # slots with no digit among the alternatives (predicted 0)
    # why there are no predictions: "transport" (no answer: retried on the next run) or
    # "answer" (an answer that cannot be read: deterministic, cached, never re-sent)
    failure: str = ""


TRANSPORT, ANSWER = "transport", "answer"  # the kinds of `Parsed.failure`


def prompt_hash(excerpts_per_prompt: int = 1, slot: str = PLACEHOLDER) -> str:
    """12 hex identifying the simulator prompt files (and K, when K excerpts share a prompt;
    and the value slot, when it is not PLACEHOLDER).

    K = 1 keeps the hash of the paper's one-excerpt format; any other K hashes the merged
    format's file and K too, so predictions made K at a time are never mixed with others;
    likewise predictions read at another value slot.
    """
    import hashlib

    if excerpts_per_prompt == 1:
        base = prompts.prompt_hash(*FILES)
    else:
        base = prompts.prompt_hash(*FILES, MERGED_FILE)
        base = hashlib.sha256(f"{base}/k={excerpts_per_prompt}".encode()).hexdigest()[:12]
    if slot == PLACEHOLDER:
        return base
    return hashlib.sha256(f"{base}/slot={slot!r}".encode()).hexdigest()[:12]


def load_examples() -> list[Example]:
    """The few-shot examples of prompts/simulate_examples.txt."""
    text = prompts.load("simulate_examples")
    out = []
    for block in text.split("\n---\n")[1:]:
        lines = [ln for ln in block.split("\n") if ln and not ln.startswith("#")]
        explanation = lines[0].removeprefix("explanation:").strip()
        pairs = [ln.rsplit("\t", 1) for ln in lines[1:]]
        out.append(Example(explanation, tuple(t for t, _ in pairs), tuple(int(v) for _, v in pairs)))
    return out


def logprob_prompt(explanation: str, tokens: Sequence[str], examples: Sequence[Example],
                   slot: str = PLACEHOLDER) -> LogprobPrompt:
    """The all-at-once prompt: few-shot listings with values, then `tokens` with value slots."""
    return logprob_prompt_many(explanation, [tokens], examples, slot)


def logprob_prompt_many(explanation: str, excerpts: Sequence[Sequence[str]],
                        examples: Sequence[Example], slot: str = PLACEHOLDER) -> LogprobPrompt:
    """One prompt for K excerpts of one neuron: the few-shot preamble once, then each excerpt
    as its own block, shaped like a few-shot block ("Neuron: ...", <start>, listing, <end>).

    With one excerpt this is exactly the paper's one-excerpt prompt. `offsets` runs over the
    excerpts' tokens in order; `split_parsed` cuts the predictions back per excerpt. `slot` is
    what stands where each value would be (PLACEHOLDER, or EMPTY_SLOT for the embedded model);
    an offset is where it starts, right after the tab.
    """
    shots = "".join(
        prompts.fill(prompts.load("simulate_logprob_shot"), "simulate_logprob_shot",
                     explanation=ex.explanation,
                     listing="".join(f"{t}\t{v}\n" for t, v in zip(ex.tokens, ex.values)))
        for ex in examples)
    head = prompts.render("simulate_logprob", examples=shots, explanation=explanation.strip())
    parts, offsets, pos = [head], [], len(head)
    # The shot file's block boundary, written out: the end of one block, the next one's head.
    between = f"<end>\n\nNeuron: {explanation.strip()}\n<start>\n"
    for j, tokens in enumerate(excerpts):
        if j:
            parts.append(between)
            pos += len(between)
        for tok in tokens:
            line = f"{prompts.show_token(tok)}\t"
            offsets.append(pos + len(line))
            line += f"{slot}\n"
            parts.append(line)
            pos += len(line)
    parts.append("<end>\n")
    return LogprobPrompt("".join(parts), tuple(offsets), slot)


def split_parsed(parsed: Parsed, lengths: Sequence[int]) -> list[Parsed]:
    """A merged prompt's predictions cut back into one Parsed per excerpt (by position); a
    failed prompt fails each of its excerpts with the same reason."""
    if parsed.predicted is None or len(parsed.predicted) != sum(lengths):
        why = parsed.error or f"{len(parsed.predicted or ())} predictions for {sum(lengths)} tokens"
        return [Parsed(None, why, parsed.mode, failure=parsed.failure or ANSWER)
                for _ in lengths]
    out, start = [], 0
    for n in lengths:
        out.append(Parsed(list(parsed.predicted[start:start + n]), None, parsed.mode,
                          tuple(k - start for k in parsed.no_digit if start <= k < start + n)))
        start += n
    return out


def expected_value(alternatives: Iterable[tuple[str, float]]) -> float | None:
    """Expected value (0-10 scale) over the value tokens among (token, logprob) alternatives.

    Renormalised over the values present, as published; None when no value token is present.
    """
    mass = [0.0] * len(VALUES)
    for tok, lp in alternatives:
        t = tok.strip()
        if t in VALUES and lp is not None and math.isfinite(lp):
            mass[int(t)] += math.exp(lp)
    total = sum(mass)
    if total <= 0.0:
        return None
    return TO_DISPLAY * sum(v * m for v, m in enumerate(mass)) / total


def parse_echo(prompt: LogprobPrompt, tokens: Sequence[str] | None,
               top_logprobs: Sequence[Mapping[str, float] | None] | None,
               text_offset: Sequence[int] | None, *, shift: int,
               strict: bool = False) -> Parsed:
    """Predictions from an echoed prompt's top log-probabilities at every value slot.

    `shift` is the endpoint's convention, probed once (llm/probe.py `echo_shift`): the
    distribution that predicted prompt token i sits at row i - shift (0: OpenAI, vLLM; 1:
    llama-cpp-python without BOS). It is never guessed from the answer: on number-heavy
    excerpts the rows beside a slot can hold more digit mass than the slot's own.
    A slot with no digit among its alternatives predicts 0 and is listed in `no_digit`;
    `strict` fails the excerpt there instead (`--strict-values`).
    """
    if not tokens or top_logprobs is None or text_offset is None:
        return Parsed(None, "the endpoint returned no prompt log-probabilities", "logprob",
                      failure=ANSWER)
    index = {}
    for i, off in enumerate(text_offset):
        index.setdefault(off, i)
    slots = []
    first = (prompt.slot + "\n")[0]  # the slot's token begins with it (an empty one: newline)
    for k, off in enumerate(prompt.offsets):
        i = index.get(off)
        if i is None or not tokens[i].startswith(first):
            return Parsed(None, f"token {k}: the simulator's tokenizer merged its value slot "
                                "with a neighbour", "logprob", failure=ANSWER)
        slots.append(i)
    out, none = [], []
    for k, i in enumerate(slots):
        top = top_logprobs[i - shift] if i - shift >= 0 else None
        ev = expected_value((top or {}).items())
        if ev is None and strict:
            return Parsed(None, f"token {k}: no value 0-9 among the top log-probabilities",
                          "logprob", failure=ANSWER)
        if ev is None:  # the reference's expected value over no digit: 0
            none.append(k)
        out.append(0.0 if ev is None else ev)
    return Parsed(out, None, "logprob", tuple(none))


def failure_note(failures: Mapping[str, int], mode: str) -> str:
    """The closing words on failed excerpts: which kind is retried, which is not, and what to
    change. `failures`: excerpts per `Parsed.failure` kind."""
    parts = []
    if failures.get(TRANSPORT):
        parts.append(f"{failures[TRANSPORT]} got no answer (transport errors): they are "
                     "retried on the next run")
    if failures.get(ANSWER):
        other = "--mode chat" if mode == "logprob" else "--mode logprob"
        parts.append(f"{failures[ANSWER]} got an answer that cannot be read: it is cached and "
                     f"a rerun reads the same answer again without re-sending it; try {other} "
                     "or another --simulator model")
    return "; ".join(parts)


def chat_listing(tokens: Sequence[str]) -> str:
    """Tokens numbered from 0, one per line, for the chat simulator."""
    return "\n".join(f"{k}\t{prompts.show_token(t)}" for k, t in enumerate(tokens))


def chat_messages(explanation: str, tokens: Sequence[str],
                  examples: Sequence[Example]) -> list[dict]:
    """The chat simulator's messages: instructions, few-shot turns, then the excerpt."""
    def user(expl, toks):
        return {"role": "user", "content": prompts.render(
            "simulate_chat_user", explanation=expl.strip(), n_tokens=len(toks),
            last=len(toks) - 1, listing=chat_listing(toks))}

    msgs = [{"role": "system", "content": prompts.load("simulate_chat_system").strip()}]
    for ex in examples:
        msgs.append(user(ex.explanation, ex.tokens))
        msgs.append({"role": "assistant",
                     "content": "\n".join(f"{k}\t{v}" for k, v in enumerate(ex.values))})
    msgs.append(user(explanation, tokens))
    return msgs


def chat_messages_many(explanation: str, excerpts: Sequence[Sequence[str]],
                       examples: Sequence[Example]) -> list[dict]:
    """The chat simulator's messages for K excerpts of one neuron: the same instructions and
    few-shot turns once, then one user turn numbering the excerpts' tokens 0..N-1 across all
    of them (a "# excerpt j" line opens each excerpt), so `parse_chat(text, N)` reads it."""
    if len(excerpts) == 1:
        return chat_messages(explanation, excerpts[0], examples)
    msgs = chat_messages(explanation, [], examples)[:-1]
    lines, k = [], 0
    for j, tokens in enumerate(excerpts):
        lines.append(f"# excerpt {j + 1}")
        for t in tokens:
            lines.append(f"{k}\t{prompts.show_token(t)}")
            k += 1
    msgs.append({"role": "user", "content": prompts.render(
        MERGED_FILE, explanation=explanation.strip(), n_excerpts=len(excerpts), n_tokens=k,
        last=k - 1, listing="\n".join(lines))})
    return msgs


# "index<sep>value" with a separator (or whitespace): else "10" reads as token 1, value 0.
_LINE = re.compile(r"^[ \t>*-]*(\d+)(?:\s*[\t:=,|]\s*|\s+)(\d+)\s*$")


def parse_chat(text: str, n: int,
               logprobs: Sequence[tuple[str, float, Sequence[tuple[str, float]]]] | None = None
               ) -> Parsed:
    """Predictions from a chat answer of lines "index<TAB>value", one per subject token.

    Where the answer's token log-probabilities came back and a value is one token, predict the
    expected value over its alternatives; otherwise the stated value. Every index 0..n-1 must
    appear exactly once; anything else fails the excerpt (no value is ever made up).
    """
    starts = _token_starts(text, logprobs)
    values: dict[int, float] = {}
    used_lp = False
    pos = 0
    for line in text.split("\n"):
        m = _LINE.match(line)
        if m:
            k, v = int(m.group(1)), int(m.group(2))
            if k in values:
                return Parsed(None, f"answer gives token {k} twice", "chat")
            if not 0 <= v <= 9:
                return Parsed(None, f"answer gives token {k} the value {v}, outside 0-9", "chat")
            ev = None
            j = starts.get(pos + m.start(2)) if starts else None
            if j is not None and logprobs[j][0].strip() == m.group(2):
                alts = dict(logprobs[j][2])  # usually holds the chosen token too
                alts.setdefault(logprobs[j][0], logprobs[j][1])
                ev = expected_value(alts.items())
            used_lp |= ev is not None
            values[k] = ev if ev is not None else TO_DISPLAY * v
        pos += len(line) + 1
    mode = "chat-logprob" if used_lp else "chat"
    if not values:
        return Parsed(None, f"no 'index<TAB>value' lines in the answer: {text[:60]!r}", mode)
    missing = [k for k in range(n) if k not in values]
    extra = sorted(k for k in values if k >= n)
    if missing or extra:
        what = f"misses {len(missing)} of {n} tokens (first {missing[0]})" if missing else \
            f"names token {extra[0]} beyond the last ({n - 1})"
        return Parsed(None, f"answer {what}", mode)
    return Parsed([values[k] for k in range(n)], None, mode)


def _token_starts(text: str, logprobs) -> dict[int, int] | None:
    # Character offset -> index of the answer token starting there, when the tokens spell `text`.
    if not logprobs:
        return None
    starts, pos = {}, 0
    for j, (tok, _, _) in enumerate(logprobs):
        starts[pos + (len(tok) - len(tok.lstrip()))] = j
        pos += len(tok)
    return starts if pos == len(text) else None
