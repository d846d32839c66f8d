"""Puzzles data: the shipped puzzles obey their written rules, and bad files fail with one sentence.

Each shipped puzzle's true explanation is restated here as a small predicate over (tokens, i), and
one of its false explanations likewise; the data must match the true predicate on every token, and
the false one must fire where the truth is silent in at least two passages, so the puzzles really
tell the true explanation from a wrong one.
"""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from explainer import ExplainError
from explainer.puzzles import data

PUZZLES = data.load()
BY_NAME = {p.name: p for p in PUZZLES}
ENDS = {".", "?", "!"}


# --- rules, restated from each explanation --------------------------------------------------


def _w(tok):
    return tok.strip().lower()


def _word(tok):
    return any(c.isalpha() for c in tok)


def _words(text):
    return frozenset(text.split())


def _lex(words):
    return lambda toks, i: _w(toks[i]) in words


def _after(*marks):
    return lambda toks, i: i > 0 and _w(toks[i - 1]) in marks and _word(toks[i])


def _before(*words):
    return lambda toks, i: i + 1 < len(toks) and _w(toks[i + 1]) in words


def _quoted(toks, i):
    return sum('"' in t for t in toks[:i]) % 2 == 1


def _bracketed(toks, i):
    depth = sum(t.strip() == "(" for t in toks[:i]) - sum(t.strip() == ")" for t in toks[:i])
    return depth > 0 and toks[i].strip() not in {"(", ")", ""}


_KEYWORDS = _words("def return for in if else while import class and or not True False None "
                   "raise")


def _in_code(toks, i):
    # Code is either a whole passage of code or an inline `span` inside prose.
    if any(t.strip() == "`" for t in toks):
        return sum(t.strip() == "`" for t in toks[:i]) % 2 == 1
    return toks[0] in _KEYWORDS or any(t.strip() == "=" for t in toks)


def _identifier(toks, i):
    return re.fullmatch(r"[A-Za-z_]\w*", toks[i].strip()) is not None


def _sentence_ends_with(toks, i, mark):
    end = next((t.strip() for t in toks[i:] if t.strip() in ENDS), None)
    return end == mark


_COLOURS = _words("red blue green yellow purple black white grey brown pink")
_ART = _COLOURS | _words("painted paint painter artist brush canvas gallery")
_DAYS = _words("monday tuesday wednesday thursday friday saturday sunday")
_TIME = _DAYS | _words("march april may summer tomorrow weekend week morning day nights")
_ANIMALS = _words("horse cat dog owl fox rabbit whales sheep goats")
_PETS = _ANIMALS | _words("farmer barn leash collar pet cage stable")
_NUMBERS = _words("one two three four five six seven eight nine ten eleven twelve twenty "
                  "hundred thousand")
_AMOUNTS = _NUMBERS | _words("several many few most some all")
_NEG_STRONG = _words("not never 't")
_NEG_WEAK = _words("no nobody nothing none neither nor")
_GLOOM = _NEG_STRONG | _NEG_WEAK | _words("awful sad lonely terrible hate worst")
_SUPERLATIVES = _words("coldest highest longest tallest best cheapest smallest biggest easiest")
_BODY = _words("neck ears arm knee hands elbows shoulders finger")
_WORN = _BODY | _words("scarf hat gloves coat boots shirt ring")
_VERBS = _words("see heard stop answers send like work walked swam went remember tried touch "
                "park cook")
_COUNTED = _words("soldiers people pages dollars points")
_RIVER = _words("river stream canoe flood boat water fishermen ducks")
_LIKERS = _words("i you we they really cats 't")
_QUESTION_WORDS = _words("who what why where when how which")
_UNITS = _words("grams miles minutes metres hours")
_QUANTITIES = _words("many some most few plenty much all each lot")
_COMPARATIVES = _words("longer shorter colder rather better cheaper faster more less higher "
                       "harder easier")
_TO_WORDS = _words("want going needs decided had hope tried")

