"""The recording pass's faster paths (issue 26) against independent computations, bit for bit:
the vectorised moments, a shard merged from its samplers' own buffers (store + slot), the
stores' 4 KB-page memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from explainer.record import heap, shards
from explainer.record.samplers import SMALL_STORE, LayerSamplers, Stats, TopK, store, stream_id


def test_moments_are_the_bits_of_a_token_by_token_float32_sum():
    """Each excerpt's ctx tokens added one after another in float32 (sum, sum of squares),
    then added to float64 totals excerpt by excerpt, counted, min and max: plain numpy, one
    token column at a time, gives the very same bits as the vectorised kernel."""
    rng = np.random.default_rng(3)
    b, ctx, n = 9, 37, 600  # three kernel blocks, the last partial
    full = rng.normal(size=(2, b, 1 + ctx, n)).astype(np.float32) * 3
    full[0, :, :, ::7] = rng.integers(-2, 3, (b, 1 + ctx, len(range(0, n, 7))))  # ties, zeros
    st = Stats(n)
    want = {"sum": np.zeros(n), "sumsq": np.zeros(n), "pos": np.zeros(n, np.int64),
            "min": np.full(n, np.inf, np.float32), "max": np.full(n, -np.inf, np.float32)}
    for batch in full:
        bmax, bmin = st.update(torch.from_numpy(batch)[:, 1:])  # the hook's view
        x = batch[:, 1:]
        s, sq = np.zeros((b, n), np.float32), np.zeros((b, n), np.float32)
        for t in range(ctx):
            s += x[:, t]
            sq += x[:, t] * x[:, t]
        for e in range(b):
            want["sum"] += s[e].astype(np.float64)
            want["sumsq"] += sq[e].astype(np.float64)
        want["pos"] += (x > 0).sum(axis=(0, 1))
        want["min"] = np.minimum(want["min"], x.min(axis=(0, 1)))
        want["max"] = np.maximum(want["max"], x.max(axis=(0, 1)))
        assert bmax.numpy().tobytes() == x.max(axis=1).tobytes()
        assert bmin.numpy().tobytes() == x.min(axis=1).tobytes()
    for name, arr in want.items():
        assert np.asarray(getattr(st, name)).tobytes() == arr.tobytes(), name
    assert st.n == 2 * b * ctx


def _fed(k: int, n: int, ctx: int, acts: np.ndarray, ids: np.ndarray) -> LayerSamplers:
    s = LayerSamplers(k, n, ctx, 5, stream_id(0, "random", "m", 1), True)
    for a in range(0, len(ids), 8):
        s.update(torch.from_numpy(acts[a:a + 8])[:, 1:], torch.from_numpy(ids[a:a + 8]))
    return s


def test_a_shard_merged_from_its_own_buffers_equals_brute_force():
    """Two shards' states, one as a checkpoint holds it (ranked) and one straight from its
    samplers' buffers (store in slot order + slot), merge in either order into the exact
    top-k of all excerpts (value desc, id asc) with each kept excerpt's own activations."""
    rng = np.random.default_rng(5)
    n_ex, ctx, n, k = 70, 5, 40, 6
    acts = rng.integers(-3, 4, (n_ex, 1 + ctx, n)).astype(np.float32)  # many ties
    first, second = _fed(k, n, ctx, acts[:40], np.arange(40)), \
        _fed(k, n, ctx, acts[40:], np.arange(40, n_ex))
    state = lambda s, name, kept: (shards._slotted if kept else shards._ranked)(  # noqa: E731
        name, {"top": s.top, "bottom": s.bottom, "random": s.random.pool}[name])
    assert not np.array_equal(second.top.slot, np.tile(np.arange(k), (n, 1)))  # slots moved
    kept = acts[:, 1:]
    for name, keys in (("top", kept.max(axis=1)), ("bottom", -kept.min(axis=1))):
        want = np.stack([np.lexsort((np.arange(n_ex), -keys[:, j]))[:k] for j in range(n)])
        for a, b in ((first, second), (second, first)):
            for a_kept, b_kept in ((False, True), (True, False), (True, True)):
                got = shards.merge_ranked(state(a, name, a_kept), state(b, name, b_kept), name, k)
                assert got[f"{name}_ids"].tolist() == want.tolist()
                np.testing.assert_array_equal(got[f"{name}_acts"],
                                              kept[want, :, np.arange(n)[:, None]])
    one = shards._top_k(state(second, "random", True), "random", 0, n, ctx)  # one shard: no copy
    assert one.acts is second.random.pool.acts
    for x, y in zip(one.ranked(), second.random.pool.ranked()):
        assert x.tobytes() == y.tobytes()


