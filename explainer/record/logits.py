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
"""

from __future__ import annotations

from dataclasses import dataclass

K = 10  # promoted and suppressed tokens kept per neuron
CHUNK = 512  # neurons per product: bounds the (chunk, d_vocab) float32 temporary (~100 MB)


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


def top_tokens(w_out, norm: Norm, w_u, k: int = K, n_vocab: int | None = None) -> TopTokens:
    """Top-k promoted and suppressed ids per neuron: one matrix product per chunk of neurons.

    w_out (N, d_model) are the layer's MLP output rows, w_u (d_model, d_vocab) the unembedding;
    n_vocab keeps only the first ids (those the tokenizer can decode).
    """
    import torch

    w_u = w_u.float()
    if n_vocab is not None:
        w_u = w_u[:, :n_vocab]
    k = min(k, w_u.shape[1])
    norm = Norm(norm.kind, norm.weight.float())
    outs = {"pi": [], "pv": [], "si": [], "sv": []}
    with torch.inference_mode():
        for start in range(0, w_out.shape[0], CHUNK):
            eff = fold(w_out[start:start + CHUNK].float(), norm) @ w_u  # (chunk, d_vocab)
            hi = eff.topk(k, dim=1)  # sorted: largest first
            lo = eff.topk(k, dim=1, largest=False)  # sorted: most negative first
            outs["pi"].append(hi.indices)
            outs["pv"].append(hi.values)
            outs["si"].append(lo.indices)
            outs["sv"].append(lo.values)
    cat = {name: torch.cat(parts).cpu().numpy() for name, parts in outs.items()}
    return TopTokens(cat["pi"], cat["pv"].astype("float32"), cat["si"],
                     cat["sv"].astype("float32"))


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


def layer_columns(subject, layer: int, k: int = K) -> dict:
    """The output-side neurons/ columns of one layer of a loaded subject (record's per-layer
    write calls this)."""
    w_out, norm, w_u, n_vocab = subject.output_weights(layer)
    return columns(top_tokens(w_out, norm, w_u, k, n_vocab), subject.token_strings)
