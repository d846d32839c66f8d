"""The LLM layer against a scripted fake OpenAI server (real sockets, real `openai` client)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time

import numpy as np
import pytest

from explainer import ExplainError
from explainer import config as C
from explainer import llm as L
from explainer.llm import ledger, server
from tests.fake_openai import FakeOpenAI, Reply, default_handler

FAST = C.LLMConfig(concurrency=4, timeout_s=5.0, max_retries=3, backoff_s=0.05,
                   retry_budget_s=20.0)
MSG = [{"role": "user", "content": "hello"}]


@pytest.fixture
def fake():
    with FakeOpenAI() as server:
        yield server


def _llm(fake, tmp_path, cfg=FAST, model="fake-model", key="sk-test"):
    ep = L.Endpoint(model=model, base_url=fake.base_url, api_key=key)
    return L.LLM(ep, tmp_path, stage="test", cfg=cfg)


def arun(coro):
    return asyncio.run(coro)


def _calls(tmp_path) -> list[tuple]:
    db = sqlite3.connect(ledger.path(tmp_path))  # the file itself, beside the read API
    try:
        return db.execute("SELECT status, cached, attempt, prompt_tokens, cost_usd FROM calls "
                          "ORDER BY id").fetchall()
    finally:
        db.close()


def test_chat_returns_text_and_tokens(fake, tmp_path):
    fake.push(Reply.chat("boats and harbours", prompt_tokens=42, completion_tokens=5))

    async def go():
        async with _llm(fake, tmp_path) as llm:
            return await llm.chat(MSG, max_tokens=20)

    c = arun(go())
    assert (c.text, c.prompt_tokens, c.completion_tokens, c.cached) == \
        ("boats and harbours", 42, 5, False)
    sent = fake.requests[-1]
    assert sent.body["messages"] == MSG and sent.body["model"] == "fake-model"
    assert sent.headers.get("authorization") == "Bearer sk-test"


def test_429_honours_retry_after(fake, tmp_path):
    fake.push(Reply.error(429, retry_after=0.6), Reply.chat("ok"))

    async def go():
        async with _llm(fake, tmp_path) as llm:
            t0 = time.monotonic()
            c = await llm.chat(MSG, max_tokens=5)
            return c, time.monotonic() - t0, llm.summary()

    c, elapsed, summary = arun(go())
    assert c.text == "ok" and fake.completions() == 2
    assert elapsed >= 0.6  # backoff_s alone would wait ~0.05 s
    assert [r[0] for r in _calls(tmp_path)] == ["rate_limited", "ok"]
    assert "1 retried" in summary


def test_intermittent_500_and_malformed_are_retried(fake, tmp_path):
    fake.push(Reply.error(500), Reply.malformed(), Reply.error(503), Reply.chat("fine"))

    async def go():
        async with _llm(fake, tmp_path) as llm:
            return await llm.chat(MSG, max_tokens=5)

    assert arun(go()).text == "fine"
    assert [r[0] for r in _calls(tmp_path)] == ["server_error", "malformed", "server_error", "ok"]


def test_400_is_not_retried(fake, tmp_path):
    fake.push(Reply.error(400, message="bad field"), Reply.chat("never"))

    async def go():
        async with _llm(fake, tmp_path) as llm:
            await llm.chat(MSG, max_tokens=5)

    with pytest.raises(L.LLMError) as info:
        arun(go())
    assert info.value.status == "bad_request" and fake.completions() == 1


def test_retries_are_bounded(fake, tmp_path):
    fake.push(*[Reply.error(500) for _ in range(10)])
    cfg = C.LLMConfig(timeout_s=5.0, max_retries=2, backoff_s=0.01)

    async def go():
        async with _llm(fake, tmp_path, cfg) as llm:
            await llm.chat(MSG, max_tokens=5)

    with pytest.raises(L.LLMError) as info:
        arun(go())
    assert info.value.status == "server_error" and fake.completions() == 3


def test_timeout_then_success(fake, tmp_path):
    fake.push(Reply.hang(3.0), Reply.chat("in time"))
    cfg = C.LLMConfig(timeout_s=0.5, max_retries=2, backoff_s=0.01)

    async def go():
        async with _llm(fake, tmp_path, cfg) as llm:
            return await llm.chat(MSG, max_tokens=5)

    assert arun(go()).text == "in time"
    assert [r[0] for r in _calls(tmp_path)] == ["timeout", "ok"]


def test_server_dies_and_comes_back(fake, tmp_path):
    fake.push(Reply.outage(0.8), Reply.chat("back again"))
    cfg = C.LLMConfig(timeout_s=5.0, max_retries=8, backoff_s=0.1)

    async def go():
        async with _llm(fake, tmp_path, cfg) as llm:
            return await llm.chat(MSG, max_tokens=5)

    assert arun(go()).text == "back again"
    statuses = [r[0] for r in _calls(tmp_path)]
    assert statuses[-1] == "ok" and set(statuses[:-1]) == {"connection"}


def test_cache_by_request_and_sample(fake, tmp_path):
    async def go():
        async with _llm(fake, tmp_path) as llm:
            a = await llm.chat(MSG, max_tokens=5, temperature=1.0, sample=0)
            b = await llm.chat(MSG, max_tokens=5, temperature=1.0, sample=1)
            a2 = await llm.chat(MSG, max_tokens=5, temperature=1.0, sample=0)
            return a, b, a2

    a, b, a2 = arun(go())
    assert a.text != b.text  # the fake answers by seed: samples differ the first time
    assert a2.cached and a2.text == a.text and fake.completions() == 2
    a3, b3, _ = arun(go())  # a new LLM on the same run: everything comes from the cache
    assert (a3.text, b3.text) == (a.text, b.text) and fake.completions() == 2


def test_unaccepted_answer_is_not_cached(fake, tmp_path):
    fake.push(Reply.empty(), Reply.chat("usable"))

    async def go():
        async with _llm(fake, tmp_path) as llm:
            first = await llm.chat(MSG, max_tokens=5, accept=lambda c: bool(c.text))
            second = await llm.chat(MSG, max_tokens=5, accept=lambda c: bool(c.text))
            return first, second

    first, second = arun(go())
    assert first.text == "" and second.text == "usable" and not second.cached
    assert [r[0] for r in _calls(tmp_path)] == ["unusable", "ok"]


def test_concurrency_limit_holds(tmp_path):
    with FakeOpenAI(latency_s=0.2) as fake:
        async def go():
            async with _llm(fake, tmp_path, C.LLMConfig(concurrency=3)) as llm:
                await asyncio.gather(*(llm.chat([{"role": "user", "content": str(i)}],
                                                max_tokens=5) for i in range(9)))

        arun(go())
        assert fake.max_in_flight == 3


def test_ledger_cost_and_summary(fake, tmp_path):
    fake.models.append("gpt-4o-mini")
    fake.push(Reply.chat("a", prompt_tokens=1_000_000, completion_tokens=1_000_000))

    async def go():
        async with _llm(fake, tmp_path, model="gpt-4o-mini") as llm:
            await llm.chat(MSG, max_tokens=5)
            await llm.chat(MSG, max_tokens=5)
            return llm.summary()

    summary = arun(go())
    # prices.json: gpt-4o-mini costs 0.15 + 0.60 USD per million prompt/completion tokens
    assert summary == ("2 calls (1 cached), 1,000,000 prompt + 1,000,000 completion tokens, "
                       "est. $0.7500")
    rows = _calls(tmp_path)
    assert rows[0][4] == pytest.approx(0.75) and rows[1][1] == 1


def test_unknown_price_shows_tokens_only(fake, tmp_path):
    async def go():
        async with _llm(fake, tmp_path) as llm:
            await llm.chat(MSG, max_tokens=5)
            return llm.summary()

    assert "cost unknown" in arun(go()) and _calls(tmp_path)[0][4] is None


def test_check_unknown_model_names_served(fake, tmp_path):
    async def go():
        async with _llm(fake, tmp_path, model="gpt-9") as llm:
            await L.probe(llm)

    with pytest.raises(ExplainError, match=r"'gpt-9' is not served .*fake-model"):
        arun(go())


def test_check_unreachable(tmp_path):
    fake = FakeOpenAI().start()
    fake.stop()  # a port where nothing listens

    async def go():
        async with _llm(fake, tmp_path) as llm:
            await L.probe(llm)

    with pytest.raises(ExplainError, match="cannot reach the LLM endpoint at 127.0.0.1"):
        arun(go())


def test_check_probes_echo_logprobs(fake, tmp_path):
    async def go():
        async with _llm(fake, tmp_path) as llm:
            caps = await L.probe(llm)
            c = await llm.complete("the cat sat", echo=True, logprobs=1)
            return caps.echo_logprobs, c

    ok, c = arun(go())
    assert ok is True and c.tokens == ["the", " cat", " sat"] and c.text_offset == [0, 3, 7]


def test_key_never_on_disk(fake, tmp_path):
    secret = "sk-test-SECRET-123"
    fake.push(Reply.error(401, message=f"Incorrect API key provided: {secret}"))

    async def go():
        async with _llm(fake, tmp_path, key=secret) as llm:
            assert secret not in repr(llm.endpoint)
            await llm.chat(MSG, max_tokens=5)

    with pytest.raises(L.LLMError) as info:
        arun(go())
    assert secret not in str(info.value)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_resolve(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert L.resolve(C.EMBEDDED_LLM, None).embedded
    with pytest.raises(ExplainError, match="OPENAI_API_KEY"):
        L.resolve("gpt-4o-mini", None)
    ep = L.resolve("llama3", "http://localhost:11434/v1")
    assert (ep.embedded, ep.host, ep.api_key) == (False, "localhost:11434", L.DUMMY_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", "https://user:pw@openrouter.ai/api/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    ep = L.resolve("openai/gpt-4o-mini", None)
    assert ep.host == "openrouter.ai" and ep.api_key == "sk-x"


@pytest.mark.slow
def test_a_real_server_over_http_agrees_with_the_in_process_backend(tmp_path):
    """The one OpenAI-compatible server here that no one here wrote: llama-cpp-python's, over
    the embedded GGUF, named with --base-url (the HTTP path, unchanged); the in-process
    simulator's predictions agree with what the server's echoed log-probabilities give, and the
    server leaves no process behind, also when the block raises."""
    pytest.importorskip("llama_cpp")
    psutil = pytest.importorskip("psutil")
    from explainer.simulate import prompt as SP
    from explainer.simulate import simulators

    tokens = [" The", " cat", "\t", " sat", "\n", " 10", " on", "\ufffd", " apples", "."]
    # The prompt the in-process simulator sends (its value slots empty), sent to the server too.
    slot = simulators.value_slot(L.resolve(C.EMBEDDED_LLM, None))
    prompt = SP.logprob_prompt("fruit, especially apples", tokens, SP.load_examples(), slot)
    seen = {}

    async def remote(url):
        ep = L.resolve(C.EMBEDDED_LLM, url)
        async with L.LLM(ep, tmp_path / "http", stage="test",
                         cfg=C.LLMConfig(timeout_s=300)) as llm:
            caps = await L.probe(llm)
            c = await llm.chat(MSG, max_tokens=8)
            e = await llm.complete(prompt.text, max_tokens=1, echo=True, logprobs=100)
            return ep, caps, c, e

    with server.serve(C.EMBEDDED_LLM, tmp_path / "server.log") as url:
        seen["ok"] = server.live_pids()
        ep, caps, c, e = arun(remote(url))
    assert not ep.embedded and c.text and c.prompt_tokens > 0
    assert caps.echo_logprobs and caps.echo_shift == 1  # llama-cpp-python: one row early
    assert {r.host for r in ledger.calls(tmp_path / "http")} == {ep.host}
    served = SP.parse_echo(prompt, e.tokens, e.top_logprobs, e.text_offset, shift=1)

    async def local():
        cfg = C.SimulateConfig(run=tmp_path / "local")
        async with simulators.open_simulator(cfg, L.resolve(C.EMBEDDED_LLM, None)) as sim:
            return await sim.predict("fruit, especially apples", tokens, "k")

    mine = arun(local())
    # Q4_1 weights with 8-bit activations there, float32 here, and two tokenizers that split a
    # few characters differently: close, not equal.
    assert served.error is None and mine.error is None and np.std(mine.predicted) > 0
    assert np.corrcoef(served.predicted, mine.predicted)[0, 1] > 0.9
    assert np.mean(np.abs(np.subtract(served.predicted, mine.predicted))) < 0.5

    with pytest.raises(RuntimeError):
        with server.serve(C.EMBEDDED_LLM, tmp_path / "server.log"):
            seen["boom"] = server.live_pids()
            raise RuntimeError("boom")
    assert len(seen["ok"]) == 1 and len(seen["boom"]) == 1 and not server.live_pids()
    for pids in seen.values():
        assert not psutil.pid_exists(pids[0])  # stopped and reaped, not left running


_HOLD_SERVER = """
import sys, time
from pathlib import Path
from explainer.llm import server

