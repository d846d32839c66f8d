"""Prompt files: rendering, slot checks, hashing, and one pinned rendering of the explain prompt."""

from __future__ import annotations

import hashlib

import pytest

from explainer import ExplainError, prompts
from explainer.describe import prompt as P


@pytest.fixture
def tmp_prompts(tmp_path, monkeypatch):
    monkeypatch.setattr(prompts, "PROMPTS_DIR", tmp_path)
    (tmp_path / "greet.txt").write_text("Hello $name, you owe $$${amount}.\n")
    (tmp_path / "other.txt").write_text("x")
    return tmp_path


def test_render_fills_slots(tmp_prompts):
    assert prompts.render("greet", name="Ada", amount=3) == "Hello Ada, you owe $3.\n"
    assert prompts.render("greet.txt", name="Ada", amount=3) == "Hello Ada, you owe $3.\n"


def test_missing_and_unused_names_are_named(tmp_prompts):
    with pytest.raises(ExplainError, match=r"greet: no value for \$amount$"):
        prompts.render("greet", name="Ada")
    with pytest.raises(ExplainError, match=r"no value for \$amount; no slot for colour, size"):
        prompts.render("greet", name="Ada", size=1, colour=2)


def test_stray_dollar_is_an_error(tmp_prompts):
    (tmp_prompts / "bad.txt").write_text("line one\ncosts $ 5\n")
    with pytest.raises(ExplainError, match="stray '\\$' on line 2"):
        prompts.render("bad")


def test_missing_file_lists_what_exists(tmp_prompts):
    with pytest.raises(ExplainError, match="'nope' not found .*greet.txt, other.txt"):
        prompts.load("nope")


def test_prompt_hash_is_sha256_of_contents(tmp_prompts):
    a = (tmp_prompts / "greet.txt").read_bytes()
    b = (tmp_prompts / "other.txt").read_bytes()
    want = hashlib.sha256(f"{len(a)}:".encode() + a + f"{len(b)}:".encode() + b).hexdigest()[:12]
    assert prompts.prompt_hash("greet", "other") == want
    assert prompts.prompt_hash("other", "greet") != want
    (tmp_prompts / "other.txt").write_text("y")
    assert prompts.prompt_hash("greet", "other") != want


def test_every_describe_prompt_file_exists_and_renders():
    for name in P.FILES:
        assert prompts.load(name).strip()
    assert len(P.examples()) == 2
    assert len(P.prompt_hash()) == 12


GOLDEN_QUESTION = """Excerpts:
<start>
 the
 harbour\t10
 is
<end>
<start>
 a
 ship\t5
\\n
<end>

What does this neuron fire on? Reply with one short phrase.
"""


def test_golden_question():
    excerpts = [[(" the", -0.2), (" harbour", 2.0), (" is", 0.1)],
                [(" a", 0.0), (" ship", 1.0), ("\n", 0.0)]]
    assert P.question(excerpts) == GOLDEN_QUESTION


def test_golden_chat_shape():
    excerpts = [[(" the", -0.2), (" harbour", 2.0), (" is", 0.1)]]
    msgs = P.chat_messages(excerpts)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert msgs[0]["content"] == prompts.load(P.SYSTEM).strip()
    assert msgs[2]["content"].startswith("places and vessels at the waterfront")
    assert msgs[-1]["content"] == P.question(excerpts)
    # The completion form carries the same system text, shots and question, ending in the cue.
    text = P.completion_prompt(excerpts)
    assert text.startswith(msgs[0]["content"]) and text.endswith("This neuron fires on:\n")
    assert msgs[2]["content"] in text and msgs[-1]["content"] in text
