"""`--batch`: requests through the OpenAI batch interface (files + batches routes of the fake
server), end to end: the same tables as live calls, at the batch price, resuming a killed run by
polling and finishing an expired batch's undone requests in a new one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from explainer import ExplainError
from explainer import config as C
from explainer import run as rundir
from explainer.judge import stage
from tests import judgefake as JF
from tests.fake_openai import FakeBatches, FakeOpenAI

ROOT = Path(__file__).resolve().parents[1]
MODEL = "gpt-4o-mini"  # priced in prices.json: live and batch
KEYS = ["neuron", "excerpt_id", "label", "prediction", "probability", "status", "answer"]


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch):
    monkeypatch.setenv("EXPLAIN_BATCH_POLL_S", "0.05")


def _judge(run, fake, batch):
    stage.run(C.JudgeConfig(run=run, method="detection", judge=MODEL,
                            llm=C.LLMConfig(base_url=fake.base_url, max_retries=0,
                                            batch=batch)))


def _tables(run):
    j = rundir.read(run, "judgments").sort_values(["neuron", "excerpt_id", "label"])
    s = rundir.read(run, "scores").sort_values("neuron")
    return (j[KEYS].reset_index(drop=True),
            s[["neuron", "balanced_accuracy", "auroc", "status"]].reset_index(drop=True))


def _usd(run):
    with sqlite3.connect(run / "llm.sqlite") as db:
        rows = db.execute("SELECT cost_usd, host, cached FROM calls WHERE status = 'ok' AND "
                          "key NOT LIKE 'probe%'").fetchall()
    return sum(c for c, _, _ in rows), {h for _, h, _ in rows}


def _live_and_copy(tmp_path):
    live = JF.make_run(tmp_path / "live", d_mlp=3)
    shutil.copytree(live, tmp_path / "batch")
    with FakeOpenAI(JF.Judge("perfect"), models=(MODEL,)) as fake:
        _judge(live, fake, batch=False)
    return live, tmp_path / "batch"


def test_batch_gives_the_live_tables_at_the_batch_price(tmp_path):
    live, run = _live_and_copy(tmp_path)
    with FakeOpenAI(JF.Judge("perfect"), models=(MODEL,)) as fake:
        fb = FakeBatches(fake, polls=2)
        _judge(run, fake, batch=True)
        assert fake.completions() == 0 and fb.created == 1  # one batch, nothing sent live
    pd.testing.assert_frame_equal(_tables(run)[0], _tables(live)[0])
    pd.testing.assert_frame_equal(_tables(run)[1], _tables(live)[1])
    usd_live, hosts_live = _usd(live)
    usd, hosts = _usd(run)
    assert hosts == {"batch"} and "batch" not in hosts_live
    assert usd == pytest.approx(usd_live / 2)  # prices.json: gpt-4o-mini's batch rate is half
    rec = json.loads(next((run / "batches").glob("*.json")).read_text())
    assert rec["id"] == "batch-1" and len(rec["requests"]) == fb.sizes[0]
    with FakeOpenAI(JF.Judge("perfect"), models=(MODEL,)) as fake:  # rerun: all done
        fb = FakeBatches(fake)
        _judge(run, fake, batch=True)
        assert fb.created == 0 and fake.completions() == 0


def test_an_expired_batch_gives_what_it_did_and_the_rest_goes_in_a_new_one(tmp_path):
    live, run = _live_and_copy(tmp_path)
    with FakeOpenAI(JF.Judge("perfect"), models=(MODEL,)) as fake:
        fb = FakeBatches(fake, expire_after=5)
        _judge(run, fake, batch=True)
    assert fb.created == 2 and fb.sizes[1] == fb.sizes[0] - 5
    pd.testing.assert_frame_equal(_tables(run)[0], _tables(live)[0])
    recs = [json.loads(p.read_text()) for p in (run / "batches").glob("*.json")]
    assert sorted((r["status"], r["answered"]) for r in recs) == \
        [("completed", fb.sizes[1]), ("expired", 5)]


def test_a_run_killed_between_submit_and_download_resumes_by_polling(tmp_path):
    live, run = _live_and_copy(tmp_path)
    with FakeOpenAI(JF.Judge("perfect"), models=(MODEL,)) as fake:
        fb = FakeBatches(fake)
        fb.hold = True  # the batch stays in progress: the process waits, polling
        code = ("from explainer import config as C; from explainer.judge import stage; "
                f"stage.run(C.JudgeConfig(run={str(run)!r}, method='detection', judge={MODEL!r},"
                f" llm=C.LLMConfig(base_url={fake.base_url!r}, max_retries=0, batch=True)))")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while fb.created == 0 and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.1)
            assert fb.created == 1
            time.sleep(0.5)  # it is polling now
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert list((run / "batches").glob("*.json"))  # the id was kept before the kill
        fb.hold = False
        _judge(run, fake, batch=True)
        assert fb.created == 1 and fake.completions() == 0  # polled, never re-submitted
    pd.testing.assert_frame_equal(_tables(run)[0], _tables(live)[0])
    pd.testing.assert_frame_equal(_tables(run)[1], _tables(live)[1])


def test_describe_and_simulate_with_batch_write_what_live_calls_write(tmp_path):
    from explainer import describe, simulate
    from tests import cascadefake as CF
    from tests import test_cascade as T

    runs = {}
    for batch in (False, True):
        run = T._run(tmp_path / f"b{int(batch)}")
        with FakeOpenAI(CF.handler, models=CF.MODELS) as fake:
            fb = FakeBatches(fake)
            d, s = T._configs(run, fake)
            describe.run(C.DescribeConfig(**{**d.__dict__, "llm": C.LLMConfig(
                base_url=fake.base_url, max_retries=0, batch=batch)}))
            simulate.run(C.SimulateConfig(**{**s.__dict__, "llm": C.LLMConfig(
                base_url=fake.base_url, max_retries=0, batch=batch)}))
            # describe: one batch; simulate: two, since the test split is simulated only for
            # the candidate the valid split chose (a request that waits on earlier answers)
            assert fb.created == (3 if batch else 0) and fake.completions() == 0 or not batch
        runs[batch] = run
    for table, cols in (("explanations", ["neuron", "explanation"]),
                        ("scores", ["neuron", "split", "score"])):
        a, b = (rundir.read(runs[k], table).sort_values(cols)[cols].reset_index(drop=True)
                for k in (False, True))
        pd.testing.assert_frame_equal(a, b)


def test_the_embedded_model_has_no_batch_interface(tmp_path):
    run = JF.make_run(tmp_path / "run", d_mlp=1)
    with pytest.raises(ExplainError, match="--batch: the embedded model has no batch"):
        stage.run(C.JudgeConfig(run=run, method="detection", llm=C.LLMConfig(batch=True)))