server.start("smollm2-135m", Path(sys.argv[1]) / "server.log", logits_all=False)
print(server.live_pids()[0], flush=True)
time.sleep(600)
"""


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGINT", "SIGKILL"])
def test_no_orphan_after_ctrl_c_or_kill(tmp_path, sig):
    """Ctrl-C runs the clean-up; SIGKILL skips it, and the kernel's parent-death signal acts."""
    pytest.importorskip("llama_cpp")
    import signal
    import subprocess
    import sys
    from pathlib import Path

    psutil = pytest.importorskip("psutil")
    root = Path(__file__).resolve().parent.parent
    # A shell runs background jobs with SIGINT ignored, and Python keeps an ignored SIGINT
    # ignored: give the child a terminal's default so Ctrl-C means what it means there.
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_SERVER, str(tmp_path)], cwd=root,
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(root)},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        pid = int(proc.stdout.readline())
        assert psutil.pid_exists(pid)
        proc.send_signal(getattr(signal, sig))
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while psutil.pid_exists(pid) and time.monotonic() < deadline:
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    break  # dead; its parent is gone, so init reaps it
            except psutil.NoSuchProcess:
                break
            time.sleep(0.1)
        alive = psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        assert not alive, f"embedded server {pid} outlived its parent after {sig}"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_check_passes_when_server_has_no_model_list(tmp_path):
    with FakeOpenAI(models=None) as fake:
        async def go():
            async with _llm(fake, tmp_path, model="anything") as llm:
                await L.probe(llm, echo=False)
                return (await llm.chat(MSG, max_tokens=5)).text

        assert arun(go()) == "words about topic"


