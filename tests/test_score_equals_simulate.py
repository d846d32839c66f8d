"""`explain score` rewrites exactly the score rows `simulate` wrote, on every path that writes
simulations: logprob, chat with and without logprobs, a chat excerpt that failed and was retried
(stored as mode `chat`, then `chat-logprob`), merged prompts, the shuffled control, both sides of
a gated neuron, and a simulate killed between its simulation and score writes, then resumed.

Each path runs `explain simulate` against the scripted fake endpoint, keeps the scores table,
runs `explain score` (the CLI, no LLM) and compares the two tables row by row, every column but
the writer's sequence (which is in the file name, not in a column).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from explainer import config as C
from explainer import run as rundir
from explainer.simulate import stage as simulate
from tests import plainread, simfake
from tests import runfactory as RF
from tests.fake_openai import FakeOpenAI

CTX, N_EXCERPTS = 16, 20


def _explain(run, neurons, sides=("pos",), candidates=1) -> None:
    rows = [rundir.ExplanationRow(
        RF.MODEL, 0, n, "fake-explainer", "p" * 12, c,
        simfake.explanation(0, n if side == "pos" else (n + 1) % 8) + ("" if c == 0 else " or"),
        10, 5, "ok", None, side=side)
        for n in neurons for side in sides for c in range(candidates)]
    rundir.write_rows(run, "explanations", rows)


def _plain_run(tmp_path, neurons=range(4), candidates=2):
    run = RF.make_run(tmp_path / "run", n_layers=1, d_mlp=8, n_excerpts=N_EXCERPTS, ctx=CTX,
                      n_random=12)
    _explain(run, neurons, candidates=candidates)
    return run


def _cfg(run, fake, **kw):
    kw.setdefault("simulator", "fake-model")
    return C.SimulateConfig(run=run, llm=C.LLMConfig(base_url=fake.base_url, concurrency=4,
                                                     max_retries=0), **kw)


class _Noisy(simfake.Handler):
    """A second candidate (" or" appended) is simulated worse, so `best` is a real choice."""

    def _values(self, expl, tokens):
        vals = super()._values(expl, tokens)
        return [v if not expl.endswith(" or") else (v + self.rng.random()) / 2 for v in vals]


def _logprob(tmp_path):
    run = _plain_run(tmp_path)
    with FakeOpenAI(_Noisy("truth", CTX, N_EXCERPTS)) as fake:
        simulate.run(_cfg(run, fake, mode="logprob"))
    return run


def _chat(tmp_path, logprobs=True):
    run = _plain_run(tmp_path)
    with FakeOpenAI(_Noisy("truth", CTX, N_EXCERPTS, chat_logprobs=logprobs)) as fake:
        simulate.run(_cfg(run, fake, mode="chat"))
    return run


def _chat_retry(tmp_path):
    run = _plain_run(tmp_path)
    handler = _Noisy("error", CTX, N_EXCERPTS)
    with FakeOpenAI(handler) as fake:
        simulate.run(_cfg(run, fake, mode="chat"))  # every excerpt fails: mode `chat`
        assert set(rundir.read(run, "simulations")["mode"]) == {"chat"}
        handler.style = "truth"
        simulate.run(_cfg(run, fake, mode="chat"))  # retried with logprobs: `chat-logprob`
    return run


def _merged(tmp_path):
    run = _plain_run(tmp_path)
    with FakeOpenAI(_Noisy("truth", CTX, N_EXCERPTS)) as fake:
        simulate.run(_cfg(run, fake, mode="logprob", excerpts_per_prompt=3))
    return run


def _control(tmp_path):
    run = _plain_run(tmp_path, neurons=range(6), candidates=1)
    with FakeOpenAI(simfake.Handler("truth", CTX, N_EXCERPTS)) as fake:
        simulate.run(_cfg(run, fake, mode="logprob", control="shuffled"))
    return run


def _sides(tmp_path):
    run = RF.make_gated_run(tmp_path / "run", n_excerpts=N_EXCERPTS, ctx=CTX, n_random=12)
    _explain(run, range(3), sides=("pos", "neg"), candidates=2)
    with FakeOpenAI(_Noisy("truth", CTX, N_EXCERPTS)) as fake:
        simulate.run(_cfg(run, fake, mode="logprob"))
    return run


def _killed(tmp_path, monkeypatch):
    """Killed after the simulations were written and before their scores were (the writer's
    order), then resumed: the resumed run scores from the stored predictions."""
    run = _plain_run(tmp_path)

    class Killed(BaseException):
        pass

    real_write = rundir.write_rows

    def dies_at_scores(run_dir, name, rows, **kw):
        if name == "scores":
            raise Killed()
        return real_write(run_dir, name, rows, **kw)

    with FakeOpenAI(_Noisy("truth", CTX, N_EXCERPTS)) as fake:
        monkeypatch.setattr(rundir, "write_rows", dies_at_scores)
        with pytest.raises(Killed):
            simulate.run(_cfg(run, fake, mode="logprob", neurons="0-1"))
        monkeypatch.setattr(rundir, "write_rows", real_write)
        assert rundir.read(run, "scores").empty and not rundir.read(run, "simulations").empty
        n = fake.completions()
        simulate.run(_cfg(run, fake, mode="logprob"))
        assert fake.completions() > n  # neurons 2-3 were new
    return run


PATHS = {"logprob": _logprob, "chat": _chat, "chat-no-logprobs": lambda t: _chat(t, False),
         "chat-retry": _chat_retry, "merged": _merged, "control": _control, "sides": _sides}


def _table(run) -> pd.DataFrame:
    sc = rundir.read(run, "scores")
    key = list(rundir.table("scores").key)
    return sc.sort_values(key).reset_index(drop=True)


@pytest.mark.parametrize("path", [*PATHS, "killed"])
def test_score_rewrites_exactly_what_simulate_wrote(tmp_path, monkeypatch, path):
    run = _killed(tmp_path, monkeypatch) if path == "killed" else PATHS[path](tmp_path)
    before = _table(run)
    assert len(before) and (before["status"] == "ok").any(), before[["neuron", "status"]]
    if path == "chat-retry":  # the state this path is about: a failed row beside the retry
        modes = set(rundir.read(run, "simulations")["mode"])
        assert modes == {"chat-logprob"}, modes  # the superseded `chat` rows are gone
    res = CliRunner().invoke(__import__("cli").app, ["score", "--run", str(run)])
    assert res.exit_code == 0, res.output
    after = _table(run)
    plainread.assert_one_row_per_key(run, "scores")
    assert list(after.columns) == list(before.columns)
    assert len(after) == len(before), (before[["neuron", "split", "status"]],
                                       after[["neuron", "split", "status"]])
    for col in before.columns:
        a, b = after[col].tolist(), before[col].tolist()
        same = [x == y or (x != x and y != y) or (x is None and y is None)
                or (isinstance(x, np.ndarray) and np.array_equal(x, y)) for x, y in zip(a, b)]
        assert all(same), (col, [(x, y) for x, y, s in zip(a, b, same) if not s][:3])


def _score(run) -> None:
    res = CliRunner().invoke(__import__("cli").app, ["score", "--run", str(run)])
    assert res.exit_code == 0, res.output


def test_a_group_missing_excerpts_is_incomplete_and_judge_rows_are_kept(tmp_path):
    run = _logprob(tmp_path)
    judge_row = rundir.ScoreRow(
        model=RF.MODEL, layer=0, neuron=0, explainer="fake-explainer", candidate=0,
        simulator="fake-model", split="heldout", explanation="x", score=0.75, score_top=None,
        score_random=None, rsquared=None, abs_dev_explained=None, n_tokens=8, best=True,
        status="ok", error=None, mode="chat", method="detection", sim_prompt_hash="j" * 12,
        balanced_accuracy=0.75)
    rundir.write_rows(run, "scores", [judge_row])
    # A valid excerpt of neuron 0's candidate 1 lost (a narrowed or killed re-simulation).
    sims = rundir.read_arrow(run, "simulations", RF.MODEL, 0)
    lost = next(i for i, (n, c, s) in enumerate(zip(sims.column("neuron").to_pylist(),
                                                     sims.column("candidate").to_pylist(),
                                                     sims.column("split").to_pylist()))
                if (n, c, s) == (0, 1, "valid"))
    kept = sims.take([i for i in range(sims.num_rows) if i != lost])
    rundir.remove_partition(run, "simulations", RF.MODEL, 0)
    rundir.write_columns(run, "simulations", {c: kept.column(c) for c in
                                              rundir.table("simulations").schema.names},
                         model=RF.MODEL, layer=0)
    _score(run)
    sc = rundir.read(run, "scores")
    row = sc[(sc.neuron == 0) & (sc.candidate == 1) & (sc.split == "valid")].iloc[0]
    assert row.status == "incomplete" and row.score != row.score and not row.best
    assert "1 of the 9 valid-split excerpts" in row.error
    judged = sc[sc["method"] == "detection"]
    assert len(judged) == 1 and judged.iloc[0]["balanced_accuracy"] == 0.75
