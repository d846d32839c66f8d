"""The decoding thread count: timed on the first steps, the faster kept, the caller's restored."""

from __future__ import annotations

import time

import pytest
import torch

from explainer.llm import threads as T


def _decode(steps: int, slow_with: int) -> tuple[T.DecodeThreads, list[int]]:
    """Run `steps` fake decoding steps that take 20 ms with `slow_with` threads, 1 ms else."""
    probe = T.DecodeThreads(torch)
    used = []
    try:
        for step in range(steps):
            probe.before(step)
            used.append(torch.get_num_threads())
            time.sleep(0.02 if torch.get_num_threads() == slow_with else 0.001)
            probe.after(step)
    finally:
        probe.close()
    return probe, used


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("slow_with, want", [(2, 1), (1, 2)])
def test_the_faster_thread_count_decodes_the_rest(two_threads, slow_with, want):
    probe, used = _decode(12, slow_with)
    tried = T.WARM + 2 * T.TRIES
    assert used[:tried] == [2] * (T.WARM + T.TRIES) + [1] * T.TRIES  # both tried, in order
    assert probe.chosen == want and used[tried:] == [want] * (12 - tried)
    assert torch.get_num_threads() == 2  # the caller's count is back


def test_a_short_answer_never_chooses_and_still_restores(two_threads):
    probe, used = _decode(3, slow_with=2)
    assert probe.chosen is None and used == [2, 2, 2] and torch.get_num_threads() == 2


def test_one_thread_to_begin_with_is_kept():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        probe, used = _decode(8, slow_with=1)
        assert probe.chosen == 1 and used == [1] * 8
    finally:
        torch.set_num_threads(before)