def test_probe_reads_the_echo_convention_from_certain_tokens():
    import importlib

    P = importlib.import_module("explainer.llm.probe")
    toks = [" a", " b", " c", " d", " e"]
    aligned = [None] + [{t: -0.01, " z": -3.0} for t in toks[1:]]  # row i predicts token i
    # llama-cpp-python: row i predicts token i+1 and also lists token i itself, unlikely
    shifted = [{toks[i + 1]: -0.01, toks[i]: -9.0} for i in range(4)] + [{toks[4]: -9.0}]
    assert P.echo_shift(toks, aligned) == 0
    assert P.echo_shift(toks, shifted) == 1
    assert P.echo_shift(toks, [{" z": -0.1}] * 5) is None  # neither fits: not usable
    assert P.echo_shift(toks, [None] * 5) is None


def _probe_fails(reply):
    def handler(req):
        body = req.body or {}
        if req.path.endswith("/completions") and body.get("echo"):
            return reply()
        return default_handler(req)
    return handler


@pytest.mark.parametrize("reply,cfg", [
    (lambda: Reply.error(500), FAST),
    (lambda: Reply.error(503, retry_after=0.01), FAST),
    (lambda: Reply.hang(2.0), C.LLMConfig(timeout_s=0.3, max_retries=1, backoff_s=0.01))])
