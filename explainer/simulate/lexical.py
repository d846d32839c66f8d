"""The `baseline-lexical` simulator: predicts activations from the words an explanation names.

It is the simulator counterpart of the `baseline-tokens` explainer: a floor any LLM simulator must
beat, and a judge that costs nothing (no model, no prompt, thousands of neurons per second). It is
not the paper's method, which asks an LLM for the expected activation at each token.

A token scores 10 x the weight of the best term it matches: quoted strings weigh 1.0, content
words 0.6 (0.3 beside quoted strings, which are then the explanation's real subject), sub-word
pieces of a term word half the term's weight. Token and term are compared after `normalise`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from collections.abc import Sequence

QUOTED_WEIGHT = 1.0
WORD_WEIGHT = 0.6  # content words when the explanation quotes nothing
WORD_BESIDE_QUOTES_WEIGHT = 0.3  # content words when quoted strings carry the subject
PIECE_SHARE = 0.5  # a sub-word piece (" dict" of "dictionary") gets half its term's weight
MIN_PIECE_CHARS = 3  # shorter pieces (" d", " di") match too many words to mean anything

# One alternative per quote style, so that matches come out in reading order. Straight double
# quotes allow backslash escapes: the baseline-tokens explainer writes a '"' token as "\"".
# A straight single quote only opens after a non-word character, so "don't" quotes nothing.
_QUOTED = re.compile(
    r'"((?:\\.|[^"\\])*)"'
    r"|“([^”]*)”"
    r"|‘([^’]*)’"
    r"|«([^»]*)»"
    r"|`([^`]*)`"
    r"|(?<!\w)'([^'\n]+?)'(?!\w)"
)
_ESCAPE = re.compile(r"\\(.)")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r"}
_WORD = re.compile(r"[^\W_]+")  # letters and digits; hyphens and apostrophes split words
_EDGE_PUNCT = re.compile(r"^[\W_]+|[\W_]+$")
# Space markers of byte-level BPE (GPT-2: "Ġ" space, "Ċ" newline) and SentencePiece ("▁").
_SPACE = " \t\n\r\x0b\x0c\u00a0Ġ▁Ċ"
_DOUBLED_KEEP = frozenset("lsz")  # "called", "missed": the doubled letter belongs to the stem

# Words that carry no subject: English stop words, and the vocabulary explanations use to talk
# about tokens rather than name them. Listed in every form, so no stemming is needed to look up.
_STOP = frozenset("""
a about above after again against all also am an and any are aren as at be because been before
being below between both but by can could did do does doing done down during each either etc
even ever every few for from further had has have having he her here hers him his how however i
if in into is isn it its itself just least less many may me might more most much must my no nor
not now of off on once one only or other others our out over own per same she should since so
some such than that the their them then there these they this those though through thus to too
under until up upon us very via was we were what when where whether which while who whom whose
why will with within without would yet you your
don doesn didn wasn weren hasn haven hadn couldn shouldn wouldn
eg e g ie i.e e.g vs
neuron neurons fire fires firing fired activate activates activated activating activation
activations mention mentions mentioned mentioning related relating relates relation
like likely especially including include includes included particularly particular specific
specifically various variety different typically usually often mostly mainly primarily generally
commonly sometimes certain similar kind kinds sort sorts
token tokens word words phrase phrases term terms reference references referring refers refer
text texts context contexts concept concepts instance instances occurrence occurrences
appearance appearances appear appears appearing form forms variant variants variation variations
part parts piece pieces sequence sequences pattern patterns usage use used uses using
contain contains containing containment following followed preceding preceded
something things thing stuff item items example examples
""".split())


@dataclass(frozen=True)
class Term:
    """One thing an explanation names, which a token may match."""

    text: str
    """Normalised: words joined by single spaces, or the punctuation itself ("(", ",")."""
    weight: float
    """How sure the explanation is about it: 1.0 quoted, less for content words."""
    quoted: bool
    """Whether the explanation quoted it (quoted phrases must match in sequence)."""


@dataclass(frozen=True)
class _Matcher:
    """An explanation's terms, indexed for the per-token lookups in `predict`."""

    words: dict[str, float]  # normalised single word or punctuation -> best weight
    phrases: tuple[tuple[tuple[str, ...], float], ...]  # multi-word quoted terms, in order
    prefixes: dict[str, tuple[str, float]]  # strict prefix (>= 3 chars) -> (word, weight)


