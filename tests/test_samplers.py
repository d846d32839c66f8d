"""Samplers against brute force: explicit tie rule, per-neuron hashed random sample, both signs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli import app
from explainer import run as rundir
from explainer.record.samplers import RandomSample, TopK, hashed_keys, stream_id

runner = CliRunner()


def _feed(sampler_update, acts: np.ndarray, order: list[int], batch: int = 7) -> None:
    """Offer excerpts in `order` (any permutation of ids), in batches."""
    for s in range(0, len(order), batch):
        ids = np.array(order[s:s + batch])
        sampler_update(torch.from_numpy(acts[ids]), torch.from_numpy(ids))


def test_topk_ties_break_by_id_whatever_the_arrival_order():
    rng = np.random.default_rng(1)
    acts = rng.integers(0, 4, (60, 3, 20)).astype(np.float32)  # many exact ties
    maxima = acts.max(axis=1)
    for order in (list(range(60)), list(range(59, -1, -1)), list(rng.permutation(60))):
        top = TopK(8, 20, 3)
        _feed(lambda a, i: top.update(a, i, a.amax(dim=1)), acts, order)
        ids, vals, got = top.ranked()
        for n in range(20):
            want = np.lexsort((np.arange(60), -maxima[:, n]))[:8]  # value desc, then id asc
            assert ids[n].tolist() == want.tolist()
            np.testing.assert_array_equal(got[n], acts[want, :, n])


def test_random_sample_is_the_smallest_hashed_keys_outside_the_excluded():
    rng = np.random.default_rng(2)
    n_ex, n_neurons, r, extra = 90, 13, 6, 5
    acts = rng.normal(size=(n_ex, 4, n_neurons)).astype(np.float32)
    stream = stream_id(0, "random", "m", 3)
    exclude = np.stack([rng.choice(n_ex, extra, replace=False) for _ in range(n_neurons)])
    results = []
    for order in (list(range(n_ex)), list(rng.permutation(n_ex))):
        rs = RandomSample(r, extra, n_neurons, 4, stream)
        _feed(rs.update, acts, order)
        results.append(rs.sample(exclude))
    keys = hashed_keys(stream, np.arange(n_ex), n_neurons)  # (n_ex, N)
    for n in range(n_neurons):
        ranked = [e for e in np.lexsort((np.arange(n_ex), keys[:, n])) if e not in exclude[n]]
        for ids, got in results:  # the same whatever the reading order
            assert ids[n].tolist() == ranked[:r]
            np.testing.assert_array_equal(got[n], acts[ranked[:r], :, n])
    assert len({tuple(row) for row in results[0][0]}) == n_neurons  # each neuron its own


def test_hashed_keys_look_uniform_and_depend_on_every_part():
    k = hashed_keys(stream_id(0, "random", "m", 0), np.arange(4000), 50)
    assert 0 <= k.min() and k.max() < 1 and abs(k.mean() - 0.5) < 0.01
    assert abs(np.corrcoef(k[:, 0], k[:, 1])[0, 1]) < 0.05
    other = hashed_keys(stream_id(0, "random", "m", 1), np.arange(4000), 50)
    assert not np.array_equal(k, other)


def _hf_min_max(model_dir, token_ids, layer):
    from tests.test_record import _hf_acts

    acts = _hf_acts(model_dir, token_ids, layer)
    return acts.max(axis=1), acts.min(axis=1)


@pytest.fixture(scope="module")
def both_sides(tmp_path_factory, tiny_gpt2, tiny_corpus):
    run = tmp_path_factory.mktemp("sides") / "r"
    res = runner.invoke(app, ["record", "--model", str(tiny_gpt2), "--corpus", str(tiny_corpus),
                              "--run", str(run), "--n-excerpts", "70", "--ctx", "16",
                              "--top-k", "8", "--random-k", "6", "--layers", "1",
                              "--sides", "both"])
    assert res.exit_code == 0, res.output
    return run


def test_bottom_excerpts_rank_by_min_and_random_ones_are_disjoint(both_sides, tiny_gpt2):
    ex = rundir.read(both_sides, "excerpts", model="tiny-gpt2").sort_values("excerpt_id")
    maxima, minima = _hf_min_max(tiny_gpt2, np.stack(ex.token_ids.to_numpy()), 1)
    rec = rundir.read(both_sides, "records", model="tiny-gpt2", layer=1)
    assert set(rec.kind) == {"top", "bottom", "random"}
    for n, g in rec.groupby("neuron"):
        bottom = g[g.kind == "bottom"].sort_values("rank").excerpt_id.to_numpy()
        want = np.lexsort((np.arange(len(minima)), minima[:, n]))[:8]  # min asc, id asc
        np.testing.assert_allclose(minima[bottom, n], minima[want, n], atol=1e-5)
        held = set(g[g.kind != "random"].excerpt_id)
        rand = g[g.kind == "random"]
        assert len(rand) == 6 and not held & set(rand.excerpt_id)
    meta = json.loads((both_sides / "run.json").read_text())["models"]["tiny-gpt2"]
    assert meta["sides"] == ["pos", "neg"] and meta["settings"]["bos_id"] is not None


def test_gelu_model_keeps_only_the_positive_side(tmp_path, tiny_gpt2, tiny_corpus):
    run = tmp_path / "r"
    res = runner.invoke(app, ["record", "--model", str(tiny_gpt2), "--corpus", str(tiny_corpus),
                              "--run", str(run), "--n-excerpts", "30", "--ctx", "16",
                              "--top-k", "4", "--random-k", "3", "--layers", "0"])
    assert res.exit_code == 0, res.output
    rec = rundir.read(run, "records", model="tiny-gpt2", layer=0)
    assert "bottom" not in set(rec.kind)
    assert json.loads((run / "run.json").read_text())["models"]["tiny-gpt2"]["sides"] == ["pos"]


def test_adding_layers_from_changed_text_is_refused(tmp_path, tiny_gpt2):
    from pydoc_data.topics import topics

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("\n\n".join(topics[k] for k in sorted(topics)[:6]))
    run = tmp_path / "r"
    common = ["record", "--model", str(tiny_gpt2), "--corpus", str(corpus), "--run", str(run),
              "--n-excerpts", "30", "--ctx", "16", "--top-k", "4", "--random-k", "3"]
    assert runner.invoke(app, [*common, "--layers", "0"]).exit_code == 0
    before = sorted(run.rglob("*"))
    (corpus / "0.txt").write_text("A new first file changes every excerpt. " * 200)
    res = runner.invoke(app, [*common, "--layers", "1"])
    assert res.exit_code == 2 and "corpus_sha256" in res.stderr, res.output
    assert sorted(run.rglob("*")) == before  # nothing written, layer 0 untouched


@pytest.mark.parametrize("signed, random_k, ctx, aligned", [
    (True, 6, 6, True), (False, 6, 6, True), (True, 0, 6, True), (True, 6, 8, True),
    (False, 6, 16, True), (True, 6, 8, False)])
def test_one_fused_pass_equals_the_samplers_one_by_one(signed, random_k, ctx, aligned):
    """LayerSamplers (one compiled pass: moments, top-k, bottom-k, hashed random pool) holds
    the very bits of Stats, TopK by max and TopK by -min updated in turn, on the hook's view
    past the BOS column as on a contiguous copy, in any reading order; its random pool, which
    keeps the neuron's own top and bottom excerpts out as they fall out of them, is exactly
    RandomSample's sample with them left out (ids and activations, bit for bit). Every stored
    row is the excerpt's own column of activations: with ctx a multiple of 8 the first 256
    neurons' block copies excerpts that many neurons take through the tiled transpose, the
    partial block of 44 and the later sparse batches by column reads. Rows are streamed into
    the stores (non-temporal stores) where whole vectors fit and the store is aligned, as
    every store record allocates is; a misaligned one (an array from elsewhere) is copied the
    ordinary way, to the same bits."""
    from explainer.record import copies
    from explainer.record.samplers import LayerSamplers, Stats

    rng = np.random.default_rng(7)
    n_ex, n, k = 130, 300, 7  # 300 neurons: two kernel blocks, the second partial
    acts = rng.integers(-3, 4, (n_ex, 1 + ctx, n)).astype(np.float32)  # ties, zeros
    acts[:, :, ::3] = rng.normal(size=(n_ex, 1 + ctx, 100))
    stream = stream_id(0, "random", "m", 2)
    for order in (np.arange(n_ex), rng.permutation(n_ex)):
        fused = LayerSamplers(k, n, ctx, random_k, stream, signed)
        stores = [t for t in (fused.top, fused.bottom, fused.random.pool) if t is not None]
        for t in stores:
            assert t.acts.ctypes.data % 64 == 0
            if not aligned:  # one float past an aligned address
                raw = np.zeros(t.acts.size + 16, np.float32)
                at = (-raw.ctypes.data // 4) % 16 + 1
                t.acts = raw[at:at + t.acts.size].reshape(t.acts.shape)
        assert copies.can_stream(*(t.acts for t in stores[:1] * 3)) == \
            (aligned and ctx % 8 == 0)
        top, bottom, stats = TopK(k, n, ctx), TopK(k, n, ctx), Stats(n)
        rs = RandomSample(random_k, 2 * k, n, ctx, stream)
        for s in range(0, n_ex, 16):
            ids = torch.from_numpy(order[s:s + 16].copy())
            view = torch.from_numpy(acts[order[s:s + 16]])[:, 1:]  # as the hook hands it
            fused.update(view, ids)
            x = view.contiguous()
            bmax, bmin = stats.update(x)
            top.update(x, ids, bmax)
            bottom.update(x, ids, -bmin)
            rs.update(x, ids)
        pairs = [(fused.top, top)] + ([(fused.bottom, bottom)] if signed else [])
        for got, want in pairs:
            for a, b in zip(got.ranked(), want.ranked()):
                assert a.dtype == b.dtype
                assert a.tobytes() == b.tobytes()
        own = np.concatenate([top.ids] + ([bottom.ids] if signed else []), axis=1)
        for a, b in zip(fused.random.sample(own), rs.sample(own)):
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
        if random_k:  # the pool is the sample itself: random_k entries, none of its own
            assert fused.random.pool.k == random_k
            assert not any(set(fused.random.pool.ids[j]) & set(own[j]) for j in range(n))
            assert (fused.random.pool.ids >= 0).all()  # 130 excerpts: every row is full
        assert (fused.bottom is None) == (not signed)
        assert (fused.random.pool is None) == (not random_k)
        for name in ("sum", "sumsq", "pos", "min", "max", "n"):
            assert np.asarray(getattr(fused.stats, name)).tobytes() == \
                np.asarray(getattr(stats, name)).tobytes(), name
        samples = [fused.top.ranked()] + ([fused.bottom.ranked()] if signed else [])
        if random_k:
            ids, rows = fused.random.sample(own)
            samples.append((ids, None, rows))
        for ids, _, rows in samples:  # against the data itself, not another sampler
            neuron = np.arange(n)[:, None]
            assert np.array_equal(rows, acts[ids, 1:, neuron])
    assert copies.TILE == 8 and copies.DENSE <= 256 * k // 16  # the first batch is dense
    want = [e for e in np.lexsort((np.arange(n_ex), -acts[:, 1:, 0].max(axis=1)))[:k]]
    assert fused.top.ranked()[0][0].tolist() == want  # and the top-k is brute force's


def test_the_hooks_view_is_read_in_place():
    from explainer.record.samplers import in_place

    full = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    x, skip = in_place(full[:, 1:])
    assert skip == 1 and np.shares_memory(x, full.numpy())
    assert np.array_equal(x[:, skip:], full[:, 1:].numpy())
    x, skip = in_place(full[:, 1:4])  # a view inside the rows: still the same elements
    assert np.array_equal(x[:, skip:], full[:, 1:4].numpy())
    x, skip = in_place(full.transpose(0, 1))  # any other layout is copied once
    assert skip == 0 and np.array_equal(x, full.transpose(0, 1).numpy())
