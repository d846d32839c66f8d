"""Hand-built run directories with known activations, for stage tests that need no subject model.

`make_run(tmp_path)` writes a model "tiny" with 2 layers of 8 neurons and a dozen 8-token
excerpts through `store`, exactly as `record` would lay them out. Neuron n of layer L fires on
the word VOCAB[(n + L) % len(VOCAB)]: on that token the activation is 1 + excerpt_id / 10, and
-0.1 elsewhere, so rankings and scaled values are easy to compute independently.
"""

from __future__ import annotations

from pathlib import Path

from explainer import run as rundir

MODEL = "tiny"
VOCAB = [" cat", " dog", " red", " blue", " run", " jump", " one", " two", " sea", " sky"]
SPLITS = ("explain", "calibrate", "valid", "test")


def trigger(layer: int, neuron: int) -> str:
    """The token that neuron `neuron` of `layer` fires on."""
    return VOCAB[(neuron + layer) % len(VOCAB)]


def excerpt_tokens(excerpt_id: int, ctx: int = 8) -> list[str]:
    """Token strings of one excerpt: a fixed walk through VOCAB, different per excerpt."""
    return [VOCAB[(excerpt_id * 3 + i * (excerpt_id % 4 + 1)) % len(VOCAB)] for i in range(ctx)]


def activations(layer: int, neuron: int, excerpt_id: int, ctx: int = 8) -> list[float]:
    """The neuron's activation on every token of an excerpt."""
    hit = trigger(layer, neuron)
    return [1.0 + excerpt_id / 10 if t == hit else -0.1 for t in excerpt_tokens(excerpt_id, ctx)]


def make_run(root: Path, *, n_layers: int = 2, d_mlp: int = 8, n_excerpts: int = 12,
             ctx: int = 8, layers: tuple[int, ...] | None = None, n_random: int = 3) -> Path:
    """Write run.json, excerpts/ and records/ (top: every excerpt ranked by max; random: a few)."""
    run = Path(root)
    layers = tuple(range(n_layers)) if layers is None else layers
    ids = list(range(n_excerpts))
    toks = [excerpt_tokens(i, ctx) for i in ids]
    vocab_ids = {t: i for i, t in enumerate(VOCAB)}
    rundir.write_columns(run, "excerpts", {
        "excerpt_id": ids, "token_ids": [[vocab_ids[t] for t in ts] for ts in toks],
        "tokens": toks}, model=MODEL)
    for layer in layers:
        cols: dict[str, list] = {c: [] for c in rundir.table("records").schema.names}
        for neuron in range(d_mlp):
            acts = {i: activations(layer, neuron, i, ctx) for i in ids}
            ranked = sorted(ids, key=lambda i: (-max(acts[i]), i))
            kept = [("top", i, r, SPLITS[r % 4]) for r, i in enumerate(ranked)]
            kept += [("random", i, r, SPLITS[1 + r % 3]) for r, i in enumerate(ids[:n_random])]
            for kind, i, rank, split in kept:
                cols["neuron"].append(neuron)
                cols["excerpt_id"].append(i)
                cols["kind"].append(kind)
                cols["rank"].append(rank)
                cols["split"].append(split)
                cols["activations"].append(acts[i])
                cols["max_activation"].append(max(acts[i]))
        rundir.write_columns(run, "records", cols, model=MODEL, layer=layer)
    rundir.write_run_json(run, {"format": 1, "models": {MODEL: {
        "model": MODEL, "n_layers": n_layers, "d_mlp": d_mlp, "n_params": 0, "ctx": ctx,
        "layers_done": list(layers)}}})
    return run


def explain_excerpts(layer: int, neuron: int, n_excerpts: int = 12, ctx: int = 8,
                     shown: int = 10) -> list[list[tuple[str, float]]]:
    """Independently: the neuron's explain-split top excerpts, in rank order, as (token, act)."""
    ids = list(range(n_excerpts))
    ranked = sorted(ids, key=lambda i: (-max(activations(layer, neuron, i, ctx)), i))
    chosen = [i for r, i in enumerate(ranked) if r % 4 == 0][:shown]
    return [list(zip(excerpt_tokens(i, ctx), activations(layer, neuron, i, ctx))) for i in chosen]


def gated_activations(layer: int, neuron: int, excerpt_id: int, ctx: int = 8) -> list[float]:
    """A gated neuron's one activation per token, both signs: 1 + excerpt_id / 10 on its own
    trigger, minus that on the next neuron's trigger (its negative side), 0 elsewhere."""
    up, down = trigger(layer, neuron), trigger(layer, (neuron + 1) % len(VOCAB))
    size = 1.0 + excerpt_id / 10
    return [size if t == up else -size if t == down else 0.0
            for t in excerpt_tokens(excerpt_id, ctx)]


def make_gated_run(root: Path, *, d_mlp: int = 8, n_excerpts: int = 12, ctx: int = 8,
                   n_random: int = 3) -> Path:
    """One layer of gated neurons (`gated_activations`): top excerpts ranked by max, bottom ones
    by min, random ones the first `n_random`, every kind reading the same activations (as
    record keeps them), and run.json naming both sides."""
    run = make_run(root, n_layers=1, d_mlp=d_mlp, n_excerpts=n_excerpts, ctx=ctx,
                   n_random=n_random)
    rundir.remove_partition(run, "records", MODEL, 0)
    ids = list(range(n_excerpts))
    cols: dict[str, list] = {c: [] for c in rundir.table("records").schema.names}
    for neuron in range(d_mlp):
        acts = {i: gated_activations(0, neuron, i, ctx) for i in ids}
        kept = [("top", i, r, SPLITS[r % 4])
                for r, i in enumerate(sorted(ids, key=lambda i: (-max(acts[i]), i)))]
        kept += [("bottom", i, r, SPLITS[r % 4])
                 for r, i in enumerate(sorted(ids, key=lambda i: (min(acts[i]), i)))]
        kept += [("random", i, r, SPLITS[1 + r % 3]) for r, i in enumerate(ids[:n_random])]
        for kind, i, rank, split in kept:
            for col, v in (("neuron", neuron), ("excerpt_id", i), ("kind", kind),
                           ("rank", rank), ("split", split), ("activations", acts[i]),
                           ("max_activation", max(acts[i]))):
                cols[col].append(v)
    rundir.write_columns(run, "records", cols, model=MODEL, layer=0)
    meta = rundir.read_run_json(run)
    meta["models"][MODEL]["sides"] = ["pos", "neg"]
    rundir.write_run_json(run, meta)
    return run