def test_stores_are_zeroed_writable_float32_of_any_size():
    small, big = store((3, 4, 5)), store((SMALL_STORE // 256 + 1, 4, 16))
    for a in (small, big):
        assert a.dtype == np.float32 and a.flags.c_contiguous and a.flags.writeable
        assert not a.any()
        a[-1, -1, -1] = 2.5
        assert a.sum() == 2.5
    assert big.nbytes > SMALL_STORE
    top = TopK(4, SMALL_STORE // 256 + 1, 16)  # a sampler's store is one of them
    assert top.acts.shape == (SMALL_STORE // 256 + 1, 4, 16) and not top.acts.any()


def test_after_recording_large_temporaries_come_from_the_heap_again():
    """Leaving steady_heap must not leave glibc mapping every block above 128 KB afresh:
    later stages in the same process (the embedded LLM's passes in `explain run`) allocate
    and free multi-megabyte tensors, and a fresh mapping page-faults each one in again.
    Counted as the process's minor page faults over 30 allocations of 2 MB, each written
    and freed: from the heap that is one block's faults, not thirty's."""
    import resource
    import sys

    if not sys.platform.startswith("linux"):
        return  # glibc only; steady_heap is a no-op elsewhere
    with heap.steady_heap():
        pass
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(30):
        a = np.empty(1 << 19, np.float32)  # 2 MB: above the 128 KB starting threshold
        a.fill(1.0)
        del a
    per_block = (2 << 20) // 4096
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults < 5 * per_block


@pytest.mark.parametrize("spares", [False, True])
def test_random_pools_of_three_shards_merge_into_the_brute_force_sample(spares):
    """Each CPU shard's pool leaves its own top and bottom excerpts out; merged over three
    shards (in two orders, one shard's state as its buffers hold it), the pool is exactly the
    r smallest hashed keys (ties by id) among all excerpts outside the merged top and bottom,
    with their activations: excerpts that fall out of a shard's top or bottom in the merge
    come back as candidates. With pools that keep spare candidates instead (RandomSample,
    as the GPU samplers do), the sample drawn from the merged pool is the same. Brute force:
    numpy over every excerpt at once."""
    from explainer.record.samplers import RandomSample, hashed_keys

    rng = np.random.default_rng(11)
    n_ex, ctx, n, k, r = 96, 5, 40, 6, 5
    acts = rng.normal(size=(n_ex, 1 + ctx, n)).astype(np.float32)
    acts[:, :, ::4] = rng.integers(-2, 3, (n_ex, 1 + ctx, 10))  # ties
    stream = stream_id(0, "random", "m", 3)
    parts = []
    for lo, hi in ((0, 40), (40, 64), (64, 96)):
        s = LayerSamplers(k, n, ctx, r, stream, True)
        if spares:  # the fused top, bottom and moments; a pool with 2k spare candidates
            s.random = RandomSample(r, 2 * k, n, ctx, stream)
        for a in range(lo, hi, 8):
            view, ids = torch.from_numpy(acts[a:a + 8])[:, 1:], torch.arange(a, a + 8)
            s.update(view, ids)
            if spares:
                s.random.update(view.contiguous(), ids)
        parts.append(s)

    def state(s, kept):
        pick = shards._slotted if kept else shards._ranked
        return {**pick("top", s.top), **pick("bottom", s.bottom), **pick("random", s.random.pool),
                **shards._moments(s.stats)}

    kept = acts[:, 1:]
    tops = [np.lexsort((np.arange(n_ex), -key[:, j]))[:k] for key in
            (kept.max(axis=1), -kept.min(axis=1)) for j in range(n)]
    own = np.concatenate([np.stack(tops[:n]), np.stack(tops[n:])], axis=1)  # (n, 2k)
    keys = hashed_keys(stream, np.arange(n_ex), n)  # (n_ex, n)
    want = np.stack([[e for e in np.lexsort((np.arange(n_ex), keys[:, j]))
                      if e not in own[j]][:r] for j in range(n)])
    for order in ((0, 1, 2), (2, 0, 1)):
        acc = state(parts[order[0]], True)
        for i in order[1:]:
            acc = shards._merge(acc, state(parts[i], False), None, stream)
        rs = RandomSample(r, 2 * k, n, ctx, stream)
        rs.pool = shards._top_k(acc, "random", 0, n, ctx)
        ids, got = rs.sample(np.concatenate([acc["top_ids"], acc["bottom_ids"]], axis=1))
        assert ids.tolist() == want.tolist()
        np.testing.assert_array_equal(got, kept[want, :, np.arange(n)[:, None]])
        if not spares:  # the merged pool is the sample itself
            assert acc["random_ids"].tolist() == want.tolist()


def test_the_warm_up_compiles_what_record_then_loads(tmp_path):
    """warmup.warm (what `record` starts in a second process while the model loads) leaves
    in Numba's cache the very specialisation the fused pass calls: a later process updating
    LayerSamplers on the hook's view, signed or not, loads it (a hit) and compiles nothing."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    warm = subprocess.Popen([sys.executable, "-c", "from explainer.record import warmup; "
                             "warmup.warm_in_background().wait()"], env=env)
    assert warm.wait(timeout=300) == 0
    code = ("import json, torch\n"
            "from explainer.record import kernels\n"
            "from explainer.record.samplers import LayerSamplers\n"
            "for signed in (True, False):\n"
            "    s = LayerSamplers(4, 300, 6, 3, 9, signed)\n"
            "    s.update(torch.randn(5, 7, 300)[:, 1:], torch.arange(5))\n"
            "st = kernels.record_layer.stats\n"
            "print(json.dumps([sum(st.cache_hits.values()), sum(st.cache_misses.values())]))\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    hits, misses = json.loads(out.stdout.strip().splitlines()[-1])
    assert (hits, misses) == (1, 0), out.stderr[-2000:]
