"""Output-side evidence: each side's token lists (run/evidence.py), `describe --evidence`, and the
`baseline-logits` explainer, on hand-built runs whose promoted tokens are known."""

from __future__ import annotations

import dataclasses

import pytest

from explainer import ExplainError
from explainer import config as C
from explainer import run as rundir
from explainer.describe import prompt as P
from explainer.describe import stage as describe
from explainer.run.evidence import OutputTokens, explainer_label, output_tokens
from tests import runfactory as RF
from tests.fake_openai import FakeOpenAI

FAST = C.LLMConfig(concurrency=4, timeout_s=2.0, max_retries=2, backoff_s=0.02,
                   retry_budget_s=10.0)


def promoted(layer: int, neuron: int) -> list[tuple[str, float]]:
    """Neuron n of layer L promotes VOCAB from index n + L on, with falling effects; the second
    entry repeats the first without its space (baseline-logits counts them once)."""
    first = RF.VOCAB[(neuron + layer) % len(RF.VOCAB)]
    rest = [RF.VOCAB[(neuron + layer + i) % len(RF.VOCAB)] for i in range(1, 9)]
    return list(zip([first, first.strip(), *rest], [3.0 - 0.25 * i for i in range(10)]))


def suppressed(layer: int, neuron: int) -> list[tuple[str, float]]:
    return [(RF.VOCAB[(neuron + layer + 5 + i) % len(RF.VOCAB)], -2.0 + 0.1 * i)
            for i in range(10)]


def write_outputs(run, layers=(0, 1), d_mlp: int = 8) -> None:
    """A neurons/ table as record writes it, with the lists above (other columns null)."""
    for layer in layers:
        cols = {c: [None] * d_mlp for c in rundir.table("neurons").schema.names}
        cols["neuron"] = list(range(d_mlp))
        for name, fn in (("promoted", promoted), ("suppressed", suppressed)):
            pairs = [fn(layer, n) for n in range(d_mlp)]
            cols[f"{name}_tokens"] = [[t for t, _ in p] for p in pairs]
            cols[f"{name}_values"] = [[v for _, v in p] for p in pairs]
            cols[f"{name}_ids"] = [list(range(10)) for _ in pairs]
        rundir.write_columns(run, "neurons", cols, model=RF.MODEL, layer=layer)


@pytest.fixture
def run(tmp_path):
    run = RF.make_run(tmp_path / "run")
    write_outputs(run)
    return run


@pytest.fixture
def fake():
    with FakeOpenAI() as server:
        yield server


def _cfg(run, fake, **kw):
    return C.DescribeConfig(run=run, explainer="fake-model",
                            llm=dataclasses.replace(FAST, base_url=fake.base_url), **kw)


def test_negative_side_promotes_what_the_positive_side_suppresses():
    row = {"promoted_tokens": ["a", "b"], "promoted_values": [2.0, 1.0],
           "suppressed_tokens": ["y", "z"], "suppressed_values": [-3.0, -0.5]}
    assert output_tokens(row) == OutputTokens((("a", 2.0), ("b", 1.0)),
                                              (("y", -3.0), ("z", -0.5)))
    assert output_tokens(row, "neg") == OutputTokens((("y", 3.0), ("z", 0.5)),
                                                     (("a", -2.0), ("b", -1.0)))
    old = {"promoted_tokens": None, "promoted_values": None}  # recorded before the columns
    assert output_tokens(old) is None and output_tokens({}, "neg") is None
    with pytest.raises(ValueError):
        output_tokens(row, "both")


def test_baseline_logits_names_the_top_promoted_tokens(run):
    describe.run(C.DescribeConfig(run=run, explainer=C.BASELINE_LOGITS))
    df = rundir.read(run, "explanations")
    assert len(df) == 16 and set(df["status"]) == {"ok"}
    assert set(df["evidence"]) == {"outputs"} and set(df["explainer"]) == {"baseline-logits"}
    for row in df.itertuples():
        # independently: first, second and third distinct words of the promoted list
        words = [RF.VOCAB[(row.neuron + row.layer + i) % len(RF.VOCAB)].strip() for i in range(3)]
        assert row.explanation == 'the token before "{}", "{}" or "{}"'.format(*words)


