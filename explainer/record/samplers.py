"""Streaming per-neuron samplers for `record`: exact top-k by max activation, a shared reservoir.

Both keep a fixed-size buffer per neuron, so memory depends on k and ctx, never on corpus size.
Ranking is by (max activation descending, excerpt_id ascending): ties go to the earlier excerpt,
which is what a brute-force sort over all excerpts gives, so the result is exactly reproducible.
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
        self.acts = np.zeros((n_neurons, k, ctx), dtype=np.float32)  # (N, k, ctx) by slot

    def update(self, acts: torch.Tensor, excerpt_ids: torch.Tensor,
               keys: torch.Tensor | None = None) -> None:
        """Merge a batch: acts (B, ctx, N), excerpt_ids (B,) increasing and above all seen so
        far, keys (B, N) what to rank by (default each excerpt's max activation)."""
        if keys is None:
            keys = acts.amax(dim=1)
        kernels.merge_topk(_np(acts), _np(excerpt_ids, np.int64), _np(keys), self.vals,
                           self.ids, self.slot, self.acts)

    def ranked(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids (N, k), maxima (N, k), acts (N, k, ctx)) in rank order."""
        acts = np.take_along_axis(self.acts, self.slot[:, :, None], axis=1)
        return self.ids.copy(), self.vals.copy(), acts


def _np(t, dtype=np.float32) -> np.ndarray:
    """A C-contiguous numpy view (no copy when it already is one) for the compiled kernels."""
    return np.ascontiguousarray(t.numpy() if isinstance(t, torch.Tensor) else t, dtype=dtype)


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
        self.sum = np.zeros(n_neurons)
        self.sumsq = np.zeros(n_neurons)
        self.pos = np.zeros(n_neurons, dtype=np.int64)
        self.max = np.full(n_neurons, -np.inf, dtype=np.float32)
        self.min = np.full(n_neurons, np.inf, dtype=np.float32)
        self.n = 0

    def update(self, acts: torch.Tensor) -> torch.Tensor:
        """Add acts (B, ctx, N); returns each excerpt's max per neuron (B, N), which TopK ranks
        by, computed in the same single read."""
        a = _np(acts)
        bmax = np.empty((a.shape[0], a.shape[2]), dtype=np.float32)
        kernels.scan(a, self.sum, self.sumsq, self.pos, self.min, self.max, bmax)
        self.n += a.shape[0] * a.shape[1]
        return torch.from_numpy(bmax)

    def summary(self) -> dict[str, np.ndarray]:
        """mean, std, min, max, density (share of tokens > 0), n_tokens."""
        mean = self.sum / self.n
        var = np.clip(self.sumsq / self.n - mean * mean, 0, None)
        return {"mean": mean, "std": np.sqrt(var), "max": self.max.copy(),
                "min": self.min.copy(), "density": self.pos / self.n,
                "n_tokens": np.full(len(mean), self.n, dtype=np.int64)}
