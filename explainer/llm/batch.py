"""`--batch`: send a stage's requests through the OpenAI batch interface (/v1/files +
/v1/batches), at the provider's batch price, instead of one HTTP request each.

The client (`LLM`, with `LLMConfig.batch`) hands every request that misses the cache to a
`Batcher` instead of the transport. The stage runs all its jobs at once in batch mode, so its
requests pile up here; once none has arrived for `SETTLE_S`, they are written as one JSONL file
(`custom_id` = the request's cache key), uploaded, and submitted as one batch. The batch's id
and its requests are kept in `<run>/batches/<id>.json` before anything else happens, so a
process killed between submit and download finds it on the rerun (the same stage builds the
same requests) and polls it: a batch is never submitted twice. Answers come back into the
client, which caches and ledgers them as it does live answers (host `batch`, cost at the batch
column of prices.json). A batch that ends with some requests undone (expired, failed lines)
gives what it has; the rest go into the next batch, up to `MAX_ROUNDS` times each.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from pathlib import Path

from explainer.llm.wire import CHAT, Completion, LLMError, parse

log = logging.getLogger(__name__)

DIR = "batches"  # <run>/batches/<batch id>.json: one record per submitted batch
SETTLE_S = 0.3  # no new request for this long: every job is waiting, submit
MAX_ROUNDS = 3  # batches a request may be sent in before it fails
TERMINAL = ("completed", "expired", "failed", "cancelled")
HOST = "batch"  # the ledger's host of an answer that came through a batch
POLL_ENV = "EXPLAIN_BATCH_POLL_S"  # seconds between polls (default 30)
JOBS = 1_000_000  # jobs a stage runs at once in batch mode: all of them, in one batch


def poll_s() -> float:
    """Seconds between two looks at a batch's status."""
    return float(os.environ.get(POLL_ENV) or 30.0)


def records(run_dir: Path) -> list[dict]:
    """Every batch this run submitted (oldest first)."""
    folder = Path(run_dir) / DIR
    if not folder.is_dir():
        return []
    out = [json.loads(p.read_text()) for p in folder.glob("*.json")]
    return sorted(out, key=lambda r: r.get("submitted", 0))


def _save(run_dir: Path, rec: dict) -> None:
    """Atomically (temp, then rename), so a kill never leaves half a record."""
    folder = Path(run_dir) / DIR
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{rec['id']}.tmp"
    tmp.write_text(json.dumps(rec, indent=1))
    tmp.replace(folder / f"{rec['id']}.json")


class Batcher:
    """Collects one stage's requests and answers them through batches."""

    def __init__(self, client, run_dir: Path, stage: str, model: str):
        self.client, self.run_dir, self.stage, self.model = client, Path(run_dir), stage, model
        self.waiting: dict[str, tuple[str, dict, asyncio.Future]] = {}
        self.rounds: dict[str, int] = {}
        self._arrived = 0
        self._task: asyncio.Task | None = None

    async def send(self, kind: str, body: dict, rkey: str) -> Completion:
        """The answer to one request, once a batch holding it is done (LLMError if it never
        gets one)."""
        fut = asyncio.get_running_loop().create_future()
        self.waiting[rkey] = (kind, body, fut)
        self._arrived += 1
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        return await fut

    async def _run(self) -> None:
        """Wait for the requests to settle, then answer them batch by batch."""
        try:
            while self.waiting:
                seen = -1
                while seen != self._arrived:  # settle: nothing new for SETTLE_S
                    seen = self._arrived
                    await asyncio.sleep(SETTLE_S)
                await self._round()
        except Exception as err:  # noqa: BLE001 - every waiting request gets the error
            for _, _, fut in self.waiting.values():
                if not fut.done():
                    fut.set_exception(err if isinstance(err, LLMError)
                                      else LLMError("batch", str(err)[:300]))
            self.waiting.clear()

    async def _round(self) -> None:
        """Poll the unfinished batches that hold waiting requests (a resumed run), else submit
        one batch of all of them; then hand out the answers."""
        mine = [r for r in records(self.run_dir)
                if not r.get("done") and set(r["requests"]) & set(self.waiting)]
        if not mine:
            mine = [await self._submit()]
        for rec in mine:
            await self._collect(rec)

    async def _submit(self) -> dict:
        keys = sorted(self.waiting)
        for k in keys:
            self.rounds[k] = self.rounds.get(k, 0) + 1
            if self.rounds[k] > MAX_ROUNDS:
                raise LLMError("batch", f"request {k[:12]} was in {MAX_ROUNDS} batches and "
                                        "never answered")
        kinds = {self.waiting[k][0] for k in keys}
        url = "/v1/chat/completions" if kinds == {CHAT} else "/v1/completions"
        if len(kinds) > 1:
            raise LLMError("batch", "one batch holds one endpoint's requests: chat and "
                                    "completions were mixed")
        lines = "".join(json.dumps({"custom_id": k, "method": "POST", "url": url,
                                    "body": self.waiting[k][1]}) + "\n" for k in keys)
        name = hashlib.sha256(lines.encode()).hexdigest()[:12]
        f = await self.client.files.create(file=(f"{self.stage}-{name}.jsonl", lines.encode()),
                                           purpose="batch")
        b = await self.client.batches.create(input_file_id=f.id, endpoint=url,
                                             completion_window="24h")
        rec = {"id": b.id, "stage": self.stage, "model": self.model, "kind": kinds.pop(),
               "input_file_id": f.id, "requests": keys, "submitted": _now(), "done": False}
        _save(self.run_dir, rec)  # before anything else: a kill now resumes by polling
        log.info("%s: batch %s submitted (%d requests)", self.stage, b.id, len(keys))
        return rec

    async def _collect(self, rec: dict) -> None:
        """Poll until the batch ends; answer the waiting requests it holds."""
        while True:
            b = await self.client.batches.retrieve(rec["id"])
            if b.status in TERMINAL:
                break
            await asyncio.sleep(poll_s())
        got = {}
        if getattr(b, "output_file_id", None):
            text = (await self.client.files.content(b.output_file_id)).text
            for line in text.splitlines():
                if not line.strip():
                    continue
                row = json.loads(line)
                resp = row.get("response") or {}
                if resp.get("status_code") == 200 and resp.get("body"):
                    got[row["custom_id"]] = resp["body"]
        for k in rec["requests"]:
            entry = self.waiting.get(k)
            if entry is None or k not in got:
                continue  # not ours now, or undone: it waits for the next batch
            kind, _, fut = self.waiting.pop(k)
            try:
                fut.set_result(parse(kind, got[k]))
            except LLMError as err:
                fut.set_exception(err)
        # A batch that answered all its requests stays readable (a kill before the answers
        # reach the ledger re-reads it); one that left some undone is closed, and those go
        # into the next batch.
        undone = [k for k in rec["requests"] if k not in got]
        _save(self.run_dir, {**rec, "done": bool(undone), "status": b.status,
                             "answered": len(got)})

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()


def _now() -> float:
    import time

    return time.time()