def normalise(token: str) -> str:
    """A token or word as compared: case-folded, spaces, markers and edge punctuation stripped, stemmed."""
    return _forms(token)[0]


def terms(explanation: str) -> tuple[Term, ...]:
    """The words an explanation names: quoted strings first (weight 1.0), then content words."""
    return _terms(explanation if isinstance(explanation, str) else "")


def predict(explanation: str, tokens: Sequence[str]) -> list[float]:
    """Simulated activation (0..10) of each token: 10 x the weight of the best term it matches."""
    tokens = [t if isinstance(t, str) else str(t) for t in tokens]
    n = len(tokens)
    if not n:
        return []
    m = _matcher(explanation if isinstance(explanation, str) else "")
    if not (m.words or m.phrases):
        return [0.0] * n
    forms = [_forms(t) for t in tokens]
    keys = [key or bare for key, _, bare in forms]  # punctuation-only tokens compare as themselves
    weights = [0.0] * n
    for i, (_, plain, _) in enumerate(forms):
        w = m.words.get(keys[i], 0.0)
        # A stop word is never a piece: " the" is not the start of "theory".
        if len(plain) >= MIN_PIECE_CHARS and plain in m.prefixes and plain not in _STOP:
            w = max(w, _mark_pieces(m.prefixes[plain], tokens, forms, i, weights))
        if w > weights[i]:
            weights[i] = w
    for phrase, w in m.phrases:
        _mark_phrase(phrase, w, keys, weights)
    return [10.0 * w for w in weights]


def _mark_pieces(entry: tuple[str, float], tokens: list[str], forms: list, i: int,
                 weights: list[float]) -> float:
    """Half weight for token i, a word's first piece, and for the pieces that continue the word."""
    word, w = entry
    w *= PIECE_SHARE
    text = forms[i][1]
    for j in range(i + 1, len(tokens)):
        tok = tokens[j]
        if not tok or tok[0] in _SPACE:  # a new word starts: the piece run is over
            break
        text += tok.casefold()
        if not word.startswith(text):
            break
        weights[j] = max(weights[j], w)
        if text == word:
            break
    return w


def _mark_phrase(phrase: tuple[str, ...], w: float, keys: list[str], weights: list[float]) -> None:
    """Give weight w to each token of every run of consecutive tokens that spells the phrase."""
    k = len(phrase)
    first = phrase[0]
    for i in range(len(keys) - k + 1):
        if keys[i] == first and keys[i + 1:i + k] == list(phrase[1:]):
            for d in range(k):
                if w > weights[i + d]:
                    weights[i + d] = w


@lru_cache(maxsize=1 << 16)
def _forms(token: str) -> tuple[str, str, str]:
    """(key, plain, bare): stemmed word, unstemmed word, and the token with only spaces stripped.

    Cached: a subject model's vocabulary is finite, so after warm-up this is one dict lookup.
    """
    bare = token.strip(_SPACE).casefold()
    plain = _EDGE_PUNCT.sub("", bare)
    return _stem(plain), plain, bare


