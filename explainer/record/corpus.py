"""Text sources -> fixed-length token excerpts, streamed so memory never grows with the corpus.

A corpus spec is `embedded` (Python's own pydoc topics: English prose present everywhere), a local
.txt/.jsonl/.parquet file or a folder of them, or `hf:NAME[:SPLIT]` (needs network). Documents
are read in a fixed order, tokenised with the subject's tokenizer, joined with a blank line and cut
into consecutive excerpts of `ctx` tokens, so a spec and ctx always give the same excerpts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from explainer import ExplainError

SUFFIXES = (".txt", ".jsonl", ".parquet")
VALID = "embedded, a .txt/.jsonl/.parquet file or folder, or hf:NAME[:SPLIT]"


@dataclass(frozen=True)
class Excerpt:
    """ctx consecutive tokens of the corpus."""

    excerpt_id: int  # position in reading order, from 0
    token_ids: list[int]


def _embedded_docs() -> Iterator[str]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield topics[name]


def _file_docs(path: Path) -> Iterator[str]:
    if path.suffix == ".txt":
        # Paragraph by paragraph, so one huge file never sits in memory whole.
        para: list[str] = []
        with path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                para.append(line)
                if not line.strip() or len(para) > 2000:
                    yield "".join(para)
                    para = []
        if para:
            yield "".join(para)
    elif path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)["text"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise ExplainError(
                        f"--corpus {path}: line {n} is not a JSON object with a 'text' field") from None
                yield str(text)
    else:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        if "text" not in pf.schema_arrow.names:
            raise ExplainError(f"--corpus {path}: no 'text' column (has {pf.schema_arrow.names})")
        for batch in pf.iter_batches(columns=["text"], batch_size=256):
            yield from (t for t in batch.column(0).to_pylist() if t)


def _hf_docs(spec: str) -> Iterator[str]:
    name, _, split = spec[3:].partition(":")
    try:
        import datasets
    except ImportError:
        raise ExplainError(f"--corpus {spec}: needs the `datasets` package "
                           "(pip install 'explain[hf]')") from None
    try:
        ds = datasets.load_dataset(name, split=split or "train", streaming=True)
        for row in ds:
            yield str(row["text"])
    except ExplainError:
        raise
    except Exception as err:  # offline, unknown dataset, no text column: all bad input here
        raise ExplainError(f"--corpus {spec}: cannot stream this Hugging Face dataset "
                           f"({type(err).__name__}; the hub needs network)") from None


def check(spec: str) -> None:
    """Reject a spec that names nothing readable, before any work starts."""
    if spec == "embedded" or spec.startswith("hf:"):
        return
    path = Path(spec)
    if not path.exists():
        raise ExplainError(f"--corpus {spec}: no such file or folder (use {VALID})")
    if path.is_file() and path.suffix not in SUFFIXES:
        raise ExplainError(f"--corpus {spec}: unsupported file type {path.suffix!r} (use {VALID})")
    if path.is_dir() and not _folder_files(path):
        raise ExplainError(f"--corpus {spec}: folder holds no .txt/.jsonl/.parquet files")


def _folder_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)


def documents(spec: str) -> Iterator[str]:
    """The corpus's documents in their fixed reading order."""
    check(spec)
    if spec == "embedded":
        yield from _embedded_docs()
    elif spec.startswith("hf:"):
        yield from _hf_docs(spec)
    else:
        path = Path(spec)
        for f in _folder_files(path) if path.is_dir() else [path]:
            try:
                yield from _file_docs(f)
            except (OSError, UnicodeError) as err:
                raise ExplainError(f"--corpus {spec}: cannot read {f} ({err})") from None


def excerpts(spec: str, tokenizer, ctx: int, limit: int) -> Iterator[Excerpt]:
    """Up to `limit` excerpts of `ctx` token ids, in reading order (a trailing partial is dropped)."""
    sep = tokenizer.encode("\n\n", add_special_tokens=False)
    buf: list[int] = []
    n = 0
    for doc in documents(spec):
        if not doc.strip():
            continue
        buf.extend(tokenizer.encode(doc.strip("\n"), add_special_tokens=False))
        buf.extend(sep)
        while len(buf) >= ctx:
            yield Excerpt(n, buf[:ctx])
            n += 1
            if n >= limit:
                return
            del buf[:ctx]