# name -> (true activation of tokens[i], a false explanation's firing predicate)
RULES = {
    "colour-words": (_lex(_COLOURS), _lex(_ART)),
    "days-of-the-week": (_lex(_DAYS), _lex(_TIME)),
    "animal-names": (_lex(_ANIMALS), _lex(_PETS)),
    "number-words": (_lex(_NUMBERS), _lex(_AMOUNTS)),
    "negation-words": (lambda t, i: (10 if _w(t[i]) in _NEG_STRONG
                                     else 5 if _w(t[i]) in _NEG_WEAK else 0), _lex(_GLOOM)),
    "superlatives": (_lex(_SUPERLATIVES), lambda t, i: _w(t[i]).endswith("est")),
    "body-parts": (_lex(_BODY), _lex(_WORN)),
    "negated-verbs": (lambda t, i: _after("not", "'t", "never")(t, i) and _w(t[i]) in _VERBS,
                      _lex(_VERBS)),
    "years": (lambda t, i: (re.fullmatch(r"1\d{3}|20\d{2}", t[i].strip()) is not None
                            and not _before(*_COUNTED)(t, i)),
              lambda t, i: re.fullmatch(r"\d{4}", t[i].strip()) is not None),
    "code-identifiers": (lambda t, i: (_identifier(t, i) and t[i].strip() not in _KEYWORDS
                                       and _in_code(t, i)),
                         lambda t, i: _identifier(t, i) and _in_code(t, i)),
    "quoted-speech": (lambda t, i: _word(t[i]) and _quoted(t, i),
                      _lex(_words("said asked replied shouted whispered"))),
    "river-bank": (lambda t, i: _w(t[i]) in {"bank", "banks"} and any(_w(x) in _RIVER for x in t),
                   _lex({"bank", "banks"})),
    "like-as-verb": (lambda t, i: _w(t[i]) == "like" and _after(*_LIKERS)(t, i),
                     _lex({"like"})),
    "question-sentences": (lambda t, i: _word(t[i]) and _sentence_ends_with(t, i, "?"),
                           _lex(_QUESTION_WORDS)),
    "after-the": (_after("the"), _lex({"the"})),
    # A passage that opens in lower case opens mid-sentence.
    "sentence-start": (lambda t, i: _word(t[i]) and (t[i - 1].strip() in ENDS if i else
                                                     t[i][0].isupper()),
                       lambda t, i: t[i].strip()[:1].isupper()),
    "sentence-end": (lambda t, i: _word(t[i]) and _before(*ENDS)(t, i),
                     lambda t, i: _word(t[i]) and _before(*ENDS, ",")(t, i)),
    "after-comma": (_after(","), _after(",", "and")),
    "after-number": (lambda t, i: i > 0 and t[i - 1].strip().isdigit() and _word(t[i]),
                     _lex(_UNITS)),
    "after-open-bracket": (_after("("), lambda t, i: _word(t[i]) and _bracketed(t, i)),
    "after-colon": (_after(":"),
                    lambda t, i: _word(t[i]) and (i == 0 or t[i - 1].strip() in ENDS)),
    "before-an": (_before("an"), _before("a", "an")),
    "before-closing-bracket": (_before(")"), _bracketed),
    "before-of": (_before("of"), _lex(_QUANTITIES)),
    "before-than": (_before("than"), _lex(_COMPARATIVES)),
    "before-to": (_before("to"), _lex(_TO_WORDS)),
    # The call's "(" follows the name with no space; prose " (" has one, and is no call.
    "before-call-bracket": (lambda t, i: i + 1 < len(t) and t[i + 1] == "(", _lex(_KEYWORDS)),
    "before-question-mark": (_before("?"), lambda t, i: _word(t[i]) and _before(*ENDS)(t, i)),
}


# --- the shipped file -------------------------------------------------------------------------


def test_shipped_file_has_enough_puzzles_of_every_category():
    assert len(PUZZLES) >= 20
    counts = Counter(p.category for p in PUZZLES)
    assert set(counts) == set(data.CATEGORIES)
    assert min(counts.values()) >= 4, counts
    assert len(BY_NAME) == len(PUZZLES)  # names unique
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", p.name) for p in PUZZLES)


def test_load_returns_frozen_typed_records():
    p = PUZZLES[0]
    assert isinstance(p.false_explanations, tuple) and isinstance(p.passages, tuple)
    assert isinstance(p.passages[0].tokens, tuple)
    assert all(isinstance(a, float) for a in p.passages[0].activations)
    with pytest.raises(AttributeError):
        p.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize("puzzle", PUZZLES, ids=lambda p: p.name)
