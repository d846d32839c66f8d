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
from explainer.run.specs import parse_spec
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
    assert parse_spec(engine._spec([0, 1, 2, 5, 7, 8]), 10, "neuron", "m") == [0, 1, 2, 5, 7, 8]
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


# --- the door: `--engine ray` that cannot start fails in one line, before any file ----------

# A meta-path hook that hides Ray from the import system, as on an install without the extra.
NO_RAY = (
    "import sys\n"
    "class _NoRay:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'ray' or name.startswith('ray.'):\n"
    "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
    "sys.meta_path.insert(0, _NoRay())\n")
DOOR_LIMIT_S = 15.0


def _explain(args: list[str], hide_ray: bool = False) -> tuple[subprocess.CompletedProcess, float]:
    """The real `explain` command in a fresh process (RAY_ADDRESS unset); (result, seconds)."""
    import os
    import time

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    code = (NO_RAY if hide_ray else "") + "from explainer.cli import main\nmain()\n"
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         cwd=RF.__file__.rsplit("/tests/", 1)[0], env=env, timeout=120)
    return out, time.monotonic() - t0


def _files(root) -> dict:
    """Every path under `root` with its size and mtime (empty when `root` does not exist)."""
    from pathlib import Path

    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(Path(root).rglob("*"))} if Path(root).exists() else {}


def _door_args(stage: str, tmp_path, tiny_gpt2, tiny_corpus) -> tuple[list[str], object]:
    """(arguments of `stage` that would work locally, its run directory)."""
    if stage == "record":  # a run that does not exist yet: it must not be created
        run = tmp_path / "new-run"
        return ["record", "--run", str(run), "--model", str(tiny_gpt2), "--corpus",
                str(tiny_corpus), "--layers", "0"], run
    run = _sim_run(tmp_path / "run")  # explained already: simulate and judge get that far
    extra = {"describe": ["--explainer", C.BASELINE_EXPLAINER],
             "simulate": ["--simulator", C.BASELINE_SIMULATOR],
             "judge": ["--method", "detection"]}[stage]
    return [stage, "--run", str(run), "--layers", "0", *extra], run


STAGES = ["record", "describe", "simulate", "judge"]


@pytest.mark.parametrize("stage", STAGES)
def test_ray_address_that_does_not_answer_fails_in_one_line(stage, tmp_path, tiny_gpt2,
                                                              tiny_corpus):
    import socket

    with socket.socket() as sock:  # bound but never listening: a connection is refused
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
        args, run = _door_args(stage, tmp_path, tiny_gpt2, tiny_corpus)
        before = _files(run)
        out, seconds = _explain([*args, "--engine", "ray", "--ray-address", address])
        # The same command refused by the same check for another reason: what starting Python
        # and importing the stage cost on this machine now (a loaded CI box takes seconds)
        _, start_s = _explain([*args, "--engine", "ray", "--workers", "-1"])
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr  # no traceback, no Ray log lines
    assert address in lines[0] and "ray start --head" in lines[0]
    assert seconds - start_s < DOOR_LIMIT_S  # Ray's own retries would take minutes
    assert _files(run) == before  # nothing written (record: no run dir, no staging folder)


@pytest.mark.parametrize("stage", STAGES)
def test_engine_ray_without_ray_installed_names_the_extra(stage, tmp_path, tiny_gpt2,
                                                           tiny_corpus):
    args, run = _door_args(stage, tmp_path, tiny_gpt2, tiny_corpus)
    before = _files(run)
    out, _ = _explain([*args, "--engine", "ray"], hide_ray=True)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'explain[ray]'" in lines[0], out.stderr
    assert _files(run) == before


def test_door_tells_a_ray_head_from_another_server(ray_cluster):
    """The real head answers the door; a server that speaks something else does not."""
    import socket
    import threading

    from explainer.engine import ray_engine

    host, port = ray_engine._host_port(ray_cluster.get_runtime_context().gcs_address)
    assert ray_engine._answers(host, port) is None
    with socket.socket() as srv:  # an HTTP/1 server where a cluster was expected
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)

        def reply():
            conn, _ = srv.accept()
            with conn:
                conn.recv(64)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        threading.Thread(target=reply, daemon=True).start()
        why = ray_engine._answers("127.0.0.1", srv.getsockname()[1])
    assert why is not None and "not a Ray head" in why
    assert ray_engine._host_port("ray://[::1]:10001") == ("::1", 10001)
    assert ray_engine._host_port("head.example") == ("head.example", ray_engine.GCS_PORT)
    with pytest.raises(ExplainError, match="--ray-address 10.0.0.1:x: expected HOST:PORT"):
        engine.check(C.EngineConfig("ray", "10.0.0.1:x"))


def test_ray_judge_equals_local(tmp_path, ray_cluster):
    """judge --engine ray: blocks of explained neurons on actors, the same rows as one process."""
    from explainer.judge import stage as judge
    from tests import judgefake as JF

    runs = {name: JF.make_run(tmp_path / name) for name in ("local", "ray")}
    with FakeOpenAI(JF.Judge("perfect")) as fake:
        for name, eng in (("local", C.EngineConfig()),
                          ("ray", C.EngineConfig(engine="ray", block=2))):
            judge.run(C.JudgeConfig(run=runs[name], method="detection", judge="fake-model",
                                    sampling="explain", engine=eng,
                                    llm=dataclasses.replace(LLM, base_url=fake.base_url)))
    for table in ("judgments", "scores"):
        want, got = _table(runs["local"], table), _table(runs["ray"], table)
        # cells by repr: a NaN inside a list cell (recall of an empty bin) equals itself there
        assert len(want) > 0 and want.map(repr).equals(got.map(repr)), table


def test_record_runs_its_shards_on_the_local_engine_without_ray(tmp_path, tiny_gpt2,
                                                                tiny_corpus):
    """record's one-process path is engine/local.py: every shard read, tables written, no Ray."""
    run = tmp_path / "run"
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from explainer import config as C\n"
        "from explainer.record import stage\n"
        f"stage.run(C.RecordConfig(run=Path({str(run)!r}), model={str(tiny_gpt2)!r}, "
        f"corpus={str(tiny_corpus)!r}, layers='0', n_excerpts=40, ctx=16, top_k=4, "
        "random_k=3, shards=3))\n"
        "print('ray' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=RF.__file__.rsplit("/tests/", 1)[0], check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
    assert len(rundir.read(run, "excerpts")) == 40
    assert not list(run.glob(".staging-*"))  # every shard merged, the staging folder gone
