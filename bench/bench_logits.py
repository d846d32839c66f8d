"""What the output side costs `record`: the per-layer logit products against the recording.

    python bench/bench_logits.py                       # embedded model + GPT-2-small-shaped model
    python bench/bench_logits.py --models smollm2-135m --n 256

Prints, per model, the seconds of `explain record` (every layer, N excerpts, the output side
included, as users run it) and of the output side alone (record/logits.py's product and top-k for
every layer, over the model's full vocabulary), and their ratio. The GPT-2-small-shaped model is
random with GPT-2's 50,257-entry unembedding; its test tokenizer decodes only 400 ids, so record
itself ranks only those there, and the figure here is the full-vocabulary product GPT-2 pays.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]


def measure(model: str, n: int, repeats: int) -> dict:
    import torch

    from explainer.config import RecordConfig
    from explainer.record import logits, stage
    from explainer.record import subject as models

    spec = models.resolve(model)
    subject = models.load(spec)
    layers = list(range(spec.n_layers))
    out_s = float("inf")
    for _ in range(repeats):  # best of: this machine's noise is large
        t0 = time.perf_counter()
        for la in layers:
            w_out, norm, w_u, _ = subject.output_weights(la)
            top = logits.top_tokens(w_out, norm, w_u)  # full vocabulary, as GPT-2 has it
            logits.columns(top, subject.token_strings)
        out_s = min(out_s, time.perf_counter() - t0)
    rec_s = float("inf")
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = RecordConfig(run=Path(tmp) / "run", model=model, n_excerpts=n)
            t0 = time.perf_counter()
            stage.run(cfg)
            rec_s = min(rec_s, time.perf_counter() - t0)
    del torch
    return {"model": spec.name, "layers": len(layers), "d_mlp": spec.d_mlp,
            "excerpts": n, "record_s": round(rec_s, 2), "output_side_s": round(out_s, 2),
            "share_of_record": round(out_s / rec_s, 3),
            "per_layer_s": round(out_s / len(layers), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="smollm2-135m,gpt2-arch")
    ap.add_argument("--n", type=int, default=2048, help="excerpts recorded (record's default)")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    for name in args.models.split(","):
        model = name
        if name == "gpt2-arch":
            from bench_record import gpt2_small_shaped

            model = str(gpt2_small_shaped(Path(tempfile.gettempdir()) / "explain-bench-gpt2"))
        print(measure(model, args.n, args.repeats), flush=True)


if __name__ == "__main__":
    main()
