"""`explain puzzles`: scores against an independent computation, a scripted simulator that follows
each rule ranks every truth first, results kept and resumed, shown by `report`; bad input fails."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from explainer import config as C
from explainer import prompts
from explainer import run as rundir
from explainer.puzzles import data, stage
from explainer.simulate import lexical
from tests.fake_openai import FakeOpenAI, Reply, default_handler

PUZZLES = data.load()


def _cli(*args):
    from explainer.cli import app

    return CliRunner().invoke(app, list(map(str, args)))


def _corr(puzzle, predict) -> float:
    """Pearson over the passages concatenated, counted 0 when the prediction is constant."""
    real = np.concatenate([p.activations for p in puzzle.passages])
    pred = np.concatenate([predict(p.tokens) for p in puzzle.passages])
    return 0.0 if np.ptp(pred) == 0 else float(np.corrcoef(real, pred)[0, 1])


def test_lexical_scores_ranks_and_summary_match_an_independent_computation(tmp_path):
    result = _cli("puzzles", "--simulator", "baseline-lexical", "--run", tmp_path / "r",
                  "--format", "json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    got = {r["puzzle"]: r for r in out["puzzles"]}
    firsts, margins = [], []
    for p in PUZZLES:
        true = _corr(p, lambda t: lexical.predict(p.explanation, t))
        false = [_corr(p, lambda t, f=f: lexical.predict(f, t)) for f in p.false_explanations]
        r = got[p.name]
        assert r["true_score"] == pytest.approx(true, abs=1e-9)
        assert r["false_scores"] == pytest.approx(false, abs=1e-9)
        assert r["first"] == (true > max(false))
        firsts.append(true > max(false))
        margins.append(true - max(false))
    s = out["summary"]
    assert s["n_scored"] == len(PUZZLES) and s["n_first"] == sum(firsts)
    assert s["share_first"] == pytest.approx(np.mean(firsts))
    assert s["chance"] == pytest.approx(np.mean([1 / (1 + len(p.false_explanations))
                                                 for p in PUZZLES]))
    assert s["mean_margin"] == pytest.approx(np.mean(margins))
    assert s["ci_low"] <= s["mean_margin"] <= s["ci_high"]
    assert out["tokens"]["simulated_tokens"] == sum(
        len(x.tokens) * (1 + len(p.false_explanations)) for p in PUZZLES for x in p.passages)


def _truth_handler():
    """A simulator endpoint that follows each puzzle's rule: the true explanation gets the true
    activations (expected value exactly a), a false one gets them reversed within each passage."""
    known = {}
    for p in PUZZLES:
        for x in p.passages:
            shown = tuple(prompts.show_token(t) for t in x.tokens)
            known[(p.explanation, shown)] = list(x.activations)
            for f in p.false_explanations:
                known[(f, shown)] = list(x.activations)[::-1]

    def handler(req):
        prompt = (req.body or {}).get("prompt", "")
        if "Neuron: " not in prompt:
            return default_handler(req)
        toks = re.findall(r"\t|\n|[^\t\n]+", prompt)
        offsets = np.cumsum([0] + [len(t) for t in toks[:-1]]).tolist()
        head, _, listing = prompt.rpartition("Neuron: ")
        expl = listing.split("\n", 1)[0]
        slots = [i for i, t in enumerate(toks) if t == "unknown" and offsets[i] > len(head)]
        shown = tuple(ln.rsplit("\t", 1)[0] for ln in listing.split("\n")[2:2 + len(slots)])
        top = [{t: -0.1} for t in toks]
        for i, a in zip(slots, known[(expl, shown)]):
            s = a / 10.0  # 9 with probability s: expected value 9s, stored as 10s = a
            top[i] = {d: math.log(w) for d, w in (("0", 1 - s), ("9", s)) if w > 0}
        return Reply.completion(prompt, logprobs={"tokens": toks, "text_offset": offsets,
                                                  "token_logprobs": [-0.1] * len(toks),
                                                  "top_logprobs": top})
    return handler


def test_a_simulator_that_follows_each_rule_ranks_every_truth_first_and_resumes(tmp_path):
    run = tmp_path / "r"
    with FakeOpenAI(_truth_handler()) as fake:
        cfg = C.PuzzlesConfig(run=run, simulator="fake-model", mode="logprob", format="json",
                              llm=C.LLMConfig(base_url=fake.base_url))
        out = json.loads(stage.run(cfg))
        sent = fake.completions()
        # the probes (echo convention, top log-probabilities), then one request a passage
        assert sent == 2 + sum(len(p.passages) * (1 + len(p.false_explanations))
                               for p in PUZZLES)
        assert all(r["first"] and r["true_score"] == pytest.approx(1.0) for r in out["puzzles"])
        assert out["summary"]["share_first"] == 1.0
        assert out["tokens"]["llm_calls"] == sent - 2 and out["tokens"]["prompt_tokens"] > 0
        again = json.loads(stage.run(cfg))  # everything stored: no request at all
        assert fake.completions() == sent
    assert again["puzzles"] == out["puzzles"]
    rows = rundir.read(run, "puzzles")
    assert len(rows) == sum(1 + len(p.false_explanations) for p in PUZZLES)
    assert set(rows["mode"]) == {"logprob"} and set(rows["model"]) == {"puzzles"}


def test_explain_adds_the_explainers_own_explanation_and_report_shows_accuracy(tmp_path):
    run = tmp_path / "r"
    result = _cli("puzzles", "--simulator", "baseline-lexical", "--run", run, "--explain",
                  "--explainer", "baseline-tokens")
    assert result.exit_code == 0, result.output
    assert "explained" in result.stdout and "ranked first:" in result.stdout
    rows = rundir.read(run, "puzzles")
    mine = rows[rows["role"] == "explained"]
    assert len(mine) == len(PUZZLES) and set(mine["explainer"]) == {"baseline-tokens"}
    assert mine["explanation"].str.startswith("the token").all()
    report = _cli("report", "--run", run)
    assert report.exit_code == 0, report.output
    assert "known-answer puzzles" in report.stdout and "baseline-lexical" in report.stdout
    js = json.loads(_cli("report", "--run", run, "--format", "json").stdout)
    assert js["puzzles"][0]["n_scored"] == len(PUZZLES)


def test_another_puzzle_file_is_its_own_set(tmp_path):
    p = PUZZLES[0]
    f = tmp_path / "mine.json"
    f.write_text(json.dumps({"format": 1, "puzzles": [{
        "name": "one", "category": p.category, "explanation": p.explanation,
        "false_explanations": list(p.false_explanations),
        "passages": [{"tokens": list(x.tokens), "activations": list(x.activations)}
                     for x in p.passages]}]}))
    out = json.loads(stage.run(C.PuzzlesConfig(run=tmp_path / "r", simulator="baseline-lexical",
                                               file=f, format="json")))
    assert out["summary"]["puzzle_set"] == "mine" and [r["puzzle"] for r in out["puzzles"]] == ["one"]


@pytest.mark.parametrize("args, message", [
    (["--file", "{bad}"], "not valid JSON"),
    (["--format", "csv"], "--format csv"),
    (["--mode", "fast"], "--mode 'fast'"),
])
def test_bad_input_fails_in_one_line_and_writes_nothing(tmp_path, args, message):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    run = tmp_path / "r"
    args = [a.replace("{bad}", str(bad)) for a in args]
    result = _cli("puzzles", "--simulator", "baseline-lexical", "--run", run, *args)
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
    assert not run.exists()


def test_default_results_folder_is_named_after_the_simulator():
    assert str(stage.default_run("org/model:7b")) == "runs/puzzles-org_model_7b"
