"""What a neuron writes: its direct effect on the logits, the output side of its explanation.

A neuron of layer L with activation a adds a · W_out[n] (d_model) to the residual stream. Read
straight through the final norm and the unembedding, as if nothing after layer L changed it
(the direct path only; later layers can amplify, cancel or reroute it), it moves the logits by

    a · (1/s) · W_U^T · fold(W_out[n])          s = the final norm's scale of that position

The scale 1/s is positive and the same for every vocabulary entry, so it changes no ranking; the
values stored are the product with s = 1: logits moved per unit of activation at unit norm scale.
`fold` is the final norm's linear part (`Norm` says which one a model has):

* LayerNorm (GPT-2): y = (x - mean(x)) / s · w + b. The direction is centred (its mean over
  d_model removed, as the norm removes it from the residual) and multiplied by w. The bias b adds
  the same vector whatever the neuron does, so it is not part of the neuron's effect.
* RMSNorm (Llama, SmolLM2): y = x / s · w. No centring: multiplied by w only. Where the norm
  stores its weight as an offset (Gemma: y = x / s · (1 + w)), the factor is 1 + w.

The unembedding bias b_U does not depend on the neuron either and is left out. With tied
embeddings (GPT-2, SmolLM2) W_U is the token embedding matrix transposed; the bridge exposes it as
W_U either way, so the same product serves both. Only ids the tokenizer knows are ranked (a padded
vocabulary's extra rows are never produced as text).

On a CPU the full fp32 product is most of the cost (SmolLM2-135M: 1,536 x 576 x 49,152 per layer,
~0.5 s on 2 cores), so `top_tokens` screens it: a bfloat16 product (~4x faster where the CPU has
bf16 units) picks M candidates per neuron and direction, their effects are recomputed in fp32
(on a GPU element by element, so no TF32 kernel can enter), and the result is kept
only where a rounding-error bound proves that no other token can beat the K-th candidate
(`screen_slack` says how the bound is made); the other neurons get their full row. The kept ids
and values are therefore the exact product's, up to ties within fp32 rounding. A GPU does the
same; there the full rows are computed in float64, since an fp32 product may silently run in
TF32 (10-bit inputs) where a library or container turns that on.
"""

from __future__ import annotations

from dataclasses import dataclass

K = 10  # promoted and suppressed tokens kept per neuron
CHUNK = 512  # neurons per product: bounds the (chunk, d_vocab) float32 temporary (~100 MB)
M = 64  # screened candidates per neuron and direction; K of them are kept
RESCORE = 128  # neurons per exact rescoring: a (RESCORE, M, d_model) gather (~19 MB for SmolLM2)
VCHUNK = 16384  # vocabulary columns per float64 product on a GPU (no float64 copy of all of W_U)
U_BF16 = 2.0 ** -9  # unit roundoff of bfloat16 (8 significant bits, round to nearest)
U_FP32 = 2.0 ** -24


@dataclass(frozen=True)
class Norm:
    """The final norm's linear part, as `fold` applies it."""

    kind: str  # layernorm (centres, then scales) | rmsnorm (scales only)
    weight: object  # torch tensor (d_model,): the factor each residual direction is scaled by


@dataclass(frozen=True)
class TopTokens:
    """Per neuron, the K vocabulary ids each direction moves most, and by how much."""

    promoted_ids: object  # (N, K) int64 numpy, largest effect first
    promoted_values: object  # (N, K) float32 numpy, descending
    suppressed_ids: object  # (N, K) int64 numpy, most negative effect first
    suppressed_values: object  # (N, K) float32 numpy, ascending
    full_rows: int = 0  # neurons whose full row was computed (all of them when unscreened)