def _stem(word: str) -> str:
    """Fold plural, -ed, -ing and -ly endings, then a final e: deterministic, not linguistic.

    Both sides go through it, so only consistency matters: apple/apples/Apple -> "appl",
    type/types/typed/typing -> "typ", dictionary/dictionaries -> "dictionary".
    """
    if not word.isalpha() or len(word) < 3:
        return word
    if word.endswith("ies") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith("sses"):
        word = word[:-2]
    elif word.endswith(("xes", "ches", "shes")):
        word = word[:-2]
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")) and len(word) > 3:
        word = word[:-1]
    if word.endswith("ied") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith("ed") and len(word) >= 5:
        word = _undouble(word[:-2])
    elif word.endswith("ing") and len(word) >= 6:
        word = _undouble(word[:-3])
    elif word.endswith("ly") and len(word) >= 6:
        word = word[:-2]
    if word.endswith("e") and len(word) >= 4:
        word = word[:-1]
    return word


def _undouble(stem: str) -> str:
    """stopp -> stop, runn -> run; but call, miss stay."""
    if len(stem) >= 3 and stem[-1] == stem[-2] and stem[-1] not in "aeiou" and stem[-1] not in _DOUBLED_KEEP:
        return stem[:-1]
    return stem


def _unescape(text: str) -> str:
    return _ESCAPE.sub(lambda m: _ESCAPES.get(m.group(1), m.group(1)), text)


def _quoted_term(raw: str) -> str:
    """A quoted string's term text: its normalised words, or its punctuation if it has no words."""
    # Each whitespace-separated word is one key; a punctuation-only one stays itself ("(", ",").
    return " ".join(_forms(w)[0] or _forms(w)[2] for w in raw.split())


@lru_cache(maxsize=1 << 14)
def _terms(explanation: str) -> tuple[Term, ...]:
    found: dict[str, Term] = {}
    for m in _QUOTED.finditer(explanation):
        raw = next(g for g in m.groups() if g is not None)
        text = _quoted_term(_unescape(raw) if m.group(1) is not None else raw)
        if text and text not in found:
            found[text] = Term(text, QUOTED_WEIGHT, True)
    weight = WORD_BESIDE_QUOTES_WEIGHT if found else WORD_WEIGHT
    outside = _QUOTED.sub(" ", explanation)
    for w in _WORD.findall(outside):
        lower = w.casefold()
        if len(lower) < 2 or lower in _STOP:
            continue
        text = _forms(lower)[0]
        if text not in found:
            found[text] = Term(text, weight, False)
    return tuple(found.values())


@lru_cache(maxsize=1 << 14)
def _matcher(explanation: str) -> _Matcher:
    words: dict[str, float] = {}
    phrases: list[tuple[tuple[str, ...], float]] = []
    prefixes: dict[str, tuple[str, float]] = {}
    for t in _terms(explanation):
        parts = tuple(t.text.split(" "))
        if len(parts) > 1:
            phrases.append((parts, t.weight))
            continue
        words[t.text] = max(words.get(t.text, 0.0), t.weight)
    # Pieces are prefixes of the word as written, not of its stem: " dict" of "dictionary".
    for word, w in _surface_words(explanation):
        for k in range(MIN_PIECE_CHARS, len(word)):
            if prefixes.get(word[:k], ("", 0.0))[1] < w:
                prefixes[word[:k]] = (word, w)
    return _Matcher(words, tuple(phrases), prefixes)


def _surface_words(explanation: str) -> list[tuple[str, float]]:
    """The single-word terms as written (case-folded, unstemmed), with their weights."""
    by_key = {t.text: t.weight for t in _terms(explanation)}
    out = []
    for m in _QUOTED.finditer(explanation):
        raw = next(g for g in m.groups() if g is not None)
        parts = raw.split()
        if len(parts) == 1:
            plain = _forms(parts[0])[1]
            if plain.isalnum() and _forms(plain)[0] in by_key:
                out.append((plain, by_key[_forms(plain)[0]]))
    for w in _WORD.findall(_QUOTED.sub(" ", explanation)):
        plain = w.casefold()
        key = _forms(plain)[0]
        if plain not in _STOP and len(plain) >= 2 and key in by_key:
            out.append((plain, by_key[key]))
    return out