def test_probe_that_meets_a_server_error_fails_loudly_after_retries(tmp_path, reply, cfg):
    with FakeOpenAI(_probe_fails(reply)) as fake:
        async def go():
            async with _llm(fake, tmp_path, cfg=cfg) as llm:
                return await L.probe(llm)

        with pytest.raises(ExplainError, match="failed the capability probe"):
            arun(go())
        probes = [r for r in fake.requests if (r.body or {}).get("echo")]
        assert len(probes) == 1 + cfg.max_retries  # retried like any request, then loud


def test_auto_mode_is_not_downgraded_to_chat_by_a_failing_probe(tmp_path):
    from explainer.simulate import stage as simulate
    from tests import runfactory as RF
    from explainer import run as rundir

    run = RF.make_run(tmp_path / "run", n_layers=1, d_mlp=2, n_excerpts=8, ctx=8)
    rundir.write_rows(run, "explanations", [rundir.ExplanationRow(
        RF.MODEL, 0, 0, "x", "p" * 12, 0, "words", 1, 1, "ok", None)])
    with FakeOpenAI(_probe_fails(lambda: Reply.error(500))) as fake:
        cfg = C.SimulateConfig(run=run, simulator="fake-model", mode="auto", llm=C.LLMConfig(
            base_url=fake.base_url, max_retries=1, backoff_s=0.01))
        with pytest.raises(ExplainError, match="failed the capability probe"):
            simulate.run(cfg)
        assert fake.count("/chat/completions") == 0  # no silent fall-back to chat
    assert not (run / "simulations").exists() and not (run / "scores").exists()


