"""Streaming per-neuron samplers for `record`: exact top-k by max activation, a shared reservoir.

Both keep a fixed-size buffer per neuron, so memory depends on k and ctx, never on corpus size.
Ranking is by (max activation descending, excerpt_id ascending): ties go to the earlier excerpt,
which is what a brute-force sort over all excerpts gives, so the result is exactly reproducible.
"""

from __future__ import annotations

import numpy as np
import torch


class TopK:
    """The k excerpts with the highest max activation, per neuron, with their activations."""

    def __init__(self, k: int, n_neurons: int, ctx: int):
        self.k = k
        self.vals = torch.full((n_neurons, k), float("-inf"))  # (N, k) excerpt maxima
        self.ids = torch.full((n_neurons, k), -1, dtype=torch.int64)  # (N, k) excerpt ids
        self.acts = torch.zeros((n_neurons, k, ctx))  # (N, k, ctx) slot activations

    def update(self, acts: torch.Tensor, excerpt_ids: torch.Tensor,
               bmax: torch.Tensor | None = None) -> None:
        """Merge a batch: acts (B, ctx, N), excerpt_ids (B,) increasing and above all seen so far."""
        if bmax is None:
            bmax = acts.amax(dim=1)  # (B, N)
        # Only neurons whose batch best beats their current k-th value can change (ties lose:
        # the batch's ids are later). Late in a corpus that is a small share of neurons.
        cols = torch.nonzero(bmax.amax(dim=0) > self.vals.amin(dim=1)).squeeze(1)
        if cols.numel() == 0:
            return
        k = self.k
        vals, ids = self.vals[cols], self.ids[cols]  # (C, k)
        # Current slots in rank order: by id, then stably by value descending.
        by_id = torch.argsort(ids, dim=1, stable=True)
        order = by_id.gather(1, torch.argsort(vals.gather(1, by_id), dim=1, descending=True,
                                              stable=True))
        cand = torch.cat([vals.gather(1, order), bmax[:, cols].T], dim=1)  # (C, k + B)
        sel = torch.argsort(cand, dim=1, descending=True, stable=True)[:, :k]  # (C, k)
        is_new = sel >= k
        n_new = is_new.sum(dim=1)  # (C,) entries entering == slots evicted
        slot_of_sel = order.gather(1, sel.clamp(max=k - 1))
        kept = torch.zeros_like(ids, dtype=torch.int32).scatter_add_(
            1, slot_of_sel, (~is_new).to(torch.int32)) > 0
        evicted = torch.argsort(kept.to(torch.int8), dim=1, stable=True)  # evicted slots first
        entering = torch.argsort((~is_new).to(torch.int8), dim=1, stable=True)  # new first
        c, j = torch.nonzero(torch.arange(k)[None, :] < n_new[:, None], as_tuple=True)
        slot = evicted[c, j]
        b = sel[c, entering[c, j]] - k
        n = cols[c]
        self.vals[n, slot] = bmax[b, n]
        self.ids[n, slot] = excerpt_ids[b]
        self.acts[n, slot] = acts[b, :, n]  # (M, ctx)

    def ranked(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids (N, k), maxima (N, k), acts (N, k, ctx)) in rank order."""
        by_id = torch.argsort(self.ids, dim=1, stable=True)
        order = by_id.gather(1, torch.argsort(self.vals.gather(1, by_id), dim=1,
                                              descending=True, stable=True))  # (N, k)
        ids = self.ids.gather(1, order)
        vals = self.vals.gather(1, order)
        acts = self.acts.gather(1, order[:, :, None].expand(-1, -1, self.acts.shape[2]))
        return ids.numpy(), vals.numpy(), acts.numpy()


class Reservoir:
    """A uniform sample of r excerpts (algorithm R, seeded), the same excerpts for every neuron."""

    def __init__(self, r: int, seed: int):
        self.r = r
        self.rng = np.random.default_rng(seed)
        self.ids = np.full(r, -1, dtype=np.int64)
        self.seen = 0

    def offer(self, n: int) -> list[tuple[int, int]]:
        """Offer the next n excerpts; returns (slot, index within these n) to store."""
        out = []
        for i in range(n):
            pos = self.seen + i
            slot = pos if pos < self.r else int(self.rng.integers(0, pos + 1))
            if slot < self.r:
                out.append((slot, i))
                self.ids[slot] = pos
        self.seen += n
        return out


class Stats:
    """Running per-neuron moments over every token seen (float64 sums, so no drift)."""

    def __init__(self, n_neurons: int):
        self.sum = torch.zeros(n_neurons, dtype=torch.float64)
        self.sumsq = torch.zeros(n_neurons, dtype=torch.float64)
        self.pos = torch.zeros(n_neurons, dtype=torch.int64)
        self.max = torch.full((n_neurons,), float("-inf"))
        self.min = torch.full((n_neurons,), float("inf"))
        self.n = 0

    def update(self, acts: torch.Tensor, bmax: torch.Tensor) -> None:
        """acts (B, ctx, N); bmax (B, N) the per-excerpt maxima TopK also uses."""
        flat = acts.reshape(-1, acts.shape[-1])  # (B*ctx, N)
        # One batch sums exactly enough in float32 (a few thousand terms); the running totals
        # are float64. These forms are ~4x faster than float64 or boolean reductions on CPU.
        self.sum += flat.sum(0).double()
        self.sumsq += (flat * flat).sum(0).double()
        self.pos += flat.sign().clamp_(min=0).sum(0).long()  # tokens > 0
        self.max = torch.maximum(self.max, bmax.amax(0))  # (N,)
        self.min = torch.minimum(self.min, flat.amin(0))
        self.n += flat.shape[0]

    def summary(self) -> dict[str, np.ndarray]:
        """mean, std, min, max, density (share of tokens > 0), n_tokens."""
        mean = self.sum / self.n
        var = (self.sumsq / self.n - mean.square()).clamp(min=0)
        return {"mean": mean.numpy(), "std": var.sqrt().numpy(), "max": self.max.numpy(),
                "min": self.min.numpy(), "density": (self.pos.double() / self.n).numpy(),
                "n_tokens": np.full(len(mean), self.n, dtype=np.int64)}
