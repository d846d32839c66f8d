"""Sharded recording: the same tables whatever the shards, the engine, or a kill in between."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cli import app
from explainer import run as rundir

runner = CliRunner()


def _record(run, model, corpus, *extra):
    res = runner.invoke(app, ["record", "--model", str(model), "--corpus", str(corpus),
                              "--run", str(run), "--n-excerpts", "70", "--ctx", "16",
                              "--top-k", "6", "--random-k", "6", "--batch-size", "8",
                              "--layers", "0,1", "--sides", "both", *extra])
    assert res.exit_code == 0, res.output
    return res


def _tables(run) -> dict[str, pd.DataFrame]:
    out = {}
    for name, key in (("excerpts", ["excerpt_id"]),
                      ("records", ["layer", "neuron", "kind", "rank"]),
                      ("neurons", ["layer", "neuron"])):
        out[name] = rundir.read(run, name).sort_values(key).reset_index(drop=True)
    return out


def assert_same_tables(a, b) -> None:
    """Ids, ranks, splits and activations bit for bit; statistics within 1e-9 relative."""
    ta, tb = _tables(a), _tables(b)
    for name in ("excerpts", "records"):
        x, y = ta[name], tb[name]
        assert len(x) == len(y) > 0, name
        for col in x.columns:
            if x[col].dtype == object and isinstance(x[col].iloc[0], np.ndarray):
                assert all(np.array_equal(p, q) for p, q in zip(x[col], y[col])), (name, col)
            else:
                assert x[col].tolist() == y[col].tolist(), (name, col)
    x, y = ta["neurons"], tb["neurons"]
    for col in ("mean", "std", "density"):
        np.testing.assert_allclose(x[col], y[col], rtol=1e-9, atol=1e-12)
    for col in ("max", "min", "n_tokens"):
        assert x[col].tolist() == y[col].tolist(), col


@pytest.fixture(scope="module")
def one_shard(tmp_path_factory, tiny_gpt2, tiny_corpus):
    run = tmp_path_factory.mktemp("one") / "r"
    _record(run, tiny_gpt2, tiny_corpus, "--shards", "1")
    return run


def test_shards_merge_to_the_same_tables(one_shard, tmp_path, tiny_gpt2, tiny_corpus):
    _record(tmp_path / "r", tiny_gpt2, tiny_corpus, "--shards", "4")
    assert_same_tables(one_shard, tmp_path / "r")
    assert not list((tmp_path / "r").glob(".staging-*"))  # shards are gone once written


def test_a_killed_record_resumes_from_finished_shards(one_shard, tmp_path, tiny_gpt2,
                                                     tiny_corpus, monkeypatch):
    from explainer.record import shards

    real, calls, dying = shards.run_shard, [], [True]

    def dies_on_the_second(task, *a, **kw):
        calls.append(task.index)
        if task.index == 1 and dying[0]:
            raise KeyboardInterrupt  # as a kill would, half-way through the pass
        return real(task, *a, **kw)

    monkeypatch.setattr(shards, "run_shard", dies_on_the_second)
    res = runner.invoke(app, ["record", "--model", str(tiny_gpt2), "--corpus", str(tiny_corpus),
                              "--run", str(tmp_path / "r"), "--n-excerpts", "70", "--ctx", "16",
                              "--top-k", "6", "--random-k", "6", "--batch-size", "8",
                              "--layers", "0,1", "--sides", "both", "--shards", "3"])
    assert res.exit_code == 130 and calls == [0, 1]
    assert len(list((tmp_path / "r").glob(".staging-*/shard-*/done.json"))) == 1
    calls.clear()
    dying[0] = False
    res = _record(tmp_path / "r", tiny_gpt2, tiny_corpus, "--shards", "3")
    assert calls == [1, 2] and "1 of 3 shards already recorded" in res.stderr
    assert_same_tables(one_shard, tmp_path / "r")


def test_ray_engine_records_the_same_tables(one_shard, tmp_path, tiny_gpt2, tiny_corpus,
                                            ray_cluster):
    _record(tmp_path / "r", tiny_gpt2, tiny_corpus, "--shards", "3", "--engine", "ray",
            "--workers", "2")
    assert_same_tables(one_shard, tmp_path / "r")


def _kill_a_worker_mid_shard(stage_glob, stop, killed):
    """Kill a Ray worker process as soon as some shard has started and not finished."""
    import time

    import psutil

    while not stop.is_set():
        started = [d for d in stage_glob() if not (d / "done.json").exists()]
        if started:
            for p in psutil.process_iter(["name", "cmdline"]):
                title = " ".join([p.info["name"] or ""] + (p.info["cmdline"] or [])[:1])
                if "ray::Worker" in title:
                    p.kill()
                    killed.append(started[0].name)
                    return
        time.sleep(0.005)


def test_a_killed_ray_worker_is_retried_and_the_tables_are_the_same(tmp_path, tiny_gpt2,
                                                                   tiny_corpus, ray_cluster):
    import threading

    args = ["--n-excerpts", "400", "--shards", "2"]
    local = tmp_path / "local"
    runner.invoke(app, ["record", "--model", str(tiny_gpt2), "--corpus", str(tiny_corpus),
                        "--run", str(local), "--ctx", "16", "--top-k", "6", "--random-k", "6",
                        "--batch-size", "8", "--layers", "0,1", "--sides", "both", *args])
    run = tmp_path / "ray"
    stop, killed = threading.Event(), []
    watcher = threading.Thread(target=_kill_a_worker_mid_shard, args=(
        lambda: sorted(run.glob(".staging-*/shard-*")), stop, killed))
    watcher.start()
    try:
        res = runner.invoke(app, ["record", "--model", str(tiny_gpt2), "--corpus",
                                  str(tiny_corpus), "--run", str(run), "--ctx", "16",
                                  "--top-k", "6", "--random-k", "6", "--batch-size", "8",
                                  "--layers", "0,1", "--sides", "both", "--engine", "ray",
                                  *args])
    finally:
        stop.set()
        watcher.join()
    assert res.exit_code == 0, res.output
    assert killed  # a worker died mid-shard; Ray restarted it and retried its shard
    assert_same_tables(local, run)


@pytest.mark.slow
def test_ray_engine_on_the_embedded_model(tmp_path, ray_cluster):
    common = ["record", "--model", "smollm2-135m", "--n-excerpts", "48", "--ctx", "16",
              "--top-k", "4", "--random-k", "4", "--batch-size", "8", "--layers", "0,29"]
    assert runner.invoke(app, [*common, "--run", str(tmp_path / "a")]).exit_code == 0
    res = runner.invoke(app, [*common, "--run", str(tmp_path / "b"), "--shards", "2",
                              "--engine", "ray"])
    assert res.exit_code == 0, res.output
    assert_same_tables(tmp_path / "a", tmp_path / "b")
