"""show: one neuron in the terminal: explanations, scores, statistics, shaded tokens, errors."""

from __future__ import annotations

import re

import numpy as np
import pytest

from explainer import ExplainError
from explainer.views import formats, neuron
from explainer.views import terminal as show
from explainer import run as rundir
from explainer.config import ShowConfig
from tests.reportfactory import CTX, make_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    return path, make_run(path, n_neurons=6)


def test_show_text(run, monkeypatch):
    path, truth = run
    monkeypatch.setenv("COLUMNS", "400")  # wide enough that no explanation wraps in its cell
    out = show.run(ShowConfig(run=path, layer=2, neuron=4, model="a-big-gpt2"))
    flat = re.sub(r"\s+", " ", out)
    for ex in ("smollm2-135m", "baseline-tokens"):
        assert truth.explanations[("a-big-gpt2", 2, 4, ex)] in flat
    want = dict((n, s) for n, s, *_ in truth.scores[("a-big-gpt2", 2, "smollm2-135m")])
    assert f"{want[4]:.3f}" in out
    stats = rundir.read(path, "neurons", "a-big-gpt2", 2)
    assert f"max {stats[stats['neuron'] == 4]['max'].iloc[0]:.4g}" in out
    assert "top excerpts" in out and "random excerpts" in out
    assert "↵" in out and "<b>mat</b>" in out  # tokens shown, newline made visible
    assert "★" in out


def test_simulated_values_beside_tokens(run):
    path, _ = run
    view = neuron.load_neuron(path, "a-big-gpt2", 2, 4)
    sims = rundir.read(path, "simulations", "a-big-gpt2", 2)
    head = view.headline
    shown = [e for e in view.excerpts if e.simulated is not None]
    assert shown and view.excerpts[0].simulated is not None  # simulated excerpts come first
    for e in shown:
        row = sims[(sims["neuron"] == 4) & (sims["excerpt_id"] == e.excerpt_id)
                   & (sims["explainer"] == head["explainer"])]
        np.testing.assert_allclose(e.simulated, row["predicted"].iloc[0])
        text = show.excerpt_text(e, 10.0).plain
        expect = "".join(formats.token_text(t) + show.superscript(v)
                         for t, v in zip(e.tokens, e.simulated))
        assert text == expect
    assert all(len(e.tokens) == len(e.real) == CTX for e in view.excerpts)


def test_shading_follows_real_activation():
    ex = neuron.Excerpt("top", 0, "valid", 1, ["a", "b", "c"], [0.0, 0.5, 2.0], None)
    spans = show.excerpt_text(ex, 2.0).spans
    styles = {ex.tokens[s.start]: str(s.style) for s in spans}  # one-letter tokens
    assert "a" not in styles or styles["a"] == ""
    assert styles["c"] == "black on rgb(255,140,0)"  # the strongest token gets full colour
    assert styles["b"] != styles["c"]


def test_failed_neuron_shows_error_not_crash(run):
    path, _ = run
    out = show.run(ShowConfig(run=path, layer=0, neuron=2, model="z-tiny-gpt2"))
    row = next(line for line in out.splitlines() if "smollm2-135m" in line and "failed" in line)
    assert "—" in row  # no score is made up for a failed neuron


def test_bad_input(run, tmp_path):
    path, _ = run
    with pytest.raises(ExplainError, match="--model is needed"):
        show.run(ShowConfig(run=path, layer=0, neuron=0))
    with pytest.raises(ExplainError, match="--model gpt9"):
        show.run(ShowConfig(run=path, layer=0, neuron=0, model="gpt9"))
    with pytest.raises(ExplainError, match=r"--layer 1: the run holds layers 0, 2, 3"):
        show.run(ShowConfig(run=path, layer=1, neuron=0, model="a-big-gpt2"))
    with pytest.raises(ExplainError, match="--neuron 99"):
        show.run(ShowConfig(run=path, layer=0, neuron=99, model="a-big-gpt2"))
    with pytest.raises(ExplainError, match="no such run"):
        show.run(ShowConfig(run=tmp_path / "nope", layer=0, neuron=0))