@dataclass(frozen=True)
class Unembedding:
    """W_U (d_model, d_vocab) cut to the decodable ids, in the forms the products need; the same
    for every layer, so a subject prepares it once."""

    fp32: object  # (d_model, V), often a transposed view of the token embedding (no copy)
    rows: object  # (V, d_model) fp32, contiguous: the candidates' columns gathered as rows
    bf16: object  # (d_model, V) for the screening product, or None where it is not used
    col_norm_max: float  # max over tokens of ||W_U[:, v]||_2
    abs_max: object  # (d_model,) max over tokens of |W_U[i, v]|

    @classmethod
    def of(cls, w_u, n_vocab: int | None = None, screen: bool | None = None) -> "Unembedding":
        w_u = w_u.detach().float()
        if n_vocab is not None:
            w_u = w_u[:, :n_vocab]
        rows = w_u.T.contiguous()  # tied embeddings: the embedding matrix itself, not a copy
        if screen is None:  # worth it with a vocabulary well above the candidates
            screen = w_u.shape[1] >= 16 * M
        bf16 = rows.bfloat16().T if screen else None
        return cls(w_u, rows, bf16, float(rows.norm(dim=1).max()), rows.abs().amax(dim=0))


def fold(w_out, norm: Norm):
    """Neuron output rows (N, d_model) -> the rows the unembedding sees (centred for LayerNorm)."""
    if norm.kind == "layernorm":
        w_out = w_out - w_out.mean(dim=-1, keepdim=True)
    elif norm.kind != "rmsnorm":
        raise ValueError(f"unknown final norm {norm.kind!r}")
    return w_out * norm.weight


def direct_effects(w_out, norm: Norm, w_u):
    """The full (N, d_vocab) direct logit effect of each neuron (for tests and small models)."""
    return fold(w_out.float(), Norm(norm.kind, norm.weight.float())) @ w_u.float()


def top_tokens(w_out, norm: Norm, w_u, k: int = K, n_vocab: int | None = None,
               screen: bool | None = None) -> TopTokens:
    """Top-k promoted and suppressed ids per neuron, as the full fp32 product ranks them.

    w_out (N, d_model) are the layer's MLP output rows, w_u (d_model, d_vocab) the unembedding
    or an `Unembedding` already prepared; n_vocab keeps only the first ids (those the tokenizer
    can decode). screen: force the bf16 screening on or off (default: on for vocabularies of
    16 x M = 1,024 ids or more).
    """
    import torch

    u = w_u if isinstance(w_u, Unembedding) else Unembedding.of(w_u, n_vocab, screen)
    if screen and u.bf16 is None:
        u = Unembedding.of(u.fp32, None, True)
    use_screen = u.bf16 is not None if screen is None else screen
    k = min(k, u.fp32.shape[1])
    a = fold(w_out.detach().float(), Norm(norm.kind, norm.weight.float()))
    outs = {"pi": [], "pv": [], "si": [], "sv": []}
    full_rows = 0
    with torch.inference_mode():
        for start in range(0, a.shape[0], CHUNK):
            chunk = a[start:start + CHUNK]
            if use_screen and M < u.fp32.shape[1]:
                got = _screened(chunk, u, k)
                if got is None:  # the bf16 product broke its own error bound: trust none of it
                    use_screen = False
                    got = _exact(chunk, u.fp32, k)
            else:
                got = _exact(chunk, u.fp32, k)
            full_rows += got[4]
            for name, part in zip(("pi", "pv", "si", "sv"), got[:4]):
                outs[name].append(part)
    cat = {name: torch.cat(parts).cpu().numpy() for name, parts in outs.items()}
    return TopTokens(cat["pi"], cat["pv"].astype("float32"), cat["si"],
                     cat["sv"].astype("float32"), full_rows)


def _exact(a, u_fp32, k: int):
    """Top-k of the full rows a @ W_U: fp32 on a CPU, float64 elsewhere (see the module doc)."""
    import torch

    if a.device.type == "cpu":
        eff = a @ u_fp32  # (chunk, V)
    else:
        a = a.double()
        eff = torch.cat([a @ u_fp32[:, s:s + VCHUNK].double()
                         for s in range(0, u_fp32.shape[1], VCHUNK)], dim=1)
    hi = eff.topk(k, dim=1)  # sorted: largest first
    lo = eff.topk(k, dim=1, largest=False)  # sorted: most negative first
    return hi.indices, hi.values.float(), lo.indices, lo.values.float(), a.shape[0]