def test_puzzle_shape(puzzle):
    assert 2 <= len(puzzle.false_explanations) <= 4
    assert len(set(puzzle.false_explanations)) == len(puzzle.false_explanations)
    assert puzzle.explanation not in puzzle.false_explanations
    assert 6 <= len(puzzle.passages) <= 12
    for passage in puzzle.passages:
        assert 8 <= len(passage.tokens) <= 30, passage.tokens
        assert all(a == int(a) for a in passage.activations)  # the 0..10 scale is integral
    firing = [max(p.activations) > 0 for p in puzzle.passages]
    assert sum(firing) >= 2, "too few passages show the neuron firing"
    assert not all(firing), "no passage shows the neuron silent"


def test_tokens_follow_the_leading_space_convention():
    later_words = bare = 0
    for puzzle in PUZZLES:
        for passage in puzzle.passages:
            first = passage.tokens[0]
            assert first == first.lstrip(" "), (puzzle.name, first)
            assert all(passage.tokens), (puzzle.name, passage.tokens)
            for tok in passage.tokens[1:]:
                if tok.strip()[:1].isalpha():
                    later_words += 1
                    bare += tok[0].isalpha()  # no leading space: after a bracket, quote, code
    assert later_words > 1000
    assert bare / later_words < 0.1, f"{bare} of {later_words} later words lack a space"


def test_every_shipped_puzzle_has_a_restated_rule():
    assert set(RULES) == set(BY_NAME)


@pytest.mark.parametrize("name", sorted(RULES))
def test_activations_follow_the_true_rule_exactly(name):
    true_rule, _ = RULES[name]
    for j, passage in enumerate(BY_NAME[name].passages, start=1):
        # A predicate's True is a full firing (10); a graded rule returns the number itself.
        got = [true_rule(passage.tokens, i) for i in range(len(passage.tokens))]
        want = [float(10 * v if isinstance(v, bool) else v) for v in got]
        assert list(passage.activations) == want, (j, passage.tokens)


@pytest.mark.parametrize("name", sorted(RULES))
def test_a_false_explanation_fires_where_the_truth_is_silent(name):
    _, false_rule = RULES[name]
    misled = [j for j, p in enumerate(BY_NAME[name].passages)
              if any(false_rule(p.tokens, i) and p.activations[i] == 0
                     for i in range(len(p.tokens)))]
    assert len(misled) >= 2, f"{name}: only passages {misled} tell the false rule apart"


def _firing_and_silent_types(puzzle):
    firing, silent = set(), set()
    for p in puzzle.passages:
        for tok, act in zip(p.tokens, p.activations):
            (firing if act > 0 else silent).add(_w(tok))
    return firing, silent


@pytest.mark.parametrize("puzzle", [p for p in PUZZLES if p.category == "lexical"],
                         ids=lambda p: p.name)
def test_lexical_puzzles_depend_on_the_token_alone(puzzle):
    values: dict[str, set[float]] = {}
    for p in puzzle.passages:
        for tok, act in zip(p.tokens, p.activations):
            values.setdefault(_w(tok), set()).add(act)
    assert all(len(v) == 1 for v in values.values()), {k: v for k, v in values.items()
                                                       if len(v) > 1}
    firing, silent = _firing_and_silent_types(puzzle)
    assert firing and silent - firing


@pytest.mark.parametrize("puzzle", [p for p in PUZZLES if p.category == "contextual"],
                         ids=lambda p: p.name)
def test_contextual_puzzles_have_a_token_that_fires_only_in_context(puzzle):
    firing, silent = _firing_and_silent_types(puzzle)
    assert firing & silent, "every firing word always fires: the rule is lexical"


# --- validation errors -----------------------------------------------------------------------


def _good():
    return {"name": "tiny", "category": "lexical", "explanation": "the word 'cat'",
            "false_explanations": ["animal names"],
            "passages": [{"tokens": ["The", " cat", " sat", "."], "activations": [0, 10, 0, 0]}]}


def _write(tmp_path, body, name="bad.json"):
    path = tmp_path / name
    path.write_text(body if isinstance(body, str) else json.dumps(body), encoding="utf-8")
    return path


