"""The subject model inside the judge: it reads generated texts, and it is steered.

Generation feeds the subject texts it never saw in the corpus. Each is read as record reads an
excerpt, behind the BOS token, and after a short neutral lead-in whose activations are dropped:
no scored token sits right after the BOS (where many models park large activations), and the
text is tokenised with a leading space, so its first word is the same token it would be inside
running text ("The" at a sentence start in a corpus excerpt is " The" after a full stop).

Steering adds a constant to one neuron's activation (its `hook_post`) at every position, which
adds that multiple of the neuron's output row W_out[n] to the residual stream, and reads how the
next-token log-probabilities move.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from explainer import ExplainError
from explainer import run as rundir

LEAD_IN = "Text:"  # read before every generated text; its activations are not kept
MAX_TEXT_TOKENS = 64  # a generated text is cut here (the corpus excerpts' default length)
BATCH = 32  # texts per forward pass
STEER_BATCH = 4  # excerpts per steering pass (their full-vocabulary logits are held)


@dataclass(frozen=True)
class Reading:
    """One text as the subject read it: its tokens and one layer's activations on them."""

    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]
    acts: object  # (len(tokens), d_mlp) float32 numpy, every neuron of the layer


def load_subject(run_dir: Path, model: str, device: str = "cpu"):
    """The run's subject model, loaded once (record's `run.json` says which one it was)."""
    from explainer.subject import models

    meta = rundir.model_meta(run_dir, model) or {}
    if not meta:
        raise ExplainError(f"--run {run_dir}: run.json does not name the subject model "
                           f"{model}; record the run with `explain record` first")
    name = meta.get("model_id") if meta.get("source") == "local" else meta.get("model", model)
    try:
        spec = models.resolve(str(name))
    except ExplainError:
        raise ExplainError(f"--run {run_dir}: its subject model {name} cannot be loaded here "
                           "(generation and steering run it)") from None
    return models.load(spec, device=device)


def read_texts(subject, layer: int, texts: list[str]) -> list[Reading]:
    """Each text read behind BOS + LEAD_IN; the layer's activations on the text's own tokens."""
    import numpy as np
    import torch

    tok = subject.tokenizer
    lead = tok(LEAD_IN, add_special_tokens=False)["input_ids"]
    ids = [tok(" " + t.strip(), add_special_tokens=False)["input_ids"][:MAX_TEXT_TOKENS]
           for t in texts]
    pad = subject.bos_id if subject.bos_id is not None else 0
    out: list[Reading] = []
    for start in range(0, len(ids), BATCH):
        part = ids[start:start + BATCH]
        width = len(lead) + max(len(p) for p in part)
        # Right padding: causal attention keeps every real position blind to the pads after it.
        rows = [lead + p + [pad] * (width - len(lead) - len(p)) for p in part]
        got = {}
        with torch.inference_mode():
            subject.stream(torch.tensor(rows), [layer], lambda la, a: got.update(acts=a))
        acts = got["acts"].numpy()  # (B, width, d_mlp), the BOS column already dropped
        for i, p in enumerate(part):
            out.append(Reading(tuple(p), tuple(subject.token_strings(p)),
                               np.ascontiguousarray(acts[i, len(lead):len(lead) + len(p)])))
    return out


def log_probs(subject, token_ids, keep: list[int], layer: int | None = None,
              neuron: int | None = None, add: float = 0.0):
    """(B, ctx, len(keep)) next-token log-probabilities of the ids `keep`, on excerpts read
    behind the BOS (the BOS position dropped), with `add` added to one neuron's activation at
    every position after the BOS. Passes of STEER_BATCH excerpts bound the (batch, ctx, d_vocab)
    logits held at once."""
    import torch

    from explainer.subject.models import HOOK

    skip = 0 if subject.bos_id is None else 1

    def steer(x, hook):
        x[:, skip:, neuron] += add  # (B, pos, d_mlp); the BOS (attention sink) left alone
        return x

    hooks = [] if layer is None else [(HOOK.format(layer=layer), steer)]
    idx = torch.tensor(keep, dtype=torch.long)
    out = []
    with torch.inference_mode():
        for start in range(0, len(token_ids), STEER_BATCH):
            part = subject.with_bos(torch.as_tensor(token_ids[start:start + STEER_BATCH]))
            logits = subject.bridge.run_with_hooks(part.to(subject.device), fwd_hooks=hooks,
                                                   return_type="logits")
            lp = torch.log_softmax(logits[:, skip:].float(), dim=-1)
            out.append(lp[..., idx.to(lp.device)].cpu())
    return torch.cat(out)


def named_ids(subject, words: list[str]) -> list[int]:
    """The subject's ids for quoted words: each word as it follows another word (a leading
    space) and as it starts a line, where it is a single token in that form; a word that is one
    token in neither form counts by the first token of its spaced form (what the model must
    predict first to write it)."""
    tok = subject.tokenizer
    out: list[int] = []
    for w in words:
        w = _unescape(w).strip()
        if not w:
            continue
        forms = [tok(f, add_special_tokens=False)["input_ids"] for f in (" " + w, w)]
        picked = [f[0] for f in forms if len(f) == 1] or [forms[0][0]]
        out += [int(i) for i in picked if int(i) not in out and int(i) < len(tok)]
    return out


def _unescape(word: str) -> str:
    """A token as prompts write it (prompts.show_token) back to its text."""
    return word.replace("\\n", "\n").replace("\\t", "\t").replace('\\"', '"')
