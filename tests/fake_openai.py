"""A scripted fake OpenAI-compatible HTTP server on loopback, for tests and benchmarks.

Real sockets and real HTTP, so the real `openai` client talks to it. Answers come from a queue of
scripted `Reply`s, then from a handler function (default: a short deterministic answer). Faults:
any HTTP status with Retry-After, a delay (for timeouts), a malformed or empty body, and an
outage that drops the connection, stops listening and comes back on the same port.

    with FakeOpenAI(latency_s=0.2) as fake:
        fake.push(Reply.error(429, retry_after=0.1), Reply.chat("words about boats"))
        client = AsyncOpenAI(base_url=fake.base_url, api_key="x")
"""

from __future__ import annotations

import collections
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Server(ThreadingHTTPServer):
    # The default listen backlog of 5 drops connection attempts when 16 clients connect at
    # once; the kernel then retries them after 1 s, which a concurrency benchmark would count.
    request_queue_size = 128
from typing import Callable


@dataclass
class Reply:
    """One scripted answer."""

    status: int = 200
    body: object = None  # dict -> JSON; str/bytes sent as is
    headers: dict = field(default_factory=dict)
    delay_s: float = 0.0
    outage_s: float | None = None  # drop the connection, stop listening for this long

    @staticmethod
    def chat(text: str, prompt_tokens: int = 100, completion_tokens: int = 10,
             logprobs: list | None = None, finish_reason: str = "stop") -> "Reply":
        choice = {"index": 0, "finish_reason": finish_reason,
                  "message": {"role": "assistant", "content": text}}
        if logprobs is not None:
            choice["logprobs"] = {"content": logprobs}
        return Reply(body={"id": "chatcmpl-fake", "object": "chat.completion", "created": 0,
                           "model": "fake", "choices": [choice],
                           "usage": {"prompt_tokens": prompt_tokens,
                                     "completion_tokens": completion_tokens,
                                     "total_tokens": prompt_tokens + completion_tokens}})

    @staticmethod
    def completion(text: str, prompt_tokens: int = 100, completion_tokens: int = 10,
                   logprobs: dict | None = None) -> "Reply":
        choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": logprobs}
        return Reply(body={"id": "cmpl-fake", "object": "text_completion", "created": 0,
                           "model": "fake", "choices": [choice],
                           "usage": {"prompt_tokens": prompt_tokens,
                                     "completion_tokens": completion_tokens,
                                     "total_tokens": prompt_tokens + completion_tokens}})

    @staticmethod
    def error(status: int, retry_after: float | None = None,
              message: str = "fake error") -> "Reply":
        headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
        return Reply(status=status, headers=headers,
                     body={"error": {"message": message, "type": "fake", "code": status}})

    @staticmethod
    def malformed() -> "Reply":
        return Reply(body=b'{"choices": [ this is not json', headers={"Content-Type":
                                                                      "application/json"})

    @staticmethod
    def empty() -> "Reply":
        return Reply.chat("", completion_tokens=0)

    @staticmethod
    def hang(seconds: float) -> "Reply":
        return Reply.chat("too late", ).with_delay(seconds)

    @staticmethod
    def outage(seconds: float) -> "Reply":
        return Reply(outage_s=seconds)

    def with_delay(self, seconds: float) -> "Reply":
        self.delay_s = seconds
        return self


@dataclass
class Request:
    """What the server received."""

    method: str
    path: str
    body: dict | None
    headers: dict  # lower-case names


def echo_logprobs(prompt: str, max_tokens: int = 0) -> dict:
    """Legacy echo+logprobs for a prompt split at spaces (each token keeps its leading space)."""
    tokens, offsets, pos = [], [], 0
    for i, word in enumerate(prompt.split(" ")):
        tok = word if i == 0 else " " + word
        tokens.append(tok)
        offsets.append(pos)
        pos += len(tok)
    return {"tokens": tokens, "token_logprobs": [None] + [-1.0] * (len(tokens) - 1),
            "top_logprobs": [None] + [{t: -1.0} for t in tokens[1:]], "text_offset": offsets}


def default_handler(req: Request) -> Reply:
    """A fixed answer: chat -> a phrase (naming the seed if any); completions honour echo."""
    body = req.body or {}
    if req.path.endswith("/chat/completions"):
        seed = body.get("seed")
        return Reply.chat("words about topic" + (f" {seed}" if seed is not None else ""))
    prompt = body.get("prompt", "")
    if body.get("echo") and body.get("logprobs") is not None:
        return Reply.completion(prompt, logprobs=echo_logprobs(prompt))
    return Reply.completion(" words about topic")


