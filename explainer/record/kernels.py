"""Compiled loops for `record`'s samplers, called on each layer's activations as they appear.

As tensor operations the statistics read a (B, ctx, N) batch five times and the top-k merge
sorts, gathers and scatters; here each is one pass over neuron blocks on every core, about
2.5x less time (GPT-2 small shape, 32 x 64 tokens: ~10 ms per layer instead of ~25). Numba
compiles each function on first use and caches the machine code (next to this file, or in the
user's cache where that is read-only), so only the first run pays the compile.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

BLOCK = 256  # neurons per work item: rows of 1 KiB, so strided reads still stream


@njit(cache=True, nogil=True)
def _scan_block(x, lo, w, total, total_sq, positive, low, high, bmax, bmin):
    """scan for neurons lo .. lo + w - 1."""
    n_batch, ctx, _ = x.shape
    s = np.empty(w, np.float32)
    sq = np.empty(w, np.float32)
    pos = np.empty(w, np.int64)
    mn = np.empty(w, np.float32)
    mx = np.empty(w, np.float32)
    for b in range(n_batch):
        s[:] = 0.0
        sq[:] = 0.0
        pos[:] = 0
        mn[:] = np.inf
        mx[:] = -np.inf
        for t in range(ctx):
            for j in range(w):
                v = x[b, t, lo + j]
                s[j] += v
                sq[j] += v * v
                pos[j] += v > 0
                mn[j] = min(mn[j], v)
                mx[j] = max(mx[j], v)
        for j in range(w):
            total[lo + j] += s[j]
            total_sq[lo + j] += sq[j]
            positive[lo + j] += pos[j]
            low[lo + j] = min(low[lo + j], mn[j])
            high[lo + j] = max(high[lo + j], mx[j])
            bmax[b, lo + j] = mx[j]
            bmin[b, lo + j] = mn[j]


@njit(cache=True, nogil=True)
def _merge_block(acts, lo, w, ids, keys, vals, top_ids, slot, store):
    """merge_topk for neurons lo .. lo + w - 1."""
    n_batch, ctx, _ = acts.shape
    k = vals.shape[1]
    pending = np.full((w, k), -1, np.int64)  # batch row waiting for each slot
    entered = False
    for j in range(w):
        i = lo + j
        for b in range(n_batch):
            v = keys[b, i]
            e = ids[b]
            # Rank by (key descending, excerpt id ascending), whatever order excerpts arrive
            # in, so shards merged in any order give the same top-k.
            last = vals[i, k - 1]
            if not (v > last or (v == last and top_ids[i, k - 1] > e)):
                continue
            r = k - 1
            while r > 0 and (vals[i, r - 1] < v or (vals[i, r - 1] == v and top_ids[i, r - 1] > e)):
                r -= 1
            free = slot[i, k - 1]  # the row of the excerpt falling out
            for q in range(k - 1, r, -1):
                vals[i, q] = vals[i, q - 1]
                top_ids[i, q] = top_ids[i, q - 1]
                slot[i, q] = slot[i, q - 1]
            vals[i, r] = v
            top_ids[i, r] = ids[b]
            slot[i, r] = free
            pending[j, free] = b
            entered = True
    if not entered:
        return
    # Copy excerpt by excerpt, a whole stored row at a time: the writes are sequential and
    # the reads, strided, fall in the block's few cache lines per time step of excerpt b.
    count = np.zeros(n_batch, np.int64)
    to_j = np.empty((n_batch, w), np.int64)
    to_slot = np.empty((n_batch, w), np.int64)
    for j in range(w):
        for q in range(k):
            b = pending[j, q]
            if b >= 0:
                to_j[b, count[b]] = j
                to_slot[b, count[b]] = q
                count[b] += 1
    for b in range(n_batch):
        for c in range(count[b]):
            j = to_j[b, c]
            q = to_slot[b, c]
            for t in range(ctx):
                store[lo + j, q, t] = acts[b, t, lo + j]


@njit(parallel=True, cache=True, nogil=True)
def scan(x, total, total_sq, positive, low, high, bmax, bmin):
    """Per-neuron running moments of x (B, ctx, N) float32, and each excerpt's max and min.

    Adds into total, total_sq (float64), positive (int64, tokens > 0); lowers low and raises
    high (float32); writes bmax and bmin (B, N). An excerpt's ctx terms are summed in float32, then
    added in float64, so no sum drifts however long the corpus.
    """
    n = x.shape[2]
    for blk in prange((n + BLOCK - 1) // BLOCK):
        lo = blk * BLOCK
        _scan_block(x, lo, min(n, lo + BLOCK) - lo, total, total_sq, positive, low, high, bmax,
                    bmin)


@njit(parallel=True, cache=True, nogil=True)
def merge_topk(acts, ids, keys, vals, top_ids, slot, store):
    """Merge a batch into each neuron's ranked top-k.

    acts (B, ctx, N) float32; ids (B,) distinct excerpt ids, none already held; keys (B, N)
    the ranking value of each excerpt (its max, minus its min, or a hashed key; -inf never
    enters). Per neuron: vals, top_ids, slot (N, k) in rank order (key descending, then id
    ascending: ties go to the smaller id, in any arrival order), slot the row of store
    (N, k, ctx) holding that excerpt's activations, copied once, after the whole batch is
    ranked, into the row of the excerpt it evicted.
    """
    n = acts.shape[2]
    for blk in prange((n + BLOCK - 1) // BLOCK):
        lo = blk * BLOCK
        _merge_block(acts, lo, min(n, lo + BLOCK) - lo, ids, keys, vals, top_ids, slot, store)