# --- the ledger's read API -----------------------------------------------------------------


def _raw(run, sql: str, args=()) -> list[tuple]:
    """The ledger file read with plain SQL: the independent side of the read API's checks."""
    db = sqlite3.connect(ledger.path(run))
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def test_ledger_totals_count_each_request_once_and_in_process_calls_are_free(tmp_path):
    led = ledger.Ledger.for_run(tmp_path)
    # An endpoint's answer, its cache hit on a rerun, and a failed attempt before it.
    led.log({"stage": "describe", "key": "L0/N1/explain", "request": "r1", "model": "gpt-4o-mini",
             "host": "127.0.0.1:9", "status": "rate_limited", "cached": 0, "attempt": 0})
    led.log({"stage": "describe", "key": "L0/N1/explain", "request": "r1", "model": "gpt-4o-mini",
             "host": "127.0.0.1:9", "prompt_tokens": 1000, "completion_tokens": 20,
             "status": "ok", "cached": 0, "attempt": 1})
    led.log({"stage": "describe", "key": "L0/N1/explain", "request": "r1", "model": "gpt-4o-mini",
             "host": "127.0.0.1:9", "prompt_tokens": 1000, "completion_tokens": 20,
             "status": "ok", "cached": 1, "attempt": 0})
    # The embedded simulator evaluated in this process: billed-equivalent and evaluated tokens.
    for n, (billed, ran) in enumerate([(800, 800), (820, 120), (790, 100)]):
        led.log_call(stage="simulate", key=f"L0/N{n}/sim/e{n}", request=f"s{n}",
                     model="smollm2-135m", host=ledger.IN_PROCESS, prompt_tokens=billed,
                     evaluated_tokens=ran, latency_s=0.5)
    led.log_call(stage="simulate", key="probe/echo", request="p", model="smollm2-135m",
                 host=ledger.IN_PROCESS, prompt_tokens=5)
    led.close()

    calls = ledger.calls(tmp_path)
    assert len(calls) == len(_raw(tmp_path, "SELECT id FROM calls")) == 7
    got = ledger.totals(calls)
    assert list(got) == [("describe", "gpt-4o-mini"), ("simulate", "smollm2-135m")]
    d, s = got[("describe", "gpt-4o-mini")], got[("simulate", "smollm2-135m")]
    # One request, answered once and read once from the cache: counted once, priced from the
    # table (independently: 1000 prompt and 20 completion tokens at prices.json's rates).
    p_in, p_out = ledger.price("gpt-4o-mini")
    assert (d.neurons, d.calls, d.sent, d.prompt_tokens, d.completion_tokens) == (1, 1, 1, 1000, 20)
    assert d.usd == pytest.approx((1000 * p_in + 20 * p_out) / 1e6)
    assert (s.neurons, s.calls, s.sent) == (3, 4, 4)
    assert s.prompt_tokens == sum(r[0] for r in _raw(
        tmp_path, "SELECT prompt_tokens FROM calls WHERE stage = 'simulate'"))
    assert s.evaluated_tokens == 800 + 120 + 100 + 5  # the probe ran what it billed
    assert s.usd == 0.0  # a model on this machine costs no dollars, not "unknown"
    # The cost view reads the same figures.
    from explainer.views import cost

    rows = cost.cost_rows(cost.read_calls(tmp_path))
    assert [(r.stage, r.calls, r.prompt_tokens, r.usd) for r in rows] == \
        [("describe", 1, 1000, d.usd), ("simulate", 4, s.prompt_tokens, 0.0)]
    assert rows[1].per_neuron == pytest.approx((4 / 3, (800 + 820 + 790 + 5) / 3, 0.0, 0.0))
    per_neuron = ledger.totals(calls, by=("neuron",))
    assert per_neuron[((0, 1),)].prompt_tokens == 1000 + 820  # describe + simulate of L0/N1
    assert per_neuron[(None,)].calls == 1  # the probe names no neuron


