"""The engines: `--engine ray` writes the same tables as the local engine, on a real local Ray
cluster against a pool of scripted fake endpoints; the local engine never imports Ray."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import sys
import threading

import pytest

from explainer import ExplainError
from explainer import config as C
from explainer import engine
from explainer import run as rundir
from explainer.describe import stage as describe
from explainer.llm import ledger
from tests import runfactory as RF
from tests.fake_openai import FakeOpenAI, Reply, Request, default_handler

LLM = C.LLMConfig(concurrency=2, timeout_s=5.0, max_retries=2, backoff_s=0.02,
                  retry_budget_s=30.0)
RAY = C.EngineConfig(engine="ray", block=3)  # 8 neurons a layer: blocks of 3, 3 and 2


def by_prompt(req: Request) -> Reply:
    """An explanation that depends on the prompt, so a neuron mixed up would show."""
    if req.path.endswith("/chat/completions"):
        digest = hashlib.sha256(repr(req.body["messages"]).encode()).hexdigest()[:8]
        return Reply.chat(f"words about {digest}")
    return default_handler(req)


def _describe(run, fakes, eng=C.EngineConfig(), **kw):
    llm = dataclasses.replace(kw.pop("llm", LLM), base_url=tuple(f.base_url for f in fakes))
    return describe.run(C.DescribeConfig(run=run, explainer="fake-model", llm=llm, engine=eng,
                                         **kw))


def _table(run, name):
    """A table sorted by its key, list cells as tuples (row order is the engine's business)."""
    df = rundir.read(run, name)
    for c in df.columns:
        if df[c].map(lambda v: hasattr(v, "__len__") and not isinstance(v, str)).any():
            df[c] = df[c].map(lambda v: None if v is None else tuple(float(x) for x in v))
    key = [c for c in rundir.TABLES[name].key if c in df.columns]
    return df.sort_values(key).reset_index(drop=True)


def test_blocks_and_specs_are_deterministic():
    assert engine.blocks(list(range(8)), 3) == [(0, 1, 2), (3, 4, 5), (6, 7)]
    assert engine._spec([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert C.parse_spec(engine._spec([0, 1, 2, 5, 7, 8]), 10, "neuron", "m") == [0, 1, 2, 5, 7, 8]
    with pytest.raises(ExplainError, match="--engine 'spark'"):
        engine.check(C.EngineConfig(engine="spark"))


def test_local_engine_never_imports_ray(tmp_path):
    run = RF.make_run(tmp_path / "run")
    code = (
        "import sys\n"
        "from explainer import config as C\n"
        "from explainer.describe import stage\n"
        "from tests.fake_openai import FakeOpenAI\n"
        "with FakeOpenAI() as f:\n"
        f"    stage.run(C.DescribeConfig(run={str(run)!r}, explainer='fake-model', "
        "llm=C.LLMConfig(base_url=(f.base_url, f.base_url + '/'))))\n"
        "print('ray' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=RF.__file__.rsplit("/tests/", 1)[0], check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
    assert len(rundir.read(run, "explanations")) == 16


def test_ray_describe_equals_local(tmp_path, ray_cluster):
    local, remote = RF.make_run(tmp_path / "local"), RF.make_run(tmp_path / "ray")
    with FakeOpenAI(by_prompt) as a, FakeOpenAI(by_prompt) as b:
        _describe(local, [a])
        _describe(remote, [a, b], RAY)
        assert b.completions() > 0  # the pool was used
    want, got = _table(local, "explanations"), _table(remote, "explanations")
    assert len(want) == 16 and (want["status"] == "ok").all()
    assert want.equals(got)
    # The driver merged the workers' ledger files into llm.sqlite (file names by writer id are
    # tested in test_run_writers.py; describe compacts its partitions when a block ends).
    assert not list((remote / ledger.WORKERS_DIR).glob("*.sqlite"))
    assert _cache(remote) == _cache(local)  # every distinct answer, none lost in the merge


def _cache(run) -> set:
    import sqlite3

    db = sqlite3.connect(run / "llm.sqlite")
    try:
        return set(db.execute("SELECT request, answer FROM cache"))
    finally:
        db.close()


def test_ray_describe_loses_no_neuron_when_an_endpoint_stops(tmp_path, ray_cluster):
    run = RF.make_run(tmp_path / "run", d_mlp=16)
    seen = []

    with FakeOpenAI(by_prompt, latency_s=0.05) as a, FakeOpenAI(by_prompt, latency_s=0.05) as b:
        def handler(req: Request) -> Reply:
            seen.append(1)
            if len(seen) == 3:  # early on, endpoint b goes away for good
                threading.Thread(target=b.stop, daemon=True).start()
            return by_prompt(req)

        b.handler = handler
        a.handler = handler
        llm = dataclasses.replace(LLM, max_retries=0)  # nothing is saved by retrying b
        _describe(run, [a, b], RAY, llm=llm)
    df = rundir.read(run, "explanations")
    assert len(df) == 32 and (df["status"] == "ok").all(), df[df["status"] != "ok"]
    import sqlite3
    db = sqlite3.connect(run / "llm.sqlite")
    lost = db.execute("SELECT count(*) FROM calls WHERE status = 'connection'").fetchone()[0]
    db.close()
    assert lost > 0  # requests did go to the stopped endpoint, and were re-sent


def _sim_run(root):
    from tests import simfake

    run = RF.make_run(root, n_layers=2, d_mlp=8, n_excerpts=20, ctx=16, layers=(0, 1),
                      n_random=12)
    rows = [rundir.ExplanationRow(RF.MODEL, lay, n, "fake-explainer", "p" * 12, 0,
                                  simfake.explanation(lay, n), 10, 5, "ok", None)
            for lay in (0, 1) for n in range(8)]
    rundir.write_rows(run, "explanations", rows)
    return run


@pytest.mark.parametrize("mode", ["logprob", "chat"])
def test_ray_simulate_equals_local_and_survives_a_stopped_endpoint(tmp_path, ray_cluster, mode):
    from explainer.simulate import stage as simulate
    from tests import simfake

    local, remote = _sim_run(tmp_path / "local"), _sim_run(tmp_path / "ray")
    handler = simfake.Handler("truth", 16, 20)
    count = []

    with FakeOpenAI(handler) as a, FakeOpenAI(handler, latency_s=0.02) as b:
        def stopping(req: Request) -> Reply:
            count.append(1)
            if len(count) == 20:  # endpoint b goes away for good, mid-run
                threading.Thread(target=b.stop, daemon=True).start()
            return handler(req)

        b.handler = stopping
        for run, fakes, eng in ((local, [a], C.EngineConfig()), (remote, [a, b], RAY)):
            llm = dataclasses.replace(LLM, base_url=tuple(f.base_url for f in fakes),
                                      max_retries=0)
            simulate.run(C.SimulateConfig(run=run, simulator="fake-model", mode=mode, llm=llm,
                                          engine=eng))
        assert len(count) >= 20  # b did take part before it stopped
    for table in ("simulations", "scores"):
        want, got = _table(local, table), _table(remote, table)
        assert len(want) > 0 and want.equals(got), table
    scores = rundir.read(remote, "scores")
    assert (scores["status"] == "ok").all() and set(scores["neuron"]) == set(range(8))


def test_local_engine_in_blocks_equals_one_pass(tmp_path):
    from explainer.simulate import stage as simulate
    from tests import simfake

    whole, blocked = _sim_run(tmp_path / "whole"), _sim_run(tmp_path / "blocked")
    with FakeOpenAI(simfake.Handler("truth", 16, 20)) as fake:
        for run, eng in ((whole, C.EngineConfig()), (blocked, C.EngineConfig(block=3))):
            llm = dataclasses.replace(LLM, base_url=fake.base_url)
            simulate.run(C.SimulateConfig(run=run, simulator="fake-model", mode="logprob",
                                          llm=llm, engine=eng))
    for table in ("simulations", "scores"):
        want, got = _table(whole, table), _table(blocked, table)
        assert len(want) > 0 and want.equals(got), table