def screen_slack(a, u: Unembedding):
    """Per neuron n, (c_n, r): |bf16 product - exact product| <= c_n + r * |bf16 value| for
    every token, if the bf16 product rounds its inputs to bf16, multiplies and accumulates in
    fp32, and rounds the sum to bf16 (what oneDNN's CPU kernels and cuBLAS's default GEMMs do;
    `_screened` checks the bound on every candidate and gives up the screen where it fails).

    Rounding a and W_U to bf16 moves each term a_i u_i by at most (2u + u^2)|a_i u_i|; summing d
    terms in fp32 adds at most gamma_d = d u32 / (1 - d u32) times the sum of |terms|; both are
    bounded by B_n = sum_i |a_i| |u_i|, itself at most min(||a||_2 max_v ||u_v||_2,
    sum_i |a_i| max_v |u_iv|). Rounding the sum to bf16 moves it by u/(1-u) < 2u of the result.
    """
    d = a.shape[1]
    b = (a.norm(dim=1) * u.col_norm_max).minimum(a.abs() @ u.abs_max)
    gamma = d * U_FP32 / (1 - d * U_FP32)
    c = (2 * U_BF16 + U_BF16 ** 2 + gamma * (1 + U_BF16) ** 2) * b
    return c, 2 * U_BF16, gamma * b


def _dots(a, rows, ids):
    """a (n, d) . rows[ids] (n, m, d) -> (n, m) in fp32. The rows are gathered with
    index_select (several times faster than fancy indexing); the products are a batched matrix
    product on a CPU, element by element elsewhere, where a batched fp32 product may run in
    TF32."""
    import torch

    n, m = ids.shape
    picked = rows.index_select(0, ids.reshape(-1)).view(n, m, rows.shape[1])
    if a.device.type == "cpu":
        return torch.bmm(a[:, None, :], picked.transpose(1, 2))[:, 0, :]
    return (a[:, None, :] * picked).sum(-1)


def _screened(a, u: Unembedding, k: int):
    """Top-k by a bf16 screen and an exact rescoring of M candidates per direction.

    A neuron's screened top-k is kept when its K-th exact candidate beats every value a
    non-candidate token could have: those tokens' bf16 values are at most the
    M-th candidate's, t, so their exact values are at most t + 2u|t| + c_n. Other neurons get
    their full fp32 row. Returns None when a candidate's bf16 value misses its exact value by more
    than the bound allows (the kernel is not the one the bound assumes).
    """
    import torch

    c, r, fp32_err = screen_slack(a, u)
    eb = a.bfloat16() @ u.bf16  # (chunk, V) bf16
    res = []
    certified = torch.ones(a.shape[0], dtype=torch.bool, device=a.device)
    for largest in (True, False):
        top = eb.topk(M, dim=1, largest=largest)
        cand, screened = top.indices, top.values.float()
        exact = torch.cat([_dots(a[s:s + RESCORE], u.rows, cand[s:s + RESCORE])
                           for s in range(0, a.shape[0], RESCORE)])
        # The bound, checked where both values are known (the exact ones carry fp32's own error).
        miss = (screened - exact).abs() - (c[:, None] + r * screened.abs() + fp32_err[:, None])
        if bool((miss > 0).any()):
            return None
        sign = 1.0 if largest else -1.0
        # Ties at equal value go to the smaller id, as a stable sort over ascending ids does.
        by_id = cand.sort(dim=1)
        vals = exact.gather(1, by_id.indices)
        order = (sign * vals).sort(dim=1, descending=True, stable=True).indices[:, :k]
        ids, vals = by_id.values.gather(1, order), vals.gather(1, order)
        t = screened[:, -1]  # the M-th screened value: every other token's bf16 value is past it
        beyond = sign * t + r * t.abs() + c  # the most a non-candidate's exact value can reach
        certified &= sign * vals[:, -1] >= beyond
        res += [ids, vals]
    todo = (~certified).nonzero().flatten()
    if len(todo):
        full = _exact(a[todo], u.fp32, k)
        for j, part in enumerate(full[:4]):
            res[j][todo] = part.to(res[j].dtype)
    return res[0], res[1], res[2], res[3], len(todo)