def _file(*puzzles, fmt=1):
    return {"format": fmt, "puzzles": list(puzzles)}


def _with(**changes):
    p = _good()
    p.update(changes)
    return p


def _passage(tokens, acts):
    return _with(passages=[{"tokens": tokens, "activations": acts}])


def test_a_small_good_file_loads(tmp_path):
    [p] = data.load(_write(tmp_path, _file(_good())))
    assert p == data.Puzzle("tiny", "lexical", "the word 'cat'", ("animal names",),
                            (data.Passage(("The", " cat", " sat", "."), (0.0, 10.0, 0.0, 0.0)),))


@pytest.mark.parametrize("body, words", [
    ("{not json", ["bad.json", "not valid JSON"]),
    (_file(_good(), fmt=2), ["bad.json", "format is 2", '"format": 1']),
    ([1, 2], ["bad.json", "format is 'list'"]),
    ({"format": 1, "puzzles": []}, ["bad.json", "non-empty list"]),
    (_file(_good(), _good()), ["puzzle name 'tiny' is used twice"]),
    (_file(_good(), "oops"), ["puzzle 2 is a str"]),
    (_file(_with(name="")), ["puzzle 1 has no name"]),
    (_file(_with(category="semantic")), ["puzzle 'tiny'", "category 'semantic'",
                                         "lexical, contextual, positional, predictive"]),
    (_file(_with(explanation=" ")), ["puzzle 'tiny' has no explanation"]),
    (_file(_with(false_explanations=[])), ["puzzle 'tiny' has false_explanations 0",
                                           "1 to 4"]),
    (_file(_with(false_explanations=list("abcde"))), ["false_explanations 5", "1 to 4"]),
    (_file(_with(false_explanations="animals")), ["false_explanations str", "1 to 4"]),
    (_file(_with(passages=[])), ["puzzle 'tiny' has no passages"]),
    (_file(_passage(["The", " cat", " sat", "."], [0, 10, 0])),
     ["puzzle 'tiny' passage 1 has 4 tokens but 3 activations"]),
    (_file(_passage([], [])), ["puzzle 'tiny' passage 1 has no tokens"]),
    (_file(_passage(["The", " cat"], [0, 11])),
     ["puzzle 'tiny' passage 1 token 2 (' cat') has activation 11", "from 0 to 10"]),
    (_file(_passage(["The", " cat"], [-1, 10])), ["token 1 ('The') has activation -1"]),
    (_file(_passage(["The", " cat"], [0, "10"])), ["token 2 (' cat') has activation '10'"]),
    (_file(_passage(["The", " cat"], [0, True])), ["has activation True"]),
    (_file(_passage(["The", " cat"], [0, None])), ["has activation None"]),
    (_file(_passage(["The", " cat"], [3, 3])), ["puzzle 'tiny'", "same activation 3",
                                                "some tokens that fire"]),
], ids=[
    "json", "format-version", "not-an-object", "no-puzzles", "duplicate-name", "puzzle-not-object",
    "no-name", "category", "no-explanation", "no-false", "too-many-false", "false-not-list",
    "no-passages", "length-mismatch", "no-tokens", "activation-above-10", "activation-negative",
    "activation-string", "activation-bool", "activation-null", "constant",
])
def test_bad_files_name_the_puzzle_and_the_problem(tmp_path, body, words):
    with pytest.raises(ExplainError) as err:
        data.load(_write(tmp_path, body))
    msg = str(err.value)
    assert all(w in msg for w in words), msg
    assert msg.count("\n") == 0 and msg.endswith(".")


def test_bad_passage_is_named_by_position(tmp_path):
    second = {"tokens": [" a", " b", " c"], "activations": [0, 10]}
    body = _file(_good(), _with(name="other", passages=_good()["passages"] + [second]))
    with pytest.raises(ExplainError, match=r"^bad\.json: puzzle 'other' passage 2 has 3 tokens "
                                           r"but 2 activations\.$"):
        data.load(_write(tmp_path, body))


def test_missing_file_is_an_explain_error(tmp_path):
    with pytest.raises(ExplainError, match="nowhere.json: cannot read"):
        data.load(tmp_path / "nowhere.json")
