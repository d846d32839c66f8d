"""The baseline-lexical simulator: term extraction, token matching, and scoring a known neuron."""

from __future__ import annotations

import time

import numpy as np
import pytest

from explainer.simulate import lexical as L

# Word tokens with GPT-2's leading space; " apple", " apples" and " Apple" are the neuron's triggers,
# " banana" is a wrong explanation's target, the rest is filler.
FILLER = (" the", " a", " of", " and", " to", " in", " is", " was", " it", " for", " on", " with",
          " as", " at", " by", " from", " that", " this", " tree", " red", " green", " sweet",
          " juice", " market", " bought", " ate", " fresh", " pie", " orchard", " basket", " she",
          " he", " they", " today", " yesterday", " farm", " kitchen", " table", " knife", " seed",
          " peel", " slice", " big", " small", " ripe", " sour")
TRIGGERS = (" apple", " apples", " Apple")
VOCAB = FILLER + TRIGGERS + (" banana",)


def _neuron(seed: int = 0, n_excerpts: int = 200, n_tokens: int = 20):
    """A token-detector neuron: 10 on the apple tokens, 0 elsewhere, plus small noise."""
    rng = np.random.default_rng(seed)
    excerpts = [[VOCAB[i] for i in rng.integers(len(VOCAB), size=n_tokens)] for _ in range(n_excerpts)]
    real = np.array([10.0 if t in TRIGGERS else 0.0 for ex in excerpts for t in ex])
    return excerpts, real + rng.normal(0, 0.1, size=real.shape)


def _simulate(explanation: str, excerpts: list[list[str]]) -> np.ndarray:
    """Concatenate per-excerpt predictions, as the score stage pools excerpts before correlating."""
    return np.array([v for ex in excerpts for v in L.predict(explanation, ex)])


def test_right_explanation_scores_high():
    excerpts, real = _neuron()
    assert any(t in TRIGGERS for ex in excerpts for t in ex)
    r = np.corrcoef(real, _simulate('the tokens "apple" and "apples"', excerpts))[0, 1]
    assert r > 0.9


def test_wrong_explanation_scores_near_zero():
    excerpts, real = _neuron()
    pred = _simulate('the tokens "banana"', excerpts)
    assert pred.std() > 0  # " banana" is in the vocabulary, so the correlation is defined
    assert abs(np.corrcoef(real, pred)[0, 1]) < 0.1


def test_explanation_naming_nothing_present_predicts_all_zeros():
    excerpts, _ = _neuron()
    assert not _simulate('the tokens "kiwi"', excerpts).any()  # constant: correlation undefined


def test_unquoted_content_words_match():
    pred = L.predict("mentions of fruit such as apples", [" I", " like", " apples", " fruit", " such"])
    assert pred[2] > 0 and pred[3] > 0
    assert pred[0] == pred[1] == pred[4] == 0  # stop and generic words name nothing


def test_terms_quoted_first_then_content_words():
    ts = L.terms('the tokens "Type", "dictionary" and "type"')
    assert [t.text for t in ts] == [L.normalise("type"), "dictionary"]
    assert all(t.quoted and t.weight == 1.0 for t in ts)
    ts = L.terms('“curly” and ‘single’ quotes, `code`, and the token \'x\' in Python')
    quoted = [t.text for t in ts if t.quoted]
    assert quoted == [L.normalise(w) for w in ("curly", "single", "code", "x")]
    words = {t.text: t.weight for t in ts if not t.quoted}
    assert L.normalise("python") in words and "token" not in words and "the" not in words
    assert max(words.values()) < 1.0  # beside quotes, content words weigh less


def test_content_words_weigh_less_beside_quotes():
    alone = L.predict("apples", [" apples"])[0]
    beside = L.predict('"pear" and apples', [" apples"])[0]
    assert 0 < beside < alone < 10


@pytest.mark.parametrize("token", [" dictionaries", "dictionaries", " Dictionary", "DICTIONARY",
                                   "Ġdictionary", "▁dictionary", " dictionary.", "(dictionary)"])
def test_inflection_case_space_and_punctuation_fold(token):
    assert L.predict("dictionary", [token]) == [L.predict("dictionary", [" dictionary"])[0]] != [0.0]


