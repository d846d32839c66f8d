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

from explainer.record.copies import can_stream, copy_entered, copy_pending, fence, put

BLOCK = 256  # neurons per work item: rows of 1 KiB, so strided reads still stream


@njit(cache=True, nogil=True)
def _scan_block(x, skip, lo, w, total, total_sq, positive, low, high, bmax, bmin):
    """scan for neurons lo .. lo + w - 1.

    The five running values of an excerpt live in one (5, w) array, so the loop over the
    block's neurons touches two arrays (it and x) and LLVM vectorises it behind one overlap
    check: with five separate arrays it stayed scalar, 4.5x slower (SmolLM2's 1,536 neurons,
    32 x 64 tokens: 9.5 ms against 2.1 on one core). Each lane still adds its neuron's tokens
    one after another in float32, in the same order, so the sums are the same bits. Positive
    tokens are counted in float32, exact below 2**24 tokens per excerpt.
    """
    n_batch = x.shape[0]
    ctx = x.shape[1] - skip
    acc = np.empty((5, w), np.float32)
    s, sq, pos, mn, mx = acc[0], acc[1], acc[2], acc[3], acc[4]
    for b in range(n_batch):
        s[:] = 0.0
        sq[:] = 0.0
        pos[:] = 0.0
        mn[:] = np.inf
        mx[:] = -np.inf
        for t in range(skip, skip + ctx):
            row = x[b, t, lo:lo + w]
            for j in range(w):
                v = row[j]
                s[j] += v
                sq[j] += v * v
                pos[j] += np.float32(1.0) if v > 0 else np.float32(0.0)
                mn[j] = min(mn[j], v)
                mx[j] = max(mx[j], v)
        for j in range(w):
            total[lo + j] += s[j]
            total_sq[lo + j] += sq[j]
            positive[lo + j] += np.int64(pos[j])
            low[lo + j] = min(low[lo + j], mn[j])
            high[lo + j] = max(high[lo + j], mx[j])
            bmax[b, lo + j] = mx[j]
            bmin[b, lo + j] = mn[j]


@njit(cache=True, nogil=True, inline="always")
def _before(v, e, w, f):
    """Whether (value v, excerpt id e) ranks before (w, f): value descending, then id
    ascending, whatever order excerpts arrive in, so shards merged in any order agree."""
    return v > w or (v == w and e < f)


@njit(cache=True, nogil=True)
def _offer(vals, top_ids, slot, pending, i, j, keys, ids, n, cv, ce, cb, nv, ne, ns, hit,
           out_ids, out_slot):
    """Merge one batch into neuron i's ranked buffer (block column j): returns -1 if nothing
    entered, else how many real excerpts fell out, their ids and store rows written to
    out_ids, out_slot (k,) (when those have room; their rows keep their activations until the
    batch's copies run); hit[b] is set to 1 for every batch row b that entered (when hit has
    room). Callers pass a count and empty arrays made once per block rather than slices made
    per neuron (each one an atomic reference count update; the difference is within noise).

    keys[:n] this neuron's key of each excerpt, ids[:n] their ids. The excerpts that beat
    the buffer's last entry are sorted and merged with it in one sweep (cheaper than inserting
    them one by one while a buffer fills); -inf and NaN never enter. Entering excerpts take
    the slots (rows of the store) of those falling out, and pending[j, slot] remembers their
    batch row, so their activations are copied once, after the whole batch is ranked. cv, ce,
    cb (B,) and nv, ne, ns (k,) are scratch."""
    k = vals.shape[1]
    last, last_id = vals[i, k - 1], top_ids[i, k - 1]
    nc = 0
    for b in range(n):
        v, e = keys[b], ids[b]
        if not _before(v, e, last, last_id):  # false for NaN
            continue
        r = nc  # insertion into the (short) sorted candidate list
        while r > 0 and _before(v, e, cv[r - 1], ce[r - 1]):
            cv[r], ce[r], cb[r] = cv[r - 1], ce[r - 1], cb[r - 1]
            r -= 1
        cv[r], ce[r], cb[r] = v, e, b
        nc += 1
    if nc == 0:
        return -1
    p = q = 0
    for r in range(k):
        if q >= nc or _before(vals[i, p], top_ids[i, p], cv[q], ce[q]):
            nv[r], ne[r], ns[r] = vals[i, p], top_ids[i, p], slot[i, p]
            p += 1
        else:
            nv[r], ne[r], ns[r] = cv[q], ce[q], -1 - cb[q]  # batch row, to get a slot below
            q += 1
    free = p  # ranks p .. k - 1 of the old buffer fell out: their slots are free
    n_out = 0
    if out_ids.shape[0] > 0:
        for r in range(p, k):
            if top_ids[i, r] >= 0:  # not an empty rank
                out_ids[n_out], out_slot[n_out] = top_ids[i, r], slot[i, r]
                n_out += 1
    for r in range(k):
        if ns[r] < 0:
            b = -1 - ns[r]
            ns[r] = slot[i, free]
            free += 1
            pending[j, ns[r]] = b
            if hit.shape[0] > 0:
                hit[b] = 1
        vals[i, r], top_ids[i, r], slot[i, r] = nv[r], ne[r], ns[r]
    return n_out


