"""What llama-cpp-python's server charges for prompt log-probabilities (echo), per prompt token.

Starts the real server (`python -m llama_cpp.server`, the embedded SmolLM2 GGUF, logits kept
for every position as echo needs) and times, on fresh prompts of two lengths, a completion that
echoes the prompt with its top-N log-probabilities against one that does not: the difference
per prompt token is what the all-at-once simulator pays on that server beyond the forward pass.
Prints ms per prompt token, of wall time and of the server's CPU time (user + system, all its
threads): on a shared machine the wall time follows the load, the CPU time much less. Short on
purpose (a few minutes on 2 busy cores).

    .venv/bin/python bench/bench_echo_cost.py [--lengths 32 128] [--top 20 100] [--reps 1]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
import urllib.request
from pathlib import Path


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as resp:
        return json.loads(resp.read())


def _prompt(rng: random.Random, n_words: int) -> str:
    # Fresh words every time, so the server's prompt cache cannot reuse an earlier prefix.
    words = ["cat", "river", "seven", "blue", "open", "quietly", "stone", "north", "paper",
             "light", "under", "green", "table", "ninety", "sound"]
    return " ".join(rng.choice(words) + str(rng.randrange(100)) for _ in range(n_words))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", type=int, nargs=2, default=[32, 128], help="prompt words")
    ap.add_argument("--top", type=int, nargs="+", default=[20, 100], help="top logprobs asked")
    ap.add_argument("--reps", type=int, default=1)
    args = ap.parse_args()
    import psutil

    from explainer.llm import server

    rng = random.Random(0)
    srv = server.start("smol", Path(tempfile.mkdtemp()) / "server.log", logits_all=True)
    url = srv.base_url + "/completions"
    proc = psutil.Process(srv.proc.pid)

    def cpu_s() -> float:
        t = proc.cpu_times()
        return t.user + t.system

    try:
        _post(url, {"model": "smol", "prompt": "warm up", "max_tokens": 1})
        rows = {}
        for n_words in args.lengths:
            for what in ["plain"] + [f"echo{t}" for t in args.top]:
                times, cpus, toks = [], [], []
                for _ in range(args.reps):
                    body = {"model": "smol", "prompt": _prompt(rng, n_words), "max_tokens": 1,
                            "temperature": 0}
                    if what != "plain":
                        body.update(echo=True, logprobs=int(what[4:]))
                    t0, c0 = time.perf_counter(), cpu_s()
                    out = _post(url, body)
                    times.append(time.perf_counter() - t0)
                    cpus.append(cpu_s() - c0)
                    toks.append(out["usage"]["prompt_tokens"])
                rows[(n_words, what)] = (sum(times) / len(times), sum(toks) / len(toks),
                                         sum(cpus) / len(cpus))
                print(f"{what:>8} {rows[(n_words, what)][1]:6.0f} prompt tokens: "
                      f"{rows[(n_words, what)][0]:7.2f} s wall, {rows[(n_words, what)][2]:7.2f} s "
                      "server CPU", flush=True)
        lo, hi = args.lengths
        for t in args.top:
            for col, what in ((0, "wall"), (2, "server CPU")):
                extra = [(rows[(n, f"echo{t}")][col] - rows[(n, "plain")][col])
                         / rows[(n, "plain")][1] for n in (lo, hi)]
                total = [rows[(n, f"echo{t}")][col] / rows[(n, f"echo{t}")][1] for n in (lo, hi)]
                print(f"echo + top-{t} logprobs, {what}: {1000 * total[1]:.1f} ms per prompt "
                      f"token in all ({1000 * extra[1]:.1f} ms above a plain completion) at "
                      f"{rows[(hi, 'plain')][1]:.0f} tokens; {1000 * total[0]:.1f} "
                      f"({1000 * extra[0]:.1f}) at {rows[(lo, 'plain')][1]:.0f}")
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
