"""Copies of entering excerpts into the samplers' stores, for the compiled pass (kernels.py).

Two costs are avoided. Reading: a stored row is a column of the layer's (B, T, N) output, and
column reads miss L1, so an excerpt that many neurons take is transposed whole first, 8 x 8
tiles at a time in vector registers (transpose8). Writing: an entering row lands at a random
place in tens of MB of store that no cache holds, and an ordinary store first reads each of its
cache lines from memory, then evicts something the forward pass still wants. A non-temporal
("streaming") store writes whole lines straight to memory: 21,500 random rows of 256 bytes (one
batch of a filled SmolLM2 layer) in 0.33-0.5 ms against 1.7-1.9 ms on one core. Numba has
neither vector shuffles nor such stores, so both helpers emit the LLVM IR themselves (generic
IR: LLVM picks the instructions of the CPU it compiles for, ordinary stores where it has no
non-temporal ones).
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


@intrinsic
def transpose8(typingctx, src, src_step, dst, dst_step):
    """The 8 x 8 float32 tile whose rows start at addresses src, src + src_step, ... written
    transposed: its column c becomes the row at dst + c * dst_step. Eight vector loads, 24
    shuffles, eight vector stores, where element by element it was 64 loads and 64 stores."""
    sig = types.void(types.intp, types.intp, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        src, src_step, dst, dst_step = args
        vec = ir.VectorType(ir.FloatType(), 8)
        i32 = ir.IntType(32)

        def at(base, step, r):
            addr = builder.add(base, builder.mul(step, ir.Constant(step.type, r)))
            return builder.inttoptr(addr, vec.as_pointer())

        def mix(a, b, order):
            return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(i32, 8), order))

        r = [builder.load(at(src, src_step, t), align=4) for t in range(8)]
        lo, hi = [0, 8, 1, 9, 4, 12, 5, 13], [2, 10, 3, 11, 6, 14, 7, 15]
        t = []
        for a in range(0, 8, 2):  # pairs of rows interleaved
            t += [mix(r[a], r[a + 1], lo), mix(r[a], r[a + 1], hi)]
        even, odd = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
        u = []
        for a in (0, 4):  # t[a], t[a+1] rows a, a+1; t[a+2], t[a+3] rows a+2, a+3
            u += [mix(t[a], t[a + 2], even), mix(t[a], t[a + 2], odd),
                  mix(t[a + 1], t[a + 3], even), mix(t[a + 1], t[a + 3], odd)]
        first, second = [0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]
        for c in range(4):  # u[c]: column c | c + 4 of rows 0-3; u[4 + c]: of rows 4-7
            builder.store(mix(u[c], u[4 + c], first), at(dst, dst_step, c), align=4)
            builder.store(mix(u[c], u[4 + c], second), at(dst, dst_step, c + 4), align=4)
        return context.get_dummy_value()

    return sig, codegen


DENSE = 32  # an excerpt with this many rows to copy in a block is transposed whole first
TILE = 8  # transpose8's tile


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
    take (the first batches fill every buffer) is first transposed whole into a scratch block
    whose rows are then copied as they are: per excerpt and block of 256 (SmolLM2's 1,536
    neurons) 2.3 us with transpose8, 6.6 element by element, 28.7 by column reads. An
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
    tiles = ctx % TILE == 0 and w % TILE == 0 and x.strides[2] == 4
    scratch = np.empty((w, ctx), np.float32)
    streams = can_stream(s0, s1, s2)
    at = scratch.ctypes.data
    a0, a1, a2 = s0.ctypes.data, s1.ctypes.data, s2.ctypes.data
    for b in range(n_batch):
        dense = tiles and count[b] >= DENSE
        if dense:
            xb = x.ctypes.data + b * x.strides[0] + skip * x.strides[1] + lo * 4
            for t0 in range(0, ctx, TILE):
                for j0 in range(0, w, TILE):
                    transpose8(xb + t0 * x.strides[1] + j0 * 4, x.strides[1],
                               at + (j0 * ctx + t0) * 4, ctx * 4)
        for c in range(count[b]):
            j, q, s = to_j[b, c], to_q[b, c], to_s[b, c]
            if not dense:  # this one column only, into the scratch's row j
                for t in range(ctx):
                    scratch[j, t] = x[b, skip + t, lo + j]
            if streams:
                k = p0.shape[1] if s == 0 else (p1.shape[1] if s == 1 else p2.shape[1])
                put(a0 if s == 0 else (a1 if s == 1 else a2), (lo + j) * k + q, at, j, ctx)
            else:
                dst = s0 if s == 0 else (s1 if s == 1 else s2)
                for t in range(ctx):
                    dst[lo + j, q, t] = scratch[j, t]
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
    address dst. Addresses, not arrays: with the store arrays passed per row the pass took
    ~50% longer (measured; likely their reference counts, which both threads update)."""
    stream_row(dst + row * ctx * 4, src + r * ctx * 4, ctx)
