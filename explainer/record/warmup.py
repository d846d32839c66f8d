"""The CPU samplers' compiled pass, compiled before record needs it.

Numba compiles kernels.record_layer on its first call in a fresh environment (~10 s on 2
cores) and caches the machine code; record starts that compile in a second process while it
loads the model, so a first run does not wait for it after the load.
"""

from __future__ import annotations

import numpy as np

from explainer.record import kernels


def warm() -> None:
    """Compile record_layer into Numba's cache by calling it once on tiny arrays of the very
    types LayerSamplers passes (C-contiguous float32 activations, int64 ids, a uint64 stream,
    the samplers' (vals, ids, slot, store) tuples), so a later process loads the machine code
    instead of compiling it (~10 s on 2 cores)."""
    b, ctx, n, k = 2, 3, 4, 2
    x = np.zeros((b, 1 + ctx, n), np.float32)

    def sampler(rows):
        return (np.full((rows, k), -np.inf, np.float32), np.full((rows, k), -1, np.int64),
                np.zeros((rows, k), np.int64), np.zeros((rows, k, ctx), np.float32))

    kernels.record_layer(x, 1, np.arange(b, dtype=np.int64), np.uint64(1),
                         np.empty((b, n), np.float32), np.empty((b, n), np.float32),
                         np.zeros(n), np.zeros(n), np.zeros(n, np.int64),
                         np.full(n, np.inf, np.float32), np.full(n, -np.inf, np.float32),
                         sampler(n), sampler(n), sampler(n))


def warm_in_background():
    """Start a process that runs warm() (or finds it cached, in about a second), so that the
    compile overlaps what record does before its first batch (loading the model: seconds of
    one core in Python) instead of following it. It dies with its parent (Linux); it writes
    nothing but Numba's cache, whose files are replaced atomically. None if it cannot start,
    or when the cache already holds record_layer (its index file exists: most runs)."""
    import os
    import subprocess
    import sys

    try:  # Numba's own record of where the cache lives (not public API: guarded)
        if os.path.exists(kernels.record_layer._cache._cache_file._index_path):
            return None
    except AttributeError:
        pass

    code = ("import ctypes, os, signal, sys\n"
            "if sys.platform.startswith('linux'):\n"
            "    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG\n"
            "    if os.getppid() != int(sys.argv[1]): sys.exit(0)  # the parent died already\n"
            "from explainer.record import warmup\n"
            "warmup.warm()\n")
    try:
        proc = subprocess.Popen([sys.executable, "-c", code, str(os.getpid())],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    except OSError:
        return None
    _WARMING[:] = [p for p in _WARMING if p.poll() is None] + [proc]  # reaped, never GC'd running
    return proc


_WARMING: list = []  # warm-up processes this process started