def test_ledger_calls_filter_by_stage_key_prefix_time_and_cache(tmp_path):
    led = ledger.Ledger.for_run(tmp_path)
    rows = [("describe", "puzzles/a_b/explain", 0), ("simulate", "puzzles/a%b/0", 1),
            ("simulate", "puzzles/a_b/1", 0), ("simulate", "L0/N0/x", 0)]
    for i, (stage, key, cached) in enumerate(rows):
        led.log_call(stage=stage, key=key, request=f"r{i}", model="m", host="h",
                     prompt_tokens=i, cached=bool(cached))
    led.close()
    keys = lambda **kw: [c.key for c in ledger.calls(tmp_path, **kw)]  # noqa: E731
    assert keys() == [k for _, k, _ in rows]
    assert keys(key_prefix="puzzles/a_b/") == ["puzzles/a_b/explain", "puzzles/a_b/1"]  # not LIKE
    assert keys(stage="simulate", sent=True) == ["puzzles/a_b/1", "L0/N0/x"]
    assert keys(sent=False) == ["puzzles/a%b/0"]
    t = sorted(r[0] for r in _raw(tmp_path, "SELECT time FROM calls"))
    assert keys(since=t[-1]) == [k for (_, k, _), when in zip(rows, _raw(
        tmp_path, "SELECT time FROM calls ORDER BY id")) if when[0] >= t[-1]]
    assert ledger.counts(tmp_path) == (4, 3)
    assert ledger.calls(tmp_path / "none") == [] and ledger.counts(tmp_path / "none") == (0, 0)


def test_a_ledger_from_before_evaluated_tokens_reads_and_merges(tmp_path):
    # The schema of an older version: no saved_usd, no evaluated_tokens.
    old = """CREATE TABLE cache (request TEXT PRIMARY KEY, model TEXT NOT NULL,
                                 answer TEXT NOT NULL, created REAL NOT NULL);
             CREATE TABLE calls (id INTEGER PRIMARY KEY, time REAL NOT NULL, stage TEXT, key TEXT,
                 request TEXT, model TEXT, host TEXT, prompt_tokens INTEGER,
                 completion_tokens INTEGER, latency_s REAL, cached INTEGER, status TEXT,
                 error TEXT, attempt INTEGER, cost_usd REAL);"""
    row = ("INSERT INTO calls (time, stage, key, request, model, host, prompt_tokens, "
           "completion_tokens, latency_s, cached, status, error, attempt, cost_usd) "
           "VALUES (1.0, 'describe', 'L0/N0/e', ?, 'm', 'h', 7, 2, 0.1, 0, 'ok', NULL, 0, NULL)")
    for file, request in ((ledger.path(tmp_path), "a"),
                          (tmp_path / ledger.WORKERS_DIR / "w1.sqlite", "b")):
        file.parent.mkdir(exist_ok=True)
        db = sqlite3.connect(file)
        db.executescript(old)
        db.execute(row, (request,))
        db.commit()
        db.close()
    (c,) = ledger.calls(tmp_path)  # read as is, the new column as prompt_tokens
    assert (c.request, c.prompt_tokens, c.evaluated_tokens, c.saved_usd) == ("a", 7, 7, None)
    assert ledger.merge_workers(tmp_path) == 1
    assert [(c.request, c.evaluated_tokens) for c in ledger.calls(tmp_path)] == [("a", 7), ("b", 7)]