def columns(top: TopTokens, decode) -> dict:
    """The neurons/ columns of a layer: ids, values and decoded tokens, promoted and suppressed.

    decode(list of ids) -> list of token strings (the subject tokenizer, one id at a time).
    """
    out = {}
    for side, ids, vals in (("promoted", top.promoted_ids, top.promoted_values),
                            ("suppressed", top.suppressed_ids, top.suppressed_values)):
        out[f"{side}_ids"] = [row.astype("int32").tolist() for row in ids]
        out[f"{side}_values"] = [row.tolist() for row in vals]
        out[f"{side}_tokens"] = [decode(row.tolist()) for row in ids]
    return out


def output_weights(subject, layer: int):
    """What layer's neurons write and how it reaches the logits: (W_out rows (d_mlp, d_model),
    the final norm's linear part, the unembedding cut to the ids the tokenizer decodes, prepared
    once per loaded subject for every layer)."""
    ln = subject.bridge.ln_final  # a NormalizationBridge: it says which norm it wraps
    weight = ln.w.detach()
    if ln.uses_weight_offset:  # stored as an offset from 1 (Gemma-style RMSNorm)
        weight = 1.0 + weight
    norm = Norm("rmsnorm" if ln.uses_rms_norm else "layernorm", weight)
    w_out = subject.bridge.blocks[layer].mlp.W_out.detach()  # (d_mlp, d_model)
    if "unembedding" not in subject.derived:
        subject.derived["unembedding"] = Unembedding.of(subject.bridge.W_U, len(subject.tokenizer))
    return w_out, norm, subject.derived["unembedding"]


def layer_columns(subject, layer: int, k: int = K) -> dict:
    """The output-side neurons/ columns of one layer of a loaded subject."""
    w_out, norm, unembedding = output_weights(subject, layer)
    return columns(top_tokens(w_out, norm, unembedding, k), subject.token_strings)


class OutputSide:
    """Every layer's output-side columns for record.

    On a CPU they are computed in one background thread while record reads the corpus, from
    cycles the recording pass leaves idle (Python between batches, the hooks' serial parts, file
    writes; on a Ray driver, all of them). On Linux the thread is scheduled SCHED_IDLE (its
    OpenMP team inherits that), so it runs only where a core would otherwise idle and never
    holds up the pass's own threads; once record waits for a layer that is not ready, nothing
    else wants the cores and it has them all. On a GPU the products take milliseconds and the
    pass is bound by Python, which a second thread would only contend with for the GIL: there
    each layer is computed when it is written.
    """

    def __init__(self, subject, layers: list[int], compute=layer_columns):
        self._subject, self._compute, self._futures = subject, compute, {}
        if subject.device.type == "cpu":
            from concurrent.futures import ThreadPoolExecutor

            pool = ThreadPoolExecutor(1, thread_name_prefix="explain-logits",
                                      initializer=_idle_thread)
            self._futures = {la: pool.submit(compute, subject, la) for la in layers}
            pool.shutdown(wait=False)  # the queued layers still run; no new ones

    def columns(self, layer: int) -> dict:
        future = self._futures.get(layer)
        return self._compute(self._subject, layer) if future is None else future.result()

    def cancel(self) -> None:
        """Drop the layers not yet started (record failed or was interrupted)."""
        for f in self._futures.values():
            f.cancel()


def _idle_thread() -> None:
    """Make the calling thread, and the OpenMP team it starts, run only on otherwise idle
    cores (Linux; elsewhere a thread's priority cannot be set apart from its process's)."""
    import os
    import sys
    import threading

    if sys.platform == "linux":  # a thread id names one thread here (a process elsewhere)
        try:
            os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))
        except (OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