def test_prompt_hash_differs_per_evidence():
    hashes = {e: P.prompt_hash(e) for e in ("inputs", "outputs", "both")}
    assert len(set(hashes.values())) == 3 and hashes["inputs"] == P.prompt_hash()


def test_both_shows_excerpts_and_output_tokens(run, fake):
    describe.run(_cfg(run, fake, layers="1", neurons="0-3", evidence="both"))
    describe.run(_cfg(run, fake, layers="1", neurons="0-3"))  # inputs: kept beside, not replaced
    df = rundir.read(run, "explanations").sort_values(["explainer", "neuron"])
    assert list(df["explainer"]) == ["fake-model"] * 4 + ["fake-model+both"] * 4
    assert list(df["evidence"]) == ["inputs"] * 4 + ["both"] * 4
    assert set(df["prompt_hash"]) == {P.prompt_hash("inputs"), P.prompt_hash("both")}
    posts = [r.body["messages"] for r in fake.requests if r.method == "POST"]
    both = [m for m in posts if "more likely" in m[-1]["content"]]
    assert len(both) == 4 and all("next tokens" in m[0]["content"] for m in both)
    for n in range(4):
        text = next(m[-1]["content"] for m in both
                    if P.question(RF.explain_excerpts(1, n)).split("What")[0].strip()
                    in m[-1]["content"])
        for tok, v in promoted(1, n) + suppressed(1, n):
            assert f"{tok}\t{v:+.2f}\n" in text + "\n"
        assert text.index(f"{promoted(1, n)[0][0]}\t+3.00") < text.index("less likely") \
            < text.index(f"{suppressed(1, n)[0][0]}\t-2.00")


def test_outputs_alone_sends_no_excerpts_and_no_few_shots(run, fake):
    describe.run(_cfg(run, fake, layers="0", neurons="2", evidence="outputs"))
    msgs = [r.body["messages"] for r in fake.requests if r.method == "POST"]
    assert len(msgs) == 1 and [m["role"] for m in msgs[0]] == ["system", "user"]
    assert "<start>" not in msgs[0][-1]["content"]
    assert msgs[0][-1]["content"] == P.question([], OutputTokens(
        tuple(promoted(0, 2)), tuple(suppressed(0, 2))), "outputs")
    df = rundir.read(run, "explanations")
    assert list(df["explainer"]) == ["fake-model+outputs"] and list(df["evidence"]) == ["outputs"]


def test_output_evidence_needs_a_run_recorded_with_it(tmp_path):
    run = RF.make_run(tmp_path / "old")  # no output columns: as a run recorded before them
    cols = {c: [None] for c in rundir.table("neurons").schema.names} | {"neuron": [0]}
    for layer in (0, 1):
        rundir.write_columns(run, "neurons", cols, model=RF.MODEL, layer=layer)
    with pytest.raises(ExplainError, match="--evidence both: layer 0 .* re-record"):
        describe.run(C.DescribeConfig(run=run, explainer="x", evidence="both"))
    with pytest.raises(ExplainError, match="--evidence sideways"):
        describe.run(C.DescribeConfig(run=run, explainer="x", evidence="sideways"))
    assert not (run / "explanations").exists()


def test_labels_keep_variants_apart():
    assert explainer_label("gpt-4o", "inputs") == "gpt-4o"
    assert explainer_label("gpt-4o", "both") == "gpt-4o+both"
    assert explainer_label("baseline-logits", "outputs") == "baseline-logits"