class FakeOpenAI:
    """The server; a context manager that starts and stops it."""

    def __init__(self, handler: Callable[[Request], Reply] = default_handler,
                 latency_s: float = 0.0, models: tuple[str, ...] | None = ("fake-model",),
                 port: int = 0):
        self.handler = handler
        self.latency_s = latency_s
        self.models = list(models) if models is not None else None  # None: no /models route
        self.script: collections.deque[Reply] = collections.deque()
        self.requests: list[Request] = []
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        self._port = port
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self.batches: "FakeBatches | None" = None  # the files and batches routes, when attached

    # --- lifecycle ---
    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}/v1"

    def start(self) -> "FakeOpenAI":
        httpd = _Server(("127.0.0.1", self._port), _make_handler(self))
        httpd.daemon_threads = True
        self._port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def restart(self) -> None:
        """Listen again on the same port."""
        self.stop()
        self.start()

    def __enter__(self) -> "FakeOpenAI":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- scripting and counting ---
    def push(self, *replies: Reply) -> None:
        with self._lock:
            self.script.extend(replies)

    def count(self, suffix: str | None = None, method: str | None = None) -> int:
        """Requests received, optionally only those whose path ends with `suffix`."""
        return sum(1 for r in self.requests if (suffix is None or r.path.endswith(suffix))
                   and (method is None or r.method == method))

    def completions(self) -> int:
        """Requests to /chat/completions or /completions (what costs money)."""
        return self.count("/completions", "POST")

    def _next(self, req: Request) -> Reply:
        with self._lock:
            self.requests.append(req)
            if self.script:
                return self.script.popleft()
        return self.handler(req)

    def _outage(self, seconds: float) -> None:
        def bounce():
            self.stop()
            time.sleep(seconds)
            self.start()

        threading.Thread(target=bounce, daemon=True).start()


def _make_handler(fake: FakeOpenAI):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection: an outage drops them all

        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def _headers(self) -> dict:
            return {k.lower(): v for k, v in self.headers.items()}

        def do_GET(self) -> None:
            req = Request("GET", self.path, None, self._headers())
            with fake._lock:
                fake.requests.append(req)
            routed = fake.batches.get(self.path) if fake.batches is not None else None
            if routed is not None:
                self._send(routed)
            elif self.path.rstrip("/").endswith("/models") and fake.models is not None:
                data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"}
                        for m in fake.models]
                self._send(Reply(body={"object": "list", "data": data}))
            else:
                self._send(Reply.error(404, message=f"no route {self.path}"))

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            routed = fake.batches.post(self.path, raw, self._headers()) \
                if fake.batches is not None else None
            if routed is not None:
                with fake._lock:
                    fake.requests.append(Request("POST", self.path, None, self._headers()))
                self._send(routed)
                return
            try:
                body = json.loads(raw or b"null")
            except ValueError:
                body = None
            reply = fake._next(Request("POST", self.path, body, self._headers()))
            if reply.outage_s is not None:
                fake._outage(reply.outage_s)
                self.close_connection = True
                self.connection.close()  # no answer at all, like a crashed server
                return
            with fake._lock:
                fake.in_flight += 1
                fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
            try:
                time.sleep(fake.latency_s + reply.delay_s)
                self._send(reply)
            finally:
                with fake._lock:
                    fake.in_flight -= 1

        def _send(self, reply: Reply) -> None:
            body = reply.body
            if isinstance(body, (dict, list)):
                data = json.dumps(body).encode()
            elif isinstance(body, str):
                data = body.encode()
            else:
                data = body or b""
            try:
                self.send_response(reply.status)
                headers = {"Content-Type": "application/json", **reply.headers}
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test)

    return Handler


