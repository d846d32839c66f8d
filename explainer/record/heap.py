"""glibc heap settings for the recording pass (see steady_heap)."""

from __future__ import annotations

import contextlib
import ctypes
import itertools

TRIM_EVERY = 64  # batches between heap trims: a safety net against fragmentation on long runs


@contextlib.contextmanager
def steady_heap(trim_every: int = TRIM_EVERY):
    """Keep freed memory in glibc's heap for the pass; yields a per-batch callback that trims.

    By default glibc hands the top of its heap back to the OS whenever enough of it is free,
    and each batch's large temporaries then page-fault it in again: up to a GB of faults per
    batch on GPT-2 small, depending on what else lives in the heap. Here large blocks come
    from the heap and stay, and every trim_every batches malloc_trim bounds the peak.
    Afterwards the heap is trimmed and the thresholds left where glibc's own adaptive ones
    settle in a process that frees large tensors (mmap 32 MB, trim twice that): setting
    them at all switches the adaptation off for good, and its 128 KB starting values made every
    later stage in the process (the embedded LLM's forward passes in `explain run`) map and
    fault in its temporaries afresh: 20-25% slower. A no-op off glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        yield lambda: None
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, MMAP_MAX)
    mallopt(m_trim_threshold, (1 << 31) - 1)
    batches = itertools.count(1)
    try:
        yield lambda: malloc_trim(0) if next(batches) % trim_every == 0 else None
    finally:
        mallopt(m_trim_threshold, 2 * MMAP_MAX)  # as glibc adapts it: twice the mmap threshold
        malloc_trim(0)


MMAP_MAX = 32 << 20  # the largest mmap threshold glibc allows (and adapts up to) on 64-bit
