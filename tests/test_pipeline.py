"""`explain run` end to end on a tiny GPT-2 and a scripted OpenAI-compatible server."""

from __future__ import annotations

import re
import time

import pytest
from typer.testing import CliRunner

from cli import app
from explainer import run as rundir
from tests.fake_openai import FakeOpenAI, Reply

runner = CliRunner()
_ROW = re.compile(r"^(\d+)\t(.*)$")
SEEN: list[str] = []  # which stage each request came from


def handler(req) -> Reply:
    """Explainer: a fixed phrase. Simulator (chat): a value per token, a function of the token."""
    body = req.body or {}
    last = (body.get("messages") or [{}])[-1].get("content", "")
    SEEN.append("simulate" if last.startswith("Neuron:") else "describe")
    if SEEN[-1] == "describe":
        return Reply.chat("words about the topic")
    rows = [_ROW.match(line) for line in last.split("\n")[2:]]
    answer = [f"{m.group(1)}\t{(len(m.group(2)) * 7 + int(m.group(1))) % 10}"
              for m in rows if m]
    return Reply.chat("\n".join(answer))


def _run(run_dir, model, corpus, url, *extra):
    return runner.invoke(app, [
        "run", "--run", str(run_dir), "--model", str(model), "--corpus", str(corpus),
        "--layers", "0,1", "--neurons", "0-2", "--n-excerpts", "60",
        "--explainer", "baseline-tokens", "--explainer", "fake-model",
        "--simulator", "fake-model", "--base-url", url, "--mode", "chat", *extra])


def _scores(run_dir, simulator="fake-model", control="none"):
    df = rundir.read(run_dir, "scores")
    df = df[(df["simulator"] == simulator) & (df["control"] == control)].sort_values(
        ["layer", "neuron", "explainer", "candidate", "split"]).reset_index(drop=True)
    return df[["layer", "neuron", "explainer", "split", "score", "status"]]


def test_killed_after_describe_then_resumed_matches_uninterrupted(
        tmp_path, tiny_gpt2, tiny_corpus, monkeypatch):
    from explainer.simulate import stage as simulate

    with FakeOpenAI(handler) as fake:
        t0 = time.monotonic()
        whole = _run(tmp_path / "a", tiny_gpt2, tiny_corpus, fake.base_url)
        wall = time.monotonic() - t0
        assert whole.exit_code == 0, whole.output
        _check_time_line(whole.output.rstrip().split("\n")[-1], wall)
        assert "plot:" in whole.output and "viewer:" in whole.output
        assert (tmp_path / "a" / "report.png").stat().st_size > 10_000
        assert (tmp_path / "a" / "view" / "index.html").exists()
        pages = sorted(p.name for p in (tmp_path / "a" / "view").rglob("N*.html"))
        assert pages == ["N0.html", "N0.html", "N1.html", "N1.html", "N2.html", "N2.html"]

        def interrupted(cfg):
            raise KeyboardInterrupt

        monkeypatch.setattr(simulate, "run", interrupted)
        killed = _run(tmp_path / "b", tiny_gpt2, tiny_corpus, fake.base_url)
        assert killed.exit_code == 130
        assert not (tmp_path / "b" / "scores").exists()
        explained = rundir.read(tmp_path / "b", "explanations")
        assert len(explained) == 2 * 3 * 2  # 2 layers x 3 neurons x 2 explainers
        monkeypatch.undo()

        SEEN.clear()
        resumed = _run(tmp_path / "b", tiny_gpt2, tiny_corpus, fake.base_url)
        assert resumed.exit_code == 0, resumed.output
    # The resumed run only simulated; nothing was explained again.
    assert "simulate" in SEEN and "describe" not in SEEN
    a, b = _scores(tmp_path / "a"), _scores(tmp_path / "b")
    assert len(a) == 24 and (a.status == "ok").all()
    assert a.equals(b)
    # By default every explanation is also scored by baseline-lexical, and each simulator's
    # chosen explanations by the shuffled control (valid split, one per neuron and explainer).
    for sim in ("fake-model", "baseline-lexical"):
        assert len(_scores(tmp_path / "a", sim)) == 24
        ctl = _scores(tmp_path / "a", sim, "shuffled")
        assert len(ctl) == 12 and (ctl.split == "valid").all()
        assert _scores(tmp_path / "b", sim, "shuffled").equals(ctl)
    assert "Specificity" in whole.output


def _seconds(text: str) -> float:
    m = re.fullmatch(r"(?:(\d+) min )?([\d.]+) s", text)
    assert m, text
    return 60 * int(m.group(1) or 0) + float(m.group(2))


def _check_time_line(line: str, wall: float) -> None:
    """The last line: every stage in the order it ran with its seconds, then the total, which
    covers the stages and fits in the wall time measured around the command."""
    m = re.fullmatch(r"time: (.*); total (.*)", line)
    assert m, line
    stages = [re.fullmatch(r"(.+?) ((?:\d+ min )?[\d.]+ s)", part).groups()
              for part in m.group(1).split(", ")]
    assert [name for name, _ in stages] == [
        "record", "describe baseline-tokens", "describe fake-model",
        "simulate baseline-lexical", "simulate fake-model", "report", "viewer"]
    spent = [_seconds(t) for _, t in stages]
    total = _seconds(m.group(2))
    assert all(s >= 0 for s in spent) and sum(spent) <= total + 0.5 * len(spent)
    assert total <= wall + 0.5


def test_two_models_in_one_run_compared_by_size(tmp_path, tiny_gpt2, tiny_corpus):
    from tests.conftest import make_gpt2

    bigger = make_gpt2(tmp_path / "m" / "wide-gpt2", n_layer=3, n_embd=48, seed=1)
    run_dir = tmp_path / "r"
    with FakeOpenAI(handler) as fake:
        for model in (bigger, tiny_gpt2):
            res = _run(run_dir, model, tiny_corpus, fake.base_url)
            assert res.exit_code == 0, res.output
    meta = rundir.read_run_json(run_dir)["models"]
    assert meta["wide-gpt2"]["n_params"] > meta["tiny-gpt2"]["n_params"]
    res = runner.invoke(app, ["report", "--run", str(run_dir), "--by", "model",
                              "--format", "json"])
    assert res.exit_code == 0, res.output
    import json

    models = [row["model"] for row in json.loads(res.output)["models"]]
    assert models.index("tiny-gpt2") < models.index("wide-gpt2")  # smaller model first