@pytest.mark.parametrize("word,inflected", [("type", "Ġtypes"), ("type", " typed"), ("type", "typing"),
                                            ("apple", " Apples"), ("class", " classes"),
                                            ("city", " cities"), ("stop", " stopped"), ("run", "running")])
def test_stemmer_folds_simple_inflections(word, inflected):
    assert L.normalise(inflected) == L.normalise(word)


def test_normalise_strips_markers_and_edge_punctuation():
    assert L.normalise("ĠType") == L.normalise("type") == L.normalise("▁TYPE") == L.normalise(" type, ")
    assert L.normalise(" (") == L.normalise("\n") == L.normalise("Ġ") == ""
    assert L.normalise("2019") == "2019"


def test_subword_pieces_get_half_weight():
    pred = L.predict('the token "dictionary"', [" dict", "ionary", " dict", "ator", " di", " dictionary"])
    assert pred == [5.0, 5.0, 5.0, 0.0, 0.0, 10.0]


def test_stop_word_is_not_a_piece():
    pred = L.predict("theory", [" the", " theory"])
    assert pred[0] == 0 and pred[1] > 0


def test_quoted_phrase_matches_in_sequence_only():
    pred = L.predict('the phrase "New York"', [" New", " York", " is", " New", " Jersey", " York"])
    assert pred == [10.0, 10.0, 0.0, 0.0, 0.0, 0.0]


def test_punctuation_only_when_named():
    toks = [" (", "(", ",", " ", "\n", "Ġ", " foo", ")"]
    assert L.predict("the variable foo", toks) == [0, 0, 0, 0, 0, 0, 6.0, 0]
    assert L.predict('opening brackets "(" and commas ","', toks) == [10.0, 10.0, 10.0, 0, 0, 0, 0, 0]
    # A '"' token quoted with a backslash escape, as the baseline-tokens explainer writes it.
    assert L.predict('the token "\\""', ['"', ' "', "'"]) == [10.0, 10.0, 0.0]


@pytest.mark.parametrize("explanation", ["", "   ", '""', "the tokens", "''", '"unclosed', "\\", "“”",
                                         'x "a" "b" "a" y' * 50, None])
def test_odd_inputs_never_raise(explanation):
    toks = ["", " ", "a", "Ġ", "▁", "\t\n", "日本", "🙂", " b", "'", '"', "\\"]
    pred = L.predict(explanation, toks)
    assert len(pred) == len(toks) and all(0.0 <= v <= 10.0 for v in pred)
    assert L.predict(explanation, []) == []


def test_empty_explanation_predicts_zeros():
    assert L.predict("", [" a", " apple"]) == [0.0, 0.0]
    assert L.terms("") == ()


def test_output_length_and_range_on_random_input():
    rng = np.random.default_rng(1)
    words = [w.strip() for w in VOCAB]
    for _ in range(200):
        toks = [str(VOCAB[i]) for i in rng.integers(len(VOCAB), size=rng.integers(0, 40))]
        expl = " ".join(('"%s"' % w) if rng.random() < 0.3 else w
                        for w in rng.choice(words, size=rng.integers(0, 6)))
        pred = L.predict(expl, toks)
        assert len(pred) == len(toks) and all(0.0 <= v <= 10.0 for v in pred)


def test_throughput():
    """2,000 (explanation, 64-token excerpt) pairs, every explanation new, well under 10 s."""
    rng = np.random.default_rng(2)
    words = [w.strip() for w in VOCAB] + ["dictionary", "New York", "(", "numbers", "code"]
    pairs = []
    for k in range(2000):
        picked = rng.choice(words, size=3)
        expl = f'the tokens "{picked[0]}", "{picked[1]}" and mentions of {picked[2]} ({k})'
        pairs.append((expl, [VOCAB[i] for i in rng.integers(len(VOCAB), size=64)]))
    start = time.perf_counter()
    out = [L.predict(e, t) for e, t in pairs]
    elapsed = time.perf_counter() - start
    print(f"baseline-lexical: {len(pairs) / elapsed:,.0f} pairs/s ({elapsed:.3f} s for {len(pairs)})")
    assert all(len(p) == 64 for p in out)
    assert elapsed < 10.0