def test_report_groups_by_evidence(tmp_path):
    import json

    from explainer.config import ReportConfig
    from explainer.views import report

    run = tmp_path / "rep"
    rundir.write_run_json(run, {"format": 1, "models": {RF.MODEL: {
        "model": RF.MODEL, "n_layers": 2, "d_mlp": 8, "n_params": 1000}}})
    want = {"m": [0.1, 0.2, 0.3], "m+both": [0.5, 0.6, 0.9], "baseline-logits": [0.0, 0.3, 0.3]}
    rows = [rundir.ScoreRow(model=RF.MODEL, layer=0, neuron=n, explainer=e, candidate=0,
                            simulator="sim", split="valid", explanation="x", score=s,
                            score_top=s, score_random=s, rsquared=None, abs_dev_explained=None,
                            n_tokens=80, best=True, status="ok", error=None)
            for e, scores in want.items() for n, s in enumerate(scores)]
    rundir.write_rows(run, "scores", rows)
    out = json.loads(report.run(ReportConfig(run=run, by="model", format="json")))
    got = {(r["explainer"], r["evidence"]): r["mean"] for r in out["rows"]}
    assert got == pytest.approx({("m", "inputs"): 0.2, ("m+both", "both"): 2 / 3,
                                 ("baseline-logits", "outputs"): 0.2})
    table = report.run(ReportConfig(run=run, by="model"))
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in table.split("Score by")[1]
             .splitlines() if line.startswith("│")]  # the by-model table's rows
    got = {(c[2], c[3]): c[6] for c in cells}
    assert got == {("m", "inputs"): "0.200", ("m", "both"): "0.667",
                   ("baseline-logits", "outputs"): "0.200"}


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory):
    from tests.reportfactory import make_run

    run = tmp_path_factory.mktemp("views")
    make_run(run, n_neurons=4)
    return run


def test_show_lists_what_the_neuron_writes(scored_run, monkeypatch):
    from explainer.config import ShowConfig
    from explainer.views import terminal
    from tests.reportfactory import output_side

    monkeypatch.setenv("COLUMNS", "400")
    out = terminal.run(ShowConfig(run=scored_run, layer=2, neuron=3, model="a-big-gpt2"))
    want = output_side(3)
    up = next(line for line in out.splitlines() if line.startswith("promotes"))
    down = next(line for line in out.splitlines() if line.startswith("suppresses"))
    for tok, v in zip(want["promoted_tokens"], want["promoted_values"]):
        assert f'"{tok.replace(chr(10), "↵")}" {v:+.2f}' in up
    for tok, v in zip(want["suppressed_tokens"], want["suppressed_values"]):
        assert f'"{tok.replace(chr(10), "↵")}" {v:+.2f}' in down
    assert up.index(f'{want["promoted_tokens"][0]}"') < up.index(f'{want["promoted_values"][9]:+.2f}')


def test_view_page_lists_what_the_neuron_writes(scored_run, tmp_path):
    import html as H

    from explainer.config import ViewConfig
    from explainer.views import html as view
    from tests.reportfactory import output_side

    view.run(ViewConfig(run=scored_run, out=tmp_path / "site"))
    page = (tmp_path / "site" / "neurons" / "a-big-gpt2" / "L2" / "N1.html").read_text()
    table = page[page.index('<table class="outputs">'):]
    table = table[:table.index("</table>")]
    want = output_side(1)
    for side in ("promoted", "suppressed"):
        for tok, v in zip(want[f"{side}_tokens"], want[f"{side}_values"]):
            assert f"<code>{H.escape(tok)}</code> {v:+.2f}" in table
    assert table.index("promotes") < table.index("suppresses")


def test_views_show_each_side_its_own_list():
    from explainer.views import neuron, terminal
    from tests.reportfactory import output_side

    stats = output_side(0)
    view = neuron.NeuronView("m", "m", 0, 0, stats, [], None, [], ("pos", "neg"))
    sides = dict(neuron.output_sides(view))
    assert [t for t, _ in sides["neg"].promoted] == stats["suppressed_tokens"]
    assert [v for _, v in sides["neg"].promoted] == pytest.approx(
        [-v for v in stats["suppressed_values"]])
    lines = terminal.output_lines(view)
    assert [line.split("[/]")[0] for line in lines] == [
        "[bold]pos side promotes", "[bold]pos side suppresses",
        "[bold]neg side promotes", "[bold]neg side suppresses"]