@njit(cache=True, nogil=True)
def _merge_block(acts, skip, lo, w, ids, keys, vals, top_ids, slot, store):
    """merge_topk for neurons lo .. lo + w - 1."""
    n_batch = acts.shape[0]
    k = vals.shape[1]
    pending = np.full((w, k), -1, np.int64)  # batch row waiting for each slot
    cv, ce, cb = np.empty(n_batch, vals.dtype), np.empty(n_batch, np.int64), \
        np.empty(n_batch, np.int64)  # scratch of _offer
    nv, ne, ns = np.empty(k, vals.dtype), np.empty(k, np.int64), np.empty(k, np.int64)
    none = np.empty(0, np.int64)
    entered = False
    for j in range(w):
        i = lo + j
        entered |= _offer(vals, top_ids, slot, pending, i, j, keys[:, i], ids, n_batch, cv, ce,
                          cb, nv, ne, ns, none, none, none) >= 0
    if entered:
        copy_pending(acts, skip, lo, pending, store)


@njit(parallel=True, cache=True, nogil=True)
def scan(x, skip, total, total_sq, positive, low, high, bmax, bmin):
    """Per-neuron running moments of x[:, skip:] (B, ctx, N) float32, and each excerpt's max
    and min.

    Adds into total, total_sq (float64), positive (int64, tokens > 0); lowers low and raises
    high (float32); writes bmax and bmin (B, N). An excerpt's ctx terms are summed in float32, then
    added in float64, so no sum drifts however long the corpus.
    """
    n = x.shape[2]
    for blk in prange((n + BLOCK - 1) // BLOCK):
        lo = blk * BLOCK
        _scan_block(x, skip, lo, min(n, lo + BLOCK) - lo, total, total_sq, positive, low, high,
                    bmax, bmin)


@njit(parallel=True, cache=True, nogil=True)
def merge_topk(acts, skip, ids, keys, vals, top_ids, slot, store):
    """Merge a batch into each neuron's ranked top-k.

    acts[:, skip:] (B, ctx, N) float32; ids (B,) distinct excerpt ids, none already held; keys
    (B, N) the ranking value of each excerpt (its max, minus its min, or a hashed key; -inf
    never enters). Per neuron: vals, top_ids, slot (N, k) in rank order (key descending, then
    id ascending: ties go to the smaller id, in any arrival order), slot the row of store
    (N, k, ctx) holding that excerpt's activations, copied once, after the whole batch is
    ranked, into the row of the excerpt it evicted.
    """
    n = acts.shape[2]
    for blk in prange((n + BLOCK - 1) // BLOCK):
        lo = blk * BLOCK
        _merge_block(acts, skip, lo, min(n, lo + BLOCK) - lo, ids, keys, vals, top_ids, slot,
                     store)


# splitmix64's constants (samplers._mix, samplers.hashed_keys), as uint64 so that Numba keeps
# every product in wrapping 64-bit integer arithmetic (a plain int would promote to float64).
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_NEURON = np.uint64(0xD1B54A32D192ED03)
_S30, _S27, _S31, _S40 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(40)
_SCALE = np.float32(1 << 24)


@njit(cache=True, nogil=True, inline="always")
def _mix(x):
    """samplers._mix on one uint64."""
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


@njit(cache=True, nogil=True, inline="always")
def _hashed(stream, excerpt, neuron):
    """Minus samplers.hashed_keys of one (excerpt id, neuron): the smallest key ranks first."""
    h = _mix(stream ^ _mix(np.uint64(excerpt) * _GOLDEN + np.uint64(neuron) * _NEURON))
    return -(np.float32(h >> _S40) / _SCALE)


@njit(cache=True, nogil=True, inline="always")
def _holds(top_ids, i, e):
    """Whether neuron i's ranked buffer holds excerpt e."""
    found = False
    for r in range(top_ids.shape[1]):  # no early exit: a branch-free loop over k ids
        found |= top_ids[i, r] == e
    return found


@njit(cache=True, nogil=True)
def _layer_block(x, skip, lo, w, ids, stream, bmax, bmin, total, total_sq, positive, low,
                 high, top, bottom, pool):
    """record_layer for neurons lo .. lo + w - 1."""
    _scan_block(x, skip, lo, w, total, total_sq, positive, low, high, bmax, bmin)
    n_batch = x.shape[0]
    t_vals, t_ids, t_slot, t_store = top
    b_vals, b_ids, b_slot, b_store = bottom
    p_vals, p_ids, p_slot, p_store = pool
    k = max(t_vals.shape[1], b_vals.shape[1], p_vals.shape[1])
    kt, kb = t_vals.shape[1], b_vals.shape[1]
    t_pending = np.full((w, kt), -1, np.int64)
    b_pending = np.full((w, kb), -1, np.int64)
    p_pending = np.full((w, p_vals.shape[1]), -1, np.int64)
    key = np.empty(n_batch, np.float32)
    n_cand = n_batch + kt + kb  # the batch and what falls out of the top and the bottom
    cv, ce, cb = np.empty(n_cand, np.float32), np.empty(n_cand, np.int64), \
        np.empty(n_cand, np.int64)  # scratch of _offer
    nv, ne, ns = np.empty(k, np.float32), np.empty(k, np.int64), np.empty(k, np.int64)
    hit = np.zeros(n_batch, np.int64)
    none = np.empty(0, np.int64)
    t_out, t_out_slot = np.empty(kt, np.int64), np.empty(kt, np.int64)
    b_out, b_out_slot = np.empty(kb, np.int64), np.empty(kb, np.int64)
    c_key, c_id = np.empty(n_cand, np.float32), np.empty(n_cand, np.int64)
    c_slot = np.empty(n_cand, np.int64)  # a fallen excerpt's row in its sampler's store
    streams = can_stream(t_store, b_store, p_store)
    t_at, b_at, p_at = t_store.ctypes.data, b_store.ctypes.data, p_store.ctypes.data
    has_bottom = b_vals.shape[0] > 0
    has_pool = p_vals.shape[0] > 0 and p_vals.shape[1] > 0
    t_in = b_in = p_in = False
    for j in range(w):
        i = lo + j
        hit[:] = 0
        for b in range(n_batch):
            key[b] = bmax[b, i]
        n_t = _offer(t_vals, t_ids, t_slot, t_pending, i, j, key, ids, n_batch, cv, ce, cb, nv,
                     ne, ns, hit, t_out, t_out_slot)
        t_in |= n_t >= 0
        n_b = -1
        if has_bottom:  # the most negative first
            for b in range(n_batch):
                key[b] = -bmin[b, i]
            n_b = _offer(b_vals, b_ids, b_slot, b_pending, i, j, key, ids, n_batch, cv, ce, cb,
                         nv, ne, ns, hit, b_out, b_out_slot)
            b_in |= n_b >= 0
        if not has_pool:
            continue
        # The pool holds the smallest hashed keys among the excerpts that are in neither the
        # top nor the bottom: a batch row that entered one is not offered, and an excerpt
        # that falls out of one (and is not in the other) is offered then, its activations
        # still in the row it leaves. An excerpt never re-enters a top or bottom it left, so
        # at the end the pool is exactly the random sample with the neuron's own excerpts
        # left out, and needs no spare candidates to leave them out later.
        for b in range(n_batch):
            c_key[b] = -np.inf if hit[b] else _hashed(stream, ids[b], i)
            c_id[b] = ids[b]
        n_c = n_batch
        for r in range(n_t):
            e = t_out[r]
            if has_bottom and _holds(b_ids, i, e):
                continue
            c_key[n_c], c_id[n_c], c_slot[n_c] = _hashed(stream, e, i), e, t_out_slot[r]
            n_c += 1
        n_from_top = n_c
        for r in range(n_b):
            e = b_out[r]
            if _holds(t_ids, i, e):
                continue
            fell_from_top = False
            for c in range(n_batch, n_from_top):
                if c_id[c] == e:
                    fell_from_top = True
                    break
            if fell_from_top:  # out of both in this batch: offered once, from the top's row
                continue
            c_key[n_c], c_id[n_c], c_slot[n_c] = _hashed(stream, e, i), e, -1 - b_out_slot[r]
            n_c += 1
        if _offer(p_vals, p_ids, p_slot, p_pending, i, j, c_key, c_id, n_c, cv, ce, cb, nv, ne,
                  ns, none, none, none) >= 0:
            for q in range(p_vals.shape[1]):
                c = p_pending[j, q]
                if c < n_batch:
                    p_in |= c >= 0
                    continue
                src = c_slot[c]  # a fallen excerpt: its row moves now, before any batch copy
                if streams:
                    put(p_at, i * p_store.shape[1] + q, t_at if src >= 0 else b_at,
                        i * t_store.shape[1] + src if src >= 0 else
                        i * b_store.shape[1] - 1 - src, p_store.shape[2])
                elif src >= 0:
                    p_store[i, q, :] = t_store[i, src, :]
                else:
                    p_store[i, q, :] = b_store[i, -1 - src, :]
                p_pending[j, q] = -1
    if t_in or b_in or p_in:  # after the ranking, so that no row is copied twice
        copy_entered(x, skip, lo, t_pending, t_store, b_pending, b_store, p_pending, p_store)
    elif streams:
        fence()


@njit(parallel=True, cache=True, nogil=True)
def record_layer(x, skip, ids, stream, bmax, bmin, total, total_sq, positive, low, high, top,
                 bottom, pool):
    """Everything record keeps of one layer's batch, in one pass over neuron blocks.

    x[:, skip:] (B, ctx, N) float32; ids (B,) excerpt ids. Per block of neurons: the moments
    and each excerpt's max and min (as `scan`, into bmax, bmin (B, N)), then the merges of
    `merge_topk` into top (by max), bottom (by minus the min) and the random pool (by minus
    the hashed key of (stream, excerpt id, neuron), computed here rather than as a (B, N)
    array), each (vals, ids, slot, store) as merge_topk takes them; a sampler with no neurons
    (bottom on an unsigned model) or no slots (no random sample) is skipped. The same
    comparisons in the same order as scan then merge_topk, so the same bits.
    """
    n = x.shape[2]
    for blk in prange((n + BLOCK - 1) // BLOCK):
        lo = blk * BLOCK
        _layer_block(x, skip, lo, min(n, lo + BLOCK) - lo, ids, stream, bmax, bmin, total,
                     total_sq, positive, low, high, top, bottom, pool)
