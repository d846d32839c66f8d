"""Cutting the in-process model's sequences into forward passes (llm/passes.py)."""

from __future__ import annotations

import random

from explainer.llm import passes


def test_common_prefix_length():
    assert passes.common([1, 2, 3], [1, 2, 4], [1, 2]) == 2
    assert passes.common([5], [6]) == 0 and passes.common() == 0
    assert passes.common([1, 2, 3]) == 3


def test_prompts_of_one_header_share_a_pass_and_every_prompt_is_planned_once():
    """Prompts interleaved from three headers (a shared preamble, a per-explanation header,
    then each excerpt's own tokens, value slots from the first of them) come out in passes
    whose members all have the same tokens before their first wanted row."""
    rng = random.Random(0)
    preamble = list(range(100, 140))
    headers = [[7] * 5, [8] * 9, [9] * 20]
    batch, want = [], []
    for i in range(30):
        head = preamble + headers[i % 3]
        own = [rng.randrange(1000, 2000) for _ in range(rng.randrange(40, 80))]
        batch.append(head + own)
        want.append(list(range(len(head) + 1, len(head) + len(own), 2)))
    plan = passes.plan(batch, want)
    assert sorted(i for g in plan for i in g) == list(range(30))
    for g in plan:
        heads = {tuple(batch[i][:want[i][0] - 1]) for i in g}
        assert len(heads) == 1  # one header a pass
        assert len(g) * max(len(batch[i]) for i in g) <= passes.MAX_PADDED or len(g) == 1
    assert len(plan) == 3  # 10 prompts of < 200 tokens each fit one pass per header


def test_wanting_every_row_or_none_groups_by_length_only():
    batch = [[1, 2, 3, 4], [5, 6, 7], [8, 9]]
    assert passes.plan(batch, [[0, 1], [0], []]) == passes.by_length([4, 3, 2])
    long = [[0] * 5000, [1] * 5000]
    assert passes.plan(long, [[0], [0]]) == [[0], [1]]  # 2 x 5000 padded is over the cap
