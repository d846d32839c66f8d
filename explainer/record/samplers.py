"""Streaming per-neuron samplers for `record`: exact top-k, a random sample per neuron, moments.

Each keeps a fixed-size buffer per neuron, so memory depends on k and ctx, never on corpus size.
Ranking is by (key descending, excerpt_id ascending), whatever order excerpts arrive in: the
result equals a brute-force sort over all excerpts, and shards of a corpus merge exactly.

The random sample of a neuron is the excerpts with the smallest hashed keys of (seed, model,
layer, neuron, excerpt id): a uniform sample without replacement that does not depend on
reading order, different for every neuron. It keeps `extra` more candidates than it returns so
that the neuron's own top (and bottom) excerpts can be excluded at the end.
"""

from __future__ import annotations

import numpy as np
import torch

from explainer.record import kernels


class TopK:
    """The k excerpts with the highest max activation, per neuron, with their activations.

    vals and ids are kept in rank order; each rank points (slot) at the row of acts holding its
    activations, so a merge shifts a few numbers and copies only the excerpts that enter.
    """

    def __init__(self, k: int, n_neurons: int, ctx: int):
        self.k = k
        self.vals = np.full((n_neurons, k), -np.inf, dtype=np.float32)  # (N, k) maxima, ranked
        self.ids = np.full((n_neurons, k), -1, dtype=np.int64)  # (N, k) excerpt ids
        self.slot = np.tile(np.arange(k, dtype=np.int64), (n_neurons, 1))  # (N, k) acts row
        self.acts = store((n_neurons, k, ctx))  # (N, k, ctx) by slot

    def update(self, acts: torch.Tensor, excerpt_ids: torch.Tensor,
               keys: torch.Tensor | None = None) -> None:
        """Merge a batch: acts (B, ctx, N), excerpt_ids (B,) increasing and above all seen so
        far, keys (B, N) what to rank by (default each excerpt's max activation)."""
        if keys is None:
            keys = acts.amax(dim=1)
        x, skip = in_place(acts)
        kernels.merge_topk(x, skip, _np(excerpt_ids, np.int64), _np(keys), self.vals, self.ids,
                           self.slot, self.acts)

    @classmethod
    def of(cls, ids: np.ndarray, vals: np.ndarray, acts: np.ndarray,
           slot: np.ndarray | None = None) -> "TopK":
        """A TopK holding these ranked ids and values (N, k) and the store acts (N, k, ctx),
        whose row slot[n, i] holds rank i's activations (None: row i, a ranked store); no
        buffer allocated, none copied."""
        top = cls.__new__(cls)
        top.k = ids.shape[1]
        top.ids, top.vals, top.acts = ids, vals, acts
        top.slot = np.tile(np.arange(top.k, dtype=np.int64), (ids.shape[0], 1)) \
            if slot is None else slot
        return top

    def arrays(self) -> tuple:
        """(vals, ids, slot, store): the buffers as the compiled kernels take them."""
        return self.vals, self.ids, self.slot, self.acts

    def ranked(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids (N, k), maxima (N, k), acts (N, k, ctx)) in rank order."""
        return self.ids.copy(), self.vals.copy(), rows(self.acts, self.slot)


SMALL_STORE = 4 << 20  # bytes: below this a store is an ordinary np.zeros


def store(shape: tuple) -> np.ndarray:
    """Zeroed float32 memory for a sampler's activations, in ordinary 4 KB pages, 64-byte
    aligned (so that copies.py can stream rows into it).

    A store is touched once, a row at a time, as excerpts enter, so the first touch of its
    pages is a real share of recording (SmolLM2: 43 MB a layer with both sides). np.zeros asks
    for transparent huge pages (numpy's madvise on large arrays), and on the VMs measured here
    faulting those in costs about 3x more than 4 KB pages (860 MB: 1.6-2.7 s against 0.6 s).
    A private anonymous mapping told not to use huge pages is zeroed by the kernel, page by
    page: 43 MB in 21 ms on one core, against 25.5 for a shared one (which Linux backs with
    shmem, Python's default). The array keeps the mapping alive and unmaps it when freed."""
    import mmap

    n = int(np.prod(shape))
    if n * 4 < SMALL_STORE:
        raw = np.zeros(n + 16, dtype=np.float32)
        start = (-raw.ctypes.data // 4) % 16
        return raw[start:start + n].reshape(shape)
    if not hasattr(mmap, "MAP_PRIVATE"):  # Windows: its mmap takes no flags
        return np.frombuffer(mmap.mmap(-1, n * 4), dtype=np.float32).reshape(shape)
    m = mmap.mmap(-1, n * 4, flags=mmap.MAP_PRIVATE)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):  # Linux; where THP is "always" it would apply
        m.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(m, dtype=np.float32).reshape(shape)


def rows(acts: np.ndarray, index: np.ndarray) -> np.ndarray:
    """acts (N, K, ctx) -> (N, k, ctx) with row [n, i] = acts[n, index[n, i]]: the gather of
    np.take_along_axis, as plain advanced indexing, which copies whole rows (~4x faster)."""
    return acts[np.arange(acts.shape[0])[:, None], index]


def _np(t, dtype=np.float32) -> np.ndarray:
    """A C-contiguous numpy view (no copy when it already is one) for the compiled kernels."""
    return np.ascontiguousarray(t.numpy() if isinstance(t, torch.Tensor) else t, dtype=dtype)


def in_place(acts) -> tuple[np.ndarray, int]:
    """acts (B, ctx, N) as (x (B, T, N) C-contiguous float32 numpy, skip) with
    x[:, skip:] == acts, sharing its memory where it can.

    The hook hands record the activations past the BOS column, a view of the layer's
    (B, 1 + ctx, N) output; the kernels read that output in place, from column `skip`, instead
    of a 25 MB copy per layer (GPT-2 small shape, 32 excerpts). Anything else is copied once.
    """
    if isinstance(acts, torch.Tensor) and acts.dtype == torch.float32 \
            and acts.device.type == "cpu" and acts.dim() == 3 and not acts.is_contiguous():
        b, ctx, n = acts.shape
        s0, s1, s2 = acts.stride()
        if s2 == 1 and s1 == n and n and s0 % n == 0 and s0 // n >= ctx:
            t = s0 // n
            # The same addresses: element (b, t', j) of acts is (b, t' + skip, j) of base.
            offset = acts.storage_offset() - (t - ctx) * n
            if offset >= 0:
                try:  # torch checks that the wider view stays inside the storage
                    base = acts.as_strided((b, t, n), (s0, n, 1), offset)
                except RuntimeError:
                    base = None
                if base is not None:
                    return base.numpy(), t - ctx
    return _np(acts), 0


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (wrapping arithmetic): well-spread 64-bit keys."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def stream_id(seed: int, *parts: str | int) -> int:
    """A 64-bit id of (seed, parts): which random stream a sampler draws from."""
    import hashlib

    text = "\x1f".join(str(p) for p in (seed, *parts)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little")


def hashed_keys(stream: int, excerpt_ids: np.ndarray, n_neurons: int) -> np.ndarray:
    """(B, N) float32 keys in [0, 1): a fixed function of (stream, excerpt id, neuron).

    24 bits, so every key is exact in float32; equal keys are ranked by excerpt id.
    """
    return _keys(stream, np.asarray(excerpt_ids, dtype=np.uint64)[:, None],
                 np.arange(n_neurons, dtype=np.uint64)[None, :])


def hashed_keys_at(stream: int, excerpt_ids: np.ndarray) -> np.ndarray:
    """hashed_keys of each neuron's own excerpts: excerpt_ids (N, m), row n for neuron n."""
    ids = np.asarray(excerpt_ids, dtype=np.int64).astype(np.uint64)
    return _keys(stream, ids, np.arange(ids.shape[0], dtype=np.uint64)[:, None])


def _keys(stream: int, ids: np.ndarray, neurons: np.ndarray) -> np.ndarray:
    """The key of each (excerpt id, neuron) pair of two broadcasting uint64 arrays."""
    with np.errstate(over="ignore"):
        x = _mix(np.uint64(stream) ^ _mix(ids * np.uint64(0x9E3779B97F4A7C15)
                                          + neurons * np.uint64(0xD1B54A32D192ED03)))
    return ((x >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24))


class RandomSample:
    """Per neuron, the excerpts with the smallest hashed keys: a uniform random sample."""

    def __init__(self, r: int, extra: int, n_neurons: int, ctx: int, stream: int):
        self.r, self.stream, self.ctx = r, stream, ctx
        self.pool = TopK(r + extra, n_neurons, ctx) if r else None

    def update(self, acts: torch.Tensor, excerpt_ids: torch.Tensor) -> None:
        """Offer a batch: acts (B, ctx, N), excerpt_ids (B,)."""
        if self.pool is None:
            return
        ids = _np(excerpt_ids, np.int64)
        keys = -hashed_keys(self.stream, ids, acts.shape[2])  # the smallest key ranks first
        self.pool.update(acts, ids, keys)

    def sample(self, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids (N, r), acts (N, r, ctx)): each neuron's first r candidates not in its row of
        exclude (N, m); ids -1 (and zero activations) where the corpus had too few excerpts."""
        ids, slot = self.chosen(exclude)
        if self.pool is None:
            return ids, np.empty((ids.shape[0], 0, self.ctx), np.float32)
        return ids, rows(self.pool.acts, slot)

    def chosen(self, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids (N, r), slot (N, r)): sample()'s ids, and the rows of the pool's store
        (self.pool.acts) holding their activations, so a reader gathers them once."""
        if self.pool is None:
            n = exclude.shape[0]
            return np.empty((n, 0), np.int64), np.empty((n, 0), np.int64)
        ids = self.pool.ids  # (N, K) by key
        keep = (ids >= 0) & ~(ids[:, :, None] == exclude[:, None, :]).any(axis=2)
        order = np.argsort(~keep, axis=1, kind="stable")[:, : self.r]  # kept ones first, by key
        out_ids = np.take_along_axis(ids, order, axis=1)
        out_ids[~np.take_along_axis(keep, order, axis=1)] = -1
        return out_ids, np.take_along_axis(self.pool.slot, order, axis=1)


class Stats:
    """Running per-neuron moments over every token seen (float64 sums, so no drift)."""

    def __init__(self, n_neurons: int):
        self.sum = np.zeros(n_neurons)
        self.sumsq = np.zeros(n_neurons)
        self.pos = np.zeros(n_neurons, dtype=np.int64)
        self.max = np.full(n_neurons, -np.inf, dtype=np.float32)
        self.min = np.full(n_neurons, np.inf, dtype=np.float32)
        self.n = 0

    def update(self, acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add acts (B, ctx, N); returns each excerpt's max and min per neuron (B, N), which
        the top-k and bottom-k rank by, computed in the same single read."""
        x, skip = in_place(acts)
        bmax = np.empty((x.shape[0], x.shape[2]), dtype=np.float32)
        bmin = np.empty_like(bmax)
        kernels.scan(x, skip, self.sum, self.sumsq, self.pos, self.min, self.max, bmax, bmin)
        self.n += x.shape[0] * (x.shape[1] - skip)
        return torch.from_numpy(bmax), torch.from_numpy(bmin)

    def summary(self) -> dict[str, np.ndarray]:
        """mean, std, min, max, density (share of tokens > 0), n_tokens."""
        mean = self.sum / self.n
        var = np.clip(self.sumsq / self.n - mean * mean, 0, None)
        return {"mean": mean, "std": np.sqrt(var), "max": self.max.copy(),
                "min": self.min.copy(), "density": self.pos / self.n,
                "n_tokens": np.full(len(mean), self.n, dtype=np.int64)}


class LayerSamplers:
    """One layer's samplers, updated together by one compiled pass per batch
    (kernels.record_layer): the top-k by max, the bottom-k by min (signed models), the random
    pool by hashed key and the moments. The top, bottom and moments hold the same bits as
    updating TopK, TopK and Stats in turn would. The random pool holds only excerpts in
    neither the top nor the bottom (one falling out of them is offered to it then), so its
    random_k entries are already the sample RandomSample keeps random_k + top_k * sides
    candidates to draw: the same ids and activations (`sample`), a third of the store and
    of the copies into it (SmolLM2, both sides: 30 rows a neuron instead of 110)."""

    def __init__(self, top_k: int, n_neurons: int, ctx: int, random_k: int, stream: int,
                 bottom: bool):
        self.top = TopK(top_k, n_neurons, ctx)
        self.bottom = TopK(top_k, n_neurons, ctx) if bottom else None
        self.random = RandomSample(random_k, 0, n_neurons, ctx, stream)
        self.stats = Stats(n_neurons)
        self._none = TopK(0, 0, ctx).arrays()  # stands in for an absent sampler

    def update(self, acts: torch.Tensor, excerpt_ids: torch.Tensor) -> None:
        """Offer a batch: acts (B, ctx, N), excerpt_ids (B,) increasing, none seen before."""
        x, skip = in_place(acts)
        bmax = np.empty((x.shape[0], x.shape[2]), dtype=np.float32)  # (B, N)
        bmin = np.empty_like(bmax)
        st = self.stats
        kernels.record_layer(
            x, skip, _np(excerpt_ids, np.int64), np.uint64(self.random.stream), bmax, bmin,
            st.sum, st.sumsq, st.pos, st.min, st.max, self.top.arrays(),
            self.bottom.arrays() if self.bottom is not None else self._none,
            self.random.pool.arrays() if self.random.pool is not None else self._none)
        st.n += x.shape[0] * (x.shape[1] - skip)
