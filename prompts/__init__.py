"""Every prompt and few-shot file of `explain`, and the few functions that read them.

This folder is the package `explainer.prompts` (mapped in pyproject.toml), so the files people
edit here are the ones an installed wheel reads. Prompts are plain files in our own words with
`$name` slots; the hash of the files a result was built from is stored with it, so results made
with different prompts are never mixed up silently. `show_token` is the one way every prompt
writes a subject token, so the explainer and the simulator see a token identically.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from string import Template

from explainer import ExplainError

# This package's own folder: the repository's prompts/, or its copy inside an installed wheel.
PROMPTS_DIR = Path(__file__).resolve().parent
MAX_TOKEN_CHARS = 40  # longer subject tokens are cut, so a token stays one short line
_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def path(name: str) -> Path:
    """The file of prompt `name` (a file name in prompts/; `.txt` is implied when absent)."""
    p = PROMPTS_DIR / name
    if not p.suffix:
        p = p.with_suffix(".txt")
    return p


def load(name: str) -> str:
    """The text of prompt file `name`, or ExplainError naming the files that exist."""
    p = path(name)
    try:
        # Read once per version of the file: simulate renders a prompt per excerpt, and
        # re-reading the files cost ~0.2 ms a request.
        return _read(p, p.stat().st_mtime_ns)
    except FileNotFoundError:
        have = sorted(f.name for f in PROMPTS_DIR.glob("*.txt"))
        raise ExplainError(f"prompt {name!r} not found in {PROMPTS_DIR} "
                           f"(have: {', '.join(have) or 'nothing'})") from None


@functools.lru_cache(maxsize=256)
def _read(p: Path, mtime_ns: int) -> str:
    return p.read_text(encoding="utf-8")


def show_token(token: str) -> str:
    """A subject token as one line of a listing: backslash, line breaks, tabs and other control
    characters escaped (so a token never breaks the `token<TAB>value` format), long ones cut."""
    out = "".join(_ESCAPES.get(ch, f"\\x{ord(ch):02x}" if ord(ch) < 32 else ch) for ch in token)
    return out if len(out) <= MAX_TOKEN_CHARS else out[: MAX_TOKEN_CHARS - 1] + "…"


def slots(text: str) -> set[str]:
    """The `$name` / `${name}` slots of a template (`$$` is a literal dollar)."""
    out = set()
    for m in Template.pattern.finditer(text):
        if m.group("invalid") is not None:
            line = text[: m.start("invalid")].count("\n") + 1
            raise ExplainError(f"prompt template has a stray '$' on line {line}; write '$$'")
        name = m.group("named") or m.group("braced")
        if name:
            out.add(name)
    return out


def fill(text: str, what: str = "template", /, **values: object) -> str:
    """Fill a template's slots; every slot must get a value and every value must have a slot."""
    need = slots(text)
    missing = sorted(need - set(values))
    unused = sorted(set(values) - need)
    if missing or unused:
        parts = []
        if missing:
            parts.append(f"no value for {', '.join('$' + n for n in missing)}")
        if unused:
            parts.append(f"no slot for {', '.join(unused)}")
        raise ExplainError(f"prompt {what}: {'; '.join(parts)}")
    return Template(text).substitute({k: str(v) for k, v in values.items()})


def render(name: str, /, **values: object) -> str:
    """Prompt file `name` with its `$name` slots filled (missing or unused names raise)."""
    return fill(load(name), name, **values)


def prompt_hash(*names: str) -> str:
    """12 hex of the sha256 of the named prompt files' contents (in the order given)."""
    h = hashlib.sha256()
    for name in names:
        data = path(name).read_bytes() if path(name).exists() else load(name).encode()
        # The length prefix keeps ("ab", "c") and ("a", "bc") apart.
        h.update(f"{len(data)}:".encode())
        h.update(data)
    return h.hexdigest()[:12]
