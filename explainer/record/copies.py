"""Copies of entering excerpts into the samplers' stores, for the compiled pass (kernels.py).

Two costs are avoided. Reading: a stored row is a column of the layer's (B, T, N) output, and
column reads miss L1, so an excerpt that many neurons take is transposed whole first
(copy_entered). Writing: an entering row lands at a random place in tens of MB of store that
no cache holds, and an ordinary store first reads each of its cache lines from memory, then
evicts something the forward pass still wants. A non-temporal ("streaming") store writes whole
lines straight to memory: 21,500 random rows of 256 bytes (one batch of a filled SmolLM2
layer) in 0.33-0.5 ms against 1.7-1.9 ms on one core. Numba has no such store, so stream_row
emits the LLVM IR itself; where the CPU has none (the metadata is a hint) LLVM writes ordinary
stores.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

LANES = 8  # floats per vector store: 32 bytes, the alignment a streamed row needs


@intrinsic
def stream_row(typingctx, dst, src, n):
    """Copy n float32 (a multiple of LANES) from address src to address dst (32-byte
    aligned) with non-temporal stores. Call `fence` before other threads read them."""
    sig = types.void(types.intp, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        dst, src, n = args
        vec = ir.VectorType(ir.FloatType(), LANES).as_pointer()
        d, s = builder.inttoptr(dst, vec), builder.inttoptr(src, vec)
        count = builder.udiv(n, ir.Constant(n.type, LANES))
        start = builder.block
        loop = builder.append_basic_block("stream.loop")
        done = builder.append_basic_block("stream.done")
        builder.cbranch(builder.icmp_unsigned(">", count, ir.Constant(n.type, 0)), loop, done)
        builder.position_at_end(loop)
        i = builder.phi(n.type)
        i.add_incoming(ir.Constant(n.type, 0), start)
        value = builder.load(builder.gep(s, [i]), align=4)
        store = builder.store(value, builder.gep(d, [i]), align=32)
        store.set_metadata("nontemporal", builder.module.add_metadata([ir.IntType(32)(1)]))
        step = builder.add(i, ir.Constant(n.type, 1))
        i.add_incoming(step, loop)
        builder.cbranch(builder.icmp_unsigned("<", step, count), loop, done)
        builder.position_at_end(done)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def fence(typingctx):
    """A full memory fence: streamed stores are weakly ordered, this orders them before
    whatever follows (the end of a parallel pass, after which any thread may read them)."""

    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.void(), codegen


DENSE = 32  # an excerpt with this many rows to copy in a block is transposed whole first
TILE = 8  # the transpose's tile: 8 rows of x and 8 store rows stay in L1 together


@njit(cache=True, nogil=True)
def copy_pending(x, skip, lo, pending, store):
    """copy_entered for one sampler."""
    copy_entered(x, skip, lo, pending, store, pending[:0], store, pending[:0], store)


@njit(cache=True, nogil=True)
def copy_entered(x, skip, lo, p0, s0, p1, s1, p2, s2):
    """Copy each entering excerpt's activations into its store row, for up to three samplers
    at once: p0, p1, p2 (w, k) the batch row waiting for each slot of stores s0, s1, s2 (a
    sampler with no neurons has an empty pending).

    A stored row is a column of x: read one value per time step, each 4 x N bytes from the
    last, those reads miss L1 (they map to the same few sets). An excerpt that many neurons
    take (the first batches fill every buffer) is first transposed whole, in 8 x 8 tiles that
    stay in L1, into a scratch block whose rows are then copied as they are: 6.5 us against
    28.7 by column reads per excerpt and block of 256 (SmolLM2's 1,536 neurons), and the
    fused pass over 256 excerpts ~20% faster on SmolLM2, ~27% on GPT-2 small's shape. An
    excerpt that few take keeps the column reads.
    """
    n_batch = x.shape[0]
    ctx = s0.shape[2]
    w = p0.shape[0]
    count = np.zeros(n_batch, np.int64)
    to_j = np.empty((n_batch, 3 * w), np.int64)  # an excerpt holds one slot per neuron and
    to_q = np.empty((n_batch, 3 * w), np.int64)  # sampler at most
    to_s = np.empty((n_batch, 3 * w), np.int64)
    for s in range(3):
        pend = p0 if s == 0 else (p1 if s == 1 else p2)
        for j in range(pend.shape[0]):
            for q in range(pend.shape[1]):
                b = pend[j, q]
                if b >= 0:
                    c = count[b]
                    to_j[b, c], to_q[b, c], to_s[b, c] = j, q, s
                    count[b] = c + 1
    tiles = ctx % TILE == 0 and w % TILE == 0
    scratch = np.empty((w, ctx), np.float32)
    streams = can_stream(s0, s1, s2)
    at = scratch.ctypes.data
    a0, a1, a2 = s0.ctypes.data, s1.ctypes.data, s2.ctypes.data
    for b in range(n_batch):
        dense = tiles and count[b] >= DENSE
        if dense:
            for t0 in range(0, ctx, TILE):
                for j0 in range(0, w, TILE):
                    for t in range(t0, t0 + TILE):
                        for j in range(j0, j0 + TILE):
                            scratch[j, t] = x[b, skip + t, lo + j]
        for c in range(count[b]):
            j, q, s = to_j[b, c], to_q[b, c], to_s[b, c]
            if streams:
                if not dense:  # this one column only, into the scratch's row j
                    for t in range(ctx):
                        scratch[j, t] = x[b, skip + t, lo + j]
                dst = a0 if s == 0 else (a1 if s == 1 else a2)
                put(dst, (lo + j) * p0.shape[1] + q if s == 0 else
                    ((lo + j) * p1.shape[1] + q if s == 1 else (lo + j) * p2.shape[1] + q),
                    at, j, ctx)
                continue
            dst_ = s0 if s == 0 else (s1 if s == 1 else s2)
            if dense:
                for t in range(ctx):
                    dst_[lo + j, q, t] = scratch[j, t]
            else:
                for t in range(ctx):
                    dst_[lo + j, q, t] = x[b, skip + t, lo + j]
    if streams:
        fence()


@njit(cache=True, nogil=True)
def can_stream(s0, s1, s2):
    """Whether rows of these stores can be streamed: whole vectors, 32-byte aligned (every
    store that samplers.store allocates is; any other array is copied the ordinary way)."""
    ok = s0.shape[2] % LANES == 0
    for s in (s0, s1, s2):
        ok &= s.size == 0 or s.ctypes.data % (4 * LANES) == 0
    return ok


@njit(cache=True, nogil=True, inline="always")
def put(dst, row, src, r, ctx):
    """Stream row r of the (., ctx) float32 array at address src into row `row` of the one at
    address dst. Addresses, not arrays: an array passed per row costs a reference count
    update, and two threads updating one store's count made the pass 50% slower."""
    stream_row(dst + row * ctx * 4, src + r * ctx * 4, ctx)
