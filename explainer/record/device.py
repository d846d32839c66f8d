"""`record`'s samplers as torch operations that keep their state on the activations' device.

On a GPU the Numba samplers (samplers.py) would need every layer's activations copied to the
host inside the hook, so the GPU would wait for the copy and the CPU loops. These do the same
work where the activations already are, and copy only the kept excerpts to the host, once, at
the end (`ranked`, `to_numpy`). Their results equal the CPU samplers' exactly:

* TopK merges a batch into each neuron's ranked buffer by (key descending, excerpt id
  ascending): the buffer and the batch's candidates are sorted by id, then stably by key
  descending, and the first k kept. The buffer is itself in that order, so the old entries kept
  are its first ranks and the new ones take the rows (slots) of those that fell out, as in the
  Numba kernel; only entering excerpts' activations are written.
* RandomSample ranks by minus the hashed keys of samplers.hashed_keys, computed here with the
  same 64-bit arithmetic on int64 tensors (wrapping multiply, masked shifts), so a batch's keys
  cost a few elementwise operations on the device instead of a numpy pass on the CPU per layer.
* Stats sums each excerpt's ctx tokens in float32, token after token, as the Numba kernel does,
  then adds the excerpt sums in float64: the moments agree to float64 rounding.

Nothing here synchronises with the device during the pass: no value is read back until the end.
"""

from __future__ import annotations

import weakref

import numpy as np

from explainer.record import samplers

_INF = float("inf")


def _signed(c: int) -> int:
    """A 64-bit constant as the int64 with the same bits."""
    return c - (1 << 64) if c >= 1 << 63 else c