class FakeBatches:
    """OpenAI's files and batches routes (/v1/files, /v1/batches), attached to a FakeOpenAI:
    `FakeBatches(fake)`. A batch's requests are answered by the server's handler when it is
    created; `polls` retrieves later it reports `completed` (0: at once). With `expire_after`,
    a batch ends `expired` instead, with only that many requests in its output file and the
    rest in its error file (code batch_expired); only the first `expiring` batches expire.
    `hold` keeps every batch `in_progress` until cleared. `created` counts batch submissions,
    `sizes` their requests."""

    def __init__(self, fake: FakeOpenAI, polls: int = 0, expire_after: int | None = None,
                 expiring: int = 1):
        self.fake, self.polls, self.expire_after = fake, polls, expire_after
        self.expiring = expiring
        self.sizes: list[int] = []
        self.hold = False
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.created = 0
        self._lock = threading.Lock()
        fake.batches = self

    def post(self, path: str, raw: bytes, headers: dict) -> Reply | None:
        path = path.split("?")[0].rstrip("/")
        if path.endswith("/files"):
            return self._upload(raw, headers)
        if path.endswith("/batches"):
            return self._create(json.loads(raw or b"{}"))
        return None

    def get(self, path: str) -> Reply | None:
        parts = path.split("?")[0].rstrip("/").split("/")
        if len(parts) >= 3 and parts[-3] == "files" and parts[-1] == "content":
            data = self.files.get(parts[-2])
            return Reply(body=data, headers={"Content-Type": "application/octet-stream"}) \
                if data is not None else Reply.error(404, message="no such file")
        if len(parts) >= 2 and parts[-2] == "batches":
            return self._retrieve(parts[-1])
        return None

    def _upload(self, raw: bytes, headers: dict) -> Reply:
        boundary = headers.get("content-type", "").split("boundary=")[-1].strip('"').encode()
        data = b""
        for part in raw.split(b"--" + boundary):
            head, _, content = part.partition(b"\r\n\r\n")
            if b'name="file"' in head:
                data = content[:-2] if content.endswith(b"\r\n") else content
        with self._lock:
            fid = f"file-{len(self.files) + 1}"
            self.files[fid] = data
        return Reply(body={"id": fid, "object": "file", "bytes": len(data), "created_at": 0,
                           "filename": "batch.jsonl", "purpose": "batch"})

    def _create(self, body: dict) -> Reply:
        lines = [json.loads(x) for x in self.files[body["input_file_id"]].splitlines() if x]
        out, err = [], []
        expire = self.expire_after is not None and self.created < self.expiring
        for i, line in enumerate(lines):
            rec = {"id": f"req-{i}", "custom_id": line["custom_id"]}
            if expire and i >= self.expire_after:
                err.append({**rec, "response": None,
                            "error": {"code": "batch_expired", "message": "expired"}})
                continue
            reply = self.fake.handler(Request("POST", "/v1" + line["url"], line["body"], {}))
            out.append({**rec, "response": {"status_code": reply.status, "request_id": "r",
                                            "body": reply.body}, "error": None})
        with self._lock:
            self.created += 1
            self.sizes.append(len(lines))
            bid = f"batch-{self.created}"
            files = {}
            for name, rows in (("output_file_id", out), ("error_file_id", err)):
                if rows:
                    fid = f"file-{len(self.files) + 1}"
                    self.files[fid] = "".join(json.dumps(r) + "\n" for r in rows).encode()
                    files[name] = fid
            self.batches[bid] = {"id": bid, "object": "batch", "endpoint": body["endpoint"],
                                 "input_file_id": body["input_file_id"],
                                 "completion_window": body.get("completion_window", "24h"),
                                 "created_at": 0, "_polls": 0, "_files": files,
                                 "_end": "expired" if err else "completed",
                                 "request_counts": {"total": len(lines), "completed": len(out),
                                                    "failed": 0}}
        return self._retrieve(bid, count=False)

    def _retrieve(self, bid: str, count: bool = True) -> Reply:
        with self._lock:
            b = self.batches.get(bid)
            if b is None:
                return Reply.error(404, message="no such batch")
            b["_polls"] += int(count)
            done = not self.hold and b["_polls"] >= self.polls and count
            status = b["_end"] if done else "in_progress"
            body = {k: v for k, v in b.items() if not k.startswith("_")}
            body.update({"status": status, "output_file_id": None, "error_file_id": None})
            if done:
                body.update(b["_files"])
        return Reply(body=body)


def main() -> None:
    """Serve the default handler in its own process: `python -m tests.fake_openai --latency 0.2`.

    Prints the port on the first line of stdout, then serves until stdin closes (benchmarks use
    this so the server's threads do not share the client's interpreter lock).
    """
    import argparse
    import sys

    ap = argparse.ArgumentParser()
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    with FakeOpenAI(latency_s=args.latency, port=args.port) as fake:
        print(fake.port, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
