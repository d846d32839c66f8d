"""The endpoint pool (several --base-url) and the answer cache shared by workers, against real
fake servers on loopback."""

from __future__ import annotations

import asyncio
import sqlite3
import threading

from explainer import config as C
from explainer import llm as L
from explainer.llm import ledger
from tests.fake_openai import FakeOpenAI, Reply


def _msgs(i):
    return [{"role": "user", "content": f"question {i}"}]


def _pool(fakes, tmp_path, cfg, writer=None):
    ep = L.resolve("fake-model", [f.base_url for f in fakes])
    return L.LLM(ep, tmp_path, stage="test", cfg=cfg, writer=writer)


def _ask(llm_factory, n, start=0):
    async def go():
        async with llm_factory() as llm:
            out = await asyncio.gather(*(llm.chat(_msgs(i), max_tokens=5)
                                         for i in range(start, start + n)))
            return out, llm
    return asyncio.run(go())


def _hosts(tmp_path, status="ok"):
    db = sqlite3.connect(ledger.path(tmp_path))
    try:
        return [r[0] for r in db.execute("SELECT host FROM calls WHERE status = ? AND cached = 0",
                                         (status,))]
    finally:
        db.close()


def test_requests_spread_over_the_pool(tmp_path):
    with FakeOpenAI(latency_s=0.05) as a, FakeOpenAI(latency_s=0.05) as b:
        out, llm = _ask(lambda: _pool([a, b], tmp_path, C.LLMConfig(concurrency=4)), 40)
        assert len(out) == 40 and a.completions() + b.completions() == 40
        # +1: the server counts a request done only after its answer is sent, so the client's
        # next request on that slot may arrive a moment before.
        assert a.max_in_flight <= 5 and b.max_in_flight <= 5
        assert a.completions() >= 12 and b.completions() >= 12  # both took a real share
    assert set(_hosts(tmp_path)) == {f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"}


def test_429_lowers_that_endpoints_concurrency(tmp_path):
    with FakeOpenAI(latency_s=0.05) as a, FakeOpenAI(latency_s=0.05) as b:
        a.push(*[Reply.error(429, retry_after=0.3) for _ in range(3)])
        cfg = C.LLMConfig(concurrency=8, backoff_s=0.01, max_retries=4)
        out, llm = _ask(lambda: _pool([a, b], tmp_path, cfg), 40)
        assert len(out) == 40
        limit_a, limit_b = (m.limit for m in llm.pool.members)
        assert limit_a < 8 and limit_b == 8  # halved, and regrowing by 1/limit per success
        assert b.completions() > a.completions() - 3
        assert "429" in llm.summary()


def test_a_dead_endpoint_is_drained_and_its_requests_go_elsewhere(tmp_path):
    with FakeOpenAI(latency_s=0.02) as a, FakeOpenAI(latency_s=0.02) as b:
        dead = a.base_url
        a.stop()  # nothing listens there any more
        cfg = C.LLMConfig(concurrency=4, max_retries=0)  # a failure that is not re-sent is lost
        ep = L.resolve("fake-model", [dead, b.base_url])
        out, llm = _ask(lambda: L.LLM(ep, tmp_path, stage="test", cfg=cfg), 30)
        assert len(out) == 30 and b.completions() == 30
        dead_m = llm.pool.members[0]
        assert dead_m.stats["drained"] >= 1 and dead_m.stats["ok"] == 0
        assert "re-sent to another endpoint" in llm.summary()
    assert set(_hosts(tmp_path, "connection")) == {dead.split("//")[1].split("/")[0]}


def test_cache_is_keyed_by_model_and_request_not_host(tmp_path):
    cfg = C.LLMConfig(concurrency=4)
    with FakeOpenAI() as a:
        first, _ = _ask(lambda: _pool([a], tmp_path, cfg), 5)
    with FakeOpenAI() as b:  # another replica of the same model: every answer is cached
        again, _ = _ask(lambda: _pool([b], tmp_path, cfg), 5)
        assert b.completions() == 0 and all(c.cached for c in again)
        assert [c.text for c in again] == [c.text for c in first]
        b.models.append("other-model")  # another model name at the same host is asked anew
        ep = L.resolve("other-model", b.base_url)
        _ask(lambda: L.LLM(ep, tmp_path, stage="test", cfg=cfg), 5)
        assert b.completions() == 5


def test_workers_write_their_own_files_and_share_answers(tmp_path):
    cfg = C.LLMConfig(concurrency=4)
    with FakeOpenAI(latency_s=0.01) as fake:
        # Two workers at once, each its own SQLite writer (no lock is ever shared).
        results = {}

        def worker(name, start):
            results[name] = _ask(lambda: _pool([fake], tmp_path, cfg, writer=name), 50, start)

        threads = [threading.Thread(target=worker, args=(f"w{k}", 50 * k)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        files = sorted(p.name for p in (tmp_path / ledger.WORKERS_DIR).glob("*.sqlite"))
        assert files == ["w0.sqlite", "w1.sqlite"] and fake.completions() == 100
        # A third worker reads both files: nothing asked twice.
        again, _ = _ask(lambda: _pool([fake], tmp_path, cfg, writer="w2"), 100)
        assert fake.completions() == 100 and all(c.cached for c in again)
    # The driver folds the worker files into the run's ledger: every answer and every call row.
    assert ledger.merge_workers(tmp_path) == 3
    assert not list((tmp_path / ledger.WORKERS_DIR).glob("*.sqlite"))
    db = sqlite3.connect(ledger.path(tmp_path))
    assert db.execute("SELECT count(*) FROM cache").fetchone()[0] == 100
    assert db.execute("SELECT count(*), sum(cached) FROM calls").fetchone() == (200, 100)
    db.close()