def _shr(x, s: int):
    """Logical right shift of int64 tensors read as uint64 (>> on int64 is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def _mix(x):
    """samplers._mix (splitmix64's finaliser) on int64 tensors: the products wrap mod 2^64."""
    x = (x ^ _shr(x, 30)) * _signed(0xBF58476D1CE4E5B9)
    x = (x ^ _shr(x, 27)) * _signed(0x94D049BB133111EB)
    return x ^ _shr(x, 31)


def hashed_keys(stream: int, excerpt_ids, n_neurons: int):
    """samplers.hashed_keys(stream, excerpt_ids, n_neurons) as a (B, N) float32 tensor on
    excerpt_ids' device: the same bits."""
    import torch

    ids = excerpt_ids.to(torch.int64)[:, None]
    neurons = torch.arange(n_neurons, dtype=torch.int64, device=ids.device)[None, :]
    x = _mix(_signed(stream) ^ _mix(ids * _signed(0x9E3779B97F4A7C15)
                                    + neurons * _signed(0xD1B54A32D192ED03)))
    return _shr(x, 40).to(torch.float32) / float(1 << 24)


class _NeuronMajor:
    """acts (B, ctx, N) as a contiguous (N, B, ctx) copy, made once per layer and shared by
    the layer's samplers; dropped as soon as acts itself is freed."""

    ref = None
    out = None

    @classmethod
    def of(cls, acts):
        if cls.ref is None or cls.ref() is not acts:
            cls.ref = weakref.ref(acts, cls._drop)
            cls.out = acts.permute(2, 0, 1).contiguous()
        return cls.out

    @classmethod
    def _drop(cls, ref) -> None:
        if ref is cls.ref:
            cls.ref = cls.out = None


class TopK:
    """samplers.TopK on a torch device: the k excerpts with the highest key per neuron.

    vals, ids and slot (N, k) in rank order; acts (N, k + 1, ctx) by slot, its last row a
    scratch row that the ranks no excerpt entered write to, so the merge has fixed shapes.
    """

    def __init__(self, k: int, n_neurons: int, ctx: int, device="cpu"):
        import torch

        self.k, self.ctx = k, ctx
        self.vals = torch.full((n_neurons, k), -_INF, dtype=torch.float32, device=device)
        self.ids = torch.full((n_neurons, k), -1, dtype=torch.int64, device=device)
        self.slot = torch.arange(k, device=device).repeat(n_neurons, 1)
        self.acts = torch.zeros((n_neurons, k + 1, ctx), dtype=torch.float32, device=device)

    def update(self, acts, excerpt_ids, keys=None) -> None:
        """Merge a batch: acts (B, ctx, N), excerpt_ids (B,) distinct and none held yet, keys
        (B, N) what to rank by (default each excerpt's max activation); -inf and NaN never
        enter."""
        import torch

        if keys is None:
            keys = acts.amax(dim=1)
        n, k = self.vals.shape
        ids = excerpt_ids.to(self.ids.device, torch.int64, non_blocking=True)
        new_keys = torch.nan_to_num(keys.t(), nan=-_INF, posinf=_INF, neginf=-_INF)
        vals = torch.cat([self.vals, new_keys], dim=1)  # (N, k + B) candidates
        cand_ids = torch.cat([self.ids, ids.expand(n, -1)], dim=1)
        by_id = torch.sort(cand_ids, dim=1, stable=True).indices
        rank_key = torch.where(vals == 0, 0.0, vals).gather(1, by_id)  # -0.0 ties +0.0
        src = by_id.gather(1, torch.sort(rank_key, dim=1, descending=True,
                                         stable=True).indices)[:, :k]  # (N, k) winners
        self.vals, self.ids = vals.gather(1, src), cand_ids.gather(1, src)
        self.slot, fresh = self._slots(src)
        rows = torch.where(fresh, src - k, 0)  # batch row of each entering excerpt
        source = _NeuronMajor.of(acts).gather(1, rows[:, :, None].expand(-1, -1, self.ctx))
        target = torch.where(fresh, self.slot, k)  # the scratch row where nothing entered
        self.acts.scatter_(1, target[:, :, None].expand(-1, -1, self.ctx), source)

    def _slots(self, src):
        """The slot of each rank after a merge, and which ranks hold entering excerpts. The
        old entries kept are the buffer's first k - m ranks; the m entering ones take, in rank
        order, the slots of ranks k - m .. k - 1, which fell out."""
        import torch

        k = self.k
        fresh = src >= k
        m = fresh.sum(dim=1, keepdim=True)
        freed = (k - m + fresh.cumsum(dim=1) - 1).clamp(0, k - 1)
        kept = src.clamp(max=k - 1)
        return torch.where(fresh, self.slot.gather(1, freed), self.slot.gather(1, kept)), fresh

    def ranked(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids (N, k), maxima (N, k), acts (N, k, ctx)) in rank order, as numpy on the host:
        the only copy of activations off the device."""
        acts = self.acts.gather(1, self.slot[:, :, None].expand(-1, -1, self.ctx))
        return self.ids.cpu().numpy(), self.vals.cpu().numpy(), acts.cpu().numpy()

    def to_numpy(self) -> samplers.TopK:
        """The same buffer as a samplers.TopK (slot i holding rank i)."""
        n = self.vals.shape[0]
        top = samplers.TopK(self.k, n, self.ctx)
        top.ids, top.vals, top.acts = self.ranked()
        return top


class RandomSample:
    """samplers.RandomSample on a torch device: per neuron the excerpts with the smallest
    hashed keys, `extra` more kept than returned so the neuron's own excerpts can be left out."""

    def __init__(self, r: int, extra: int, n_neurons: int, ctx: int, stream: int,
                 device="cpu"):
        self.r, self.extra, self.stream, self.ctx = r, extra, stream, ctx
        self.pool = TopK(r + extra, n_neurons, ctx, device) if r else None

    def update(self, acts, excerpt_ids) -> None:
        """Offer a batch: acts (B, ctx, N), excerpt_ids (B,)."""
        if self.pool is None:
            return
        ids = excerpt_ids.to(acts.device, non_blocking=True)
        self.pool.update(acts, ids, -hashed_keys(self.stream, ids, acts.shape[2]))

    def to_numpy(self) -> samplers.RandomSample:
        n = self.pool.vals.shape[0] if self.pool is not None else 0
        out = samplers.RandomSample(self.r, self.extra, n, self.ctx, self.stream)
        if self.pool is not None:
            out.pool = self.pool.to_numpy()
        return out

    def sample(self, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """As samplers.RandomSample.sample, on the host."""
        if self.pool is None:
            n = exclude.shape[0]
            return np.empty((n, 0), np.int64), np.empty((n, 0, self.ctx), np.float32)
        return self.to_numpy().sample(exclude)


class Stats:
    """samplers.Stats on a torch device: running per-neuron moments in float64."""

    def __init__(self, n_neurons: int, device="cpu"):
        import torch

        self.sum = torch.zeros(n_neurons, dtype=torch.float64, device=device)
        self.sumsq = torch.zeros(n_neurons, dtype=torch.float64, device=device)
        self.pos = torch.zeros(n_neurons, dtype=torch.int64, device=device)
        self.max = torch.full((n_neurons,), -_INF, dtype=torch.float32, device=device)
        self.min = torch.full((n_neurons,), _INF, dtype=torch.float32, device=device)
        self.n = 0

    def update(self, acts):
        """Add acts (B, ctx, N) float32; returns each excerpt's max and min per neuron (B, N)
        on the device."""
        import torch

        bmax, bmin = acts.amax(dim=1), acts.amin(dim=1)
        self.max = torch.maximum(self.max, bmax.amax(dim=0))
        self.min = torch.minimum(self.min, bmin.amin(dim=0))
        self.pos = self.pos + (acts > 0).sum(dim=(0, 1))
        # Each excerpt's sum and sum of squares in float32, token after token (the Numba
        # kernel's order, so the same roundings), then into the float64 totals.
        both = torch.stack((acts, acts * acts), dim=2)  # (B, ctx, 2, N)
        part = torch.zeros_like(both[:, 0])
        for t in range(both.shape[1]):
            part.add_(both[:, t])
        total = part.to(torch.float64).sum(dim=0)  # (2, N)
        self.sum, self.sumsq = self.sum + total[0], self.sumsq + total[1]
        self.n += acts.shape[0] * acts.shape[1]
        return bmax, bmin

    def to_numpy(self) -> samplers.Stats:
        """The same sums as a samplers.Stats on the host."""
        out = samplers.Stats(self.sum.shape[0])
        out.sum, out.sumsq = self.sum.cpu().numpy(), self.sumsq.cpu().numpy()
        out.pos, out.n = self.pos.cpu().numpy(), self.n
        out.max, out.min = self.max.cpu().numpy(), self.min.cpu().numpy()
        return out

    def summary(self) -> dict[str, np.ndarray]:
        return self.to_numpy().summary()
