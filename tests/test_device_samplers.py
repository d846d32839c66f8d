"""The device samplers (record/device.py) against the Numba ones (samplers.py), which
test_samplers.py checks against brute force: the same ids, ranks, values and activations, and
the same moments, on CPU tensors and, where there is one, on a CUDA GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli import app
from explainer.record import device, samplers
from tests.test_shards import assert_same_tables

runner = CliRunner()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device here"))]


def _tied_acts(rng, n_ex: int, ctx: int, n: int) -> np.ndarray:
    """Small integers (many exact ties between excerpts), zeros of both signs."""
    acts = rng.integers(-3, 4, (n_ex, ctx, n)).astype(np.float32)
    zeros = acts == 0
    acts[zeros] = rng.choice(np.array([0.0, -0.0], np.float32), zeros.sum())
    return acts


def _batches(order: np.ndarray, size: int):
    for s in range(0, len(order), size):
        yield order[s:s + size]


@pytest.mark.parametrize("dev", DEVICES)
def test_hashed_keys_are_the_same_bits(dev):
    rng = np.random.default_rng(0)
    ids = np.concatenate([np.arange(50), rng.integers(0, 2 ** 62, 200)])
    for stream in (0, 1, samplers.stream_id(7, "random", "m", 3), 2 ** 64 - 1):
        want = samplers.hashed_keys(stream, ids, 97)
        got = device.hashed_keys(stream, torch.from_numpy(ids).to(dev), 97)
        assert got.dtype == torch.float32 and got.device.type == dev
        np.testing.assert_array_equal(got.cpu().numpy(), want)


@pytest.mark.parametrize("dev", DEVICES)
def test_top_and_bottom_and_moments_equal_the_cpu_samplers(dev):
    rng = np.random.default_rng(1)
    n_ex, ctx, n, k = 150, 5, 37, 9
    acts = _tied_acts(rng, n_ex, ctx, n)
    for trial, order in enumerate((np.arange(n_ex), np.arange(n_ex)[::-1],
                                   rng.permutation(n_ex), rng.permutation(n_ex))):
        size = (7, 16, 1, 40)[trial]  # batches smaller and larger than k
        cpu = [samplers.TopK(k, n, ctx), samplers.TopK(k, n, ctx), samplers.Stats(n)]
        gpu = [device.TopK(k, n, ctx, dev), device.TopK(k, n, ctx, dev), device.Stats(n, dev)]
        for ids in _batches(order, size):
            x, i = torch.from_numpy(acts[ids]), torch.from_numpy(ids.copy())
            for (top, bottom, stats), x, i in ((cpu, x, i), (gpu, x.to(dev), i.to(dev))):
                bmax, bmin = stats.update(x)
                top.update(x, i, bmax)
                bottom.update(x, i, -bmin)
        for c, g in zip(cpu[:2], gpu[:2]):
            for want, got in zip(c.ranked(), g.ranked()):
                assert got.dtype == want.dtype
                np.testing.assert_array_equal(got, want)
        _assert_same_moments(cpu[2], gpu[2])
    ids, _, _ = gpu[0].ranked()  # and they are the brute-force top-k: (max desc, id asc)
    for j in range(n):
        assert ids[j].tolist() == np.lexsort((np.arange(n_ex), -acts[:, :, j].max(1)))[:k].tolist()


def _assert_same_moments(cpu: samplers.Stats, gpu: device.Stats) -> None:
    want, got = cpu.summary(), gpu.summary()
    for name in ("mean", "std", "density"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-9, atol=1e-12)
    for name in ("max", "min", "n_tokens"):
        np.testing.assert_array_equal(got[name], want[name])
    host = gpu.to_numpy()
    np.testing.assert_allclose(host.sum, cpu.sum, rtol=1e-9)
    np.testing.assert_allclose(host.sumsq, cpu.sumsq, rtol=1e-9)
    np.testing.assert_array_equal(host.pos, cpu.pos)


@pytest.mark.parametrize("dev", DEVICES)
def test_moments_of_real_valued_activations(dev):
    rng = np.random.default_rng(2)
    acts = (rng.normal(size=(70, 64, 300)) * rng.uniform(0.1, 30, 300)).astype(np.float32)
    cpu, gpu = samplers.Stats(300), device.Stats(300, dev)
    for ids in _batches(np.arange(70), 32):
        a, b = cpu.update(torch.from_numpy(acts[ids])), gpu.update(torch.from_numpy(acts[ids])
                                                                   .to(dev))
        for want, got in zip(a, b):
            np.testing.assert_array_equal(got.cpu().numpy(), want.numpy())
    _assert_same_moments(cpu, gpu)


@pytest.mark.parametrize("dev", DEVICES)
def test_random_pool_and_its_sample_equal_the_cpu_ones(dev):
    rng = np.random.default_rng(3)
    n_ex, ctx, n, r, extra = 120, 4, 23, 6, 5
    acts = rng.normal(size=(n_ex, ctx, n)).astype(np.float32)
    stream = samplers.stream_id(0, "random", "m", 1)
    exclude = np.stack([rng.choice(n_ex, 2 * extra, replace=False) for _ in range(n)])
    keys = samplers.hashed_keys(stream, np.arange(n_ex), n)
    exclude[::2] = np.argsort(keys, axis=0)[:2 * extra, ::2].T  # every other neuron's pool
    cpu = samplers.RandomSample(r, extra, n, ctx, stream)
    gpu = device.RandomSample(r, extra, n, ctx, stream, dev)
    for ids in _batches(rng.permutation(n_ex), 11):
        x, i = torch.from_numpy(acts[ids]), torch.from_numpy(ids.copy())
        cpu.update(x, i)
        gpu.update(x.to(dev), i.to(dev))
    for want, got in zip(cpu.pool.ranked(), gpu.pool.ranked()):
        np.testing.assert_array_equal(got, want)
    for want, got in zip(cpu.sample(exclude), gpu.sample(exclude)):
        np.testing.assert_array_equal(got, want)
    ids = gpu.sample(exclude)[0]  # the pool ran short where its first 10 were excluded
    assert (ids[::2, 1:] == -1).all() and (ids[1::2] >= 0).all()
    empty = device.RandomSample(0, extra, n, ctx, stream, dev)
    empty.update(torch.from_numpy(acts[:3]).to(dev), torch.arange(3).to(dev))
    assert empty.sample(exclude)[0].shape == (n, 0)


def _record(run, model, corpus, *extra):
    res = runner.invoke(app, ["record", "--model", str(model), "--corpus", str(corpus),
                              "--run", str(run), "--n-excerpts", "70", "--ctx", "16",
                              "--top-k", "6", "--random-k", "6", "--batch-size", "8",
                              "--layers", "0,1", "--sides", "both", "--shards", "2", *extra])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("dev", DEVICES)
def test_a_record_with_the_device_samplers_writes_the_same_tables(dev, tmp_path, tiny_gpt2,
                                                                  tiny_corpus, monkeypatch):
    """The same model on the same device, its activations sampled by one kind then the other
    (on a GPU the forward passes give the same activations both times)."""
    from explainer.record import shards

    chosen = []
    real = shards.on_device

    def numba(cfg):
        chosen.append(real(cfg))
        return False

    monkeypatch.setattr(shards, "on_device", numba)
    _record(tmp_path / "numba", tiny_gpt2, tiny_corpus, "--device", dev)
    monkeypatch.setattr(shards, "on_device", lambda cfg: True)
    _record(tmp_path / "device", tiny_gpt2, tiny_corpus, "--device", dev)
    assert chosen and all(c == (dev == "cuda") for c in chosen)  # what record would pick
    assert_same_tables(tmp_path / "numba", tmp_path / "device")
