"""What the output side costs `record`: a recording with it against the same recording without.

    python bench/bench_logits.py                       # embedded model + GPT-2-small-shaped model
    python bench/bench_logits.py --models smollm2-135m --n 256 --repeats 3
    python bench/bench_logits.py --device cuda         # both on the GPU

Per model, `explain record` (every layer, N excerpts, as users run it) is timed in three
variants, alternating, --repeats times each:
  none        the output side's columns made before the clock starts (what record costs without it)
  serial      each layer's output side computed when the layer is written (before this bench's
              change: one product after another on the recording's critical path)
  record      as record runs it (logits.OutputSide): on a CPU every layer's products in a
              low-priority thread during the pass, on a GPU each when its layer is written
and the output side alone (every layer's top tokens) as record computes them (screened) and
unscreened (the full product: fp32 on a CPU, float64 on a GPU). Printed:
  slowdown_serial, slowdown_record = best variant / best none - 1: what the output side adds
                    to a recording's wall time;
  spread_none     = (worst - best) / best of the `none` recordings: how much the same recording
                    varies from run to run here. A slowdown below the spread is not measurable.
The GPT-2-small-shaped model is random with GPT-2's 50,257-entry unembedding; its test tokenizer
decodes only 400 ids, so every variant here ranks GPT-2's full vocabulary, as GPT-2 itself would.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]


def output_side(subject, unembedding, layers, repeats: int) -> tuple[float, int]:
    """Best seconds for every layer's top tokens, and the neurons whose full row was computed
    (the screen's fallbacks, or all of them unscreened)."""
    import torch

    from explainer.record import logits

    best, full_rows = float("inf"), 0
    for _ in range(repeats):  # best of: this machine's noise is large
        t0 = time.perf_counter()
        full_rows = 0
        for la in layers:
            w_out, norm, _ = logits.output_weights(subject, la)
            top = logits.top_tokens(w_out, norm, unembedding)
            logits.columns(top, subject.token_strings)
            full_rows += top.full_rows
        if subject.device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, full_rows


class Serial:
    """The output side computed when each layer is written, on the recording's critical path."""

    def __init__(self, subject, layers, compute):
        self.subject, self.compute = subject, compute

    def columns(self, layer):
        return self.compute(self.subject, layer)

    def cancel(self):
        pass


class Ready:
    """The output side's columns computed before the clock started: record without its cost."""

    def __init__(self, done: dict):
        self.done = done

    def columns(self, layer):
        return self.done[layer]

    def cancel(self):
        pass


def measure(model: str, n: int, repeats: int, device: str, only: list[str]) -> dict:
    from explainer.config import RecordConfig
    from explainer.record import logits, stage
    from explainer.subject import models

    spec = models.resolve(model)
    subject = models.load(spec, device=device)
    layers = list(range(spec.n_layers))
    full = logits.Unembedding.of(subject.bridge.W_U)  # the whole vocabulary, screened

    def compute(subj, la):
        w_out, norm, _ = logits.output_weights(subj, la)
        return logits.columns(logits.top_tokens(w_out, norm, full), subj.token_strings)

    out_s, full_rows = output_side(subject, full, layers, repeats)
    exact_s, _ = output_side(subject, logits.Unembedding.of(subject.bridge.W_U, screen=False),
                             layers, repeats)
    done = {la: compute(subject, la) for la in layers}
    shipped = logits.OutputSide
    variants = {"none": lambda s, la: Ready(done), "serial": lambda s, la: Serial(s, la, compute),
                "record": lambda s, la: shipped(s, la, compute)}
    variants = {name: make for name, make in variants.items() if name in only}
    times = {name: [] for name in variants}
    try:
        for _ in range(repeats):
            for name, make in variants.items():  # alternating: drifts in load hit all three
                logits.OutputSide = make
                with tempfile.TemporaryDirectory() as tmp:
                    cfg = RecordConfig(run=Path(tmp) / "run", model=model, n_excerpts=n,
                                       device=device)
                    t0 = time.perf_counter()
                    stage.run(cfg)
                    times[name].append(time.perf_counter() - t0)
    finally:
        logits.OutputSide = shipped
    best = {name: min(t) for name, t in times.items()}
    slowdown = {f"slowdown_{name}": round(best[name] / best["none"] - 1, 4)
                for name in variants if name != "none"}
    return {"model": spec.name, "device": device, "layers": len(layers), "d_mlp": spec.d_mlp,
            "d_vocab": full.fp32.shape[1], "excerpts": n,
            "record_s": {name: [round(t, 1) for t in ts] for name, ts in times.items()},
            "output_side_s": round(out_s, 2), "unscreened_s": round(exact_s, 2),
            "neurons_ranked_in_full": f"{full_rows}/{len(layers) * spec.d_mlp}",
            **slowdown,
            "spread_none": round((max(times["none"]) - best["none"]) / best["none"], 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="smollm2-135m,gpt2-arch")
    ap.add_argument("--n", type=int, default=2048, help="excerpts recorded (record's default)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--variants", default="none,serial,record",
                    help="which recordings to time (none is the reference, always timed)")
    args = ap.parse_args()
    for name in args.models.split(","):
        model = name
        if name == "gpt2-arch":
            from bench_record import gpt2_small_shaped

            model = str(gpt2_small_shaped(Path(tempfile.gettempdir()) / "explain-bench-gpt2"))
        only = ["none"] + [v for v in args.variants.split(",") if v != "none"]
        print(measure(model, args.n, args.repeats, args.device, only), flush=True)


if __name__ == "__main__":
    main()
