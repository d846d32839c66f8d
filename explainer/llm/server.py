"""llama-cpp-python's OpenAI-compatible server over the embedded GGUF, on a loopback port.

Nothing in the pipeline uses it: the embedded LLM answers in this process (`inprocess.py`). It
is the one real OpenAI-compatible server the tests run (no one here wrote it) and what the
benchmarks compare against, and it needs the `serve` or `test` extra (llama-cpp-python, which
compiles llama.cpp). A user who wants the GGUF over HTTP runs it the same way and names it with
`--base-url`.

The server is a child process that must never outlive the command: it is stopped on normal
exit, on exceptions and Ctrl-C (the caller's context manager), at interpreter exit (atexit), and,
on Linux, by the kernel when this process dies without cleaning up (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

from explainer import ExplainError
from explainer.llm.embedded import gguf_path

log = logging.getLogger(__name__)

# SmolLM2 was trained with 8k context; 10 excerpts of 64 tokens plus few-shots need ~4k.
N_CTX = 8192
START_TIMEOUT_S = 120.0

_live: set[subprocess.Popen] = set()  # servers started by this process and not yet stopped
_atexit_registered = False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    # Runs in the child before exec: ask the kernel to SIGTERM it if this process dies.
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _stop_all() -> None:
    for proc in list(_live):
        stop(proc)


class Server:
    """A running embedded server: its process, URL and log file."""

    def __init__(self, proc: subprocess.Popen, port: int, log_path: Path):
        self.proc = proc
        self.port = port
        self.log_path = log_path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        stop(self.proc)


def start(alias: str, log_path: Path, *, logits_all: bool = True,
          n_threads: int | None = None) -> Server:
    """Start the server with the embedded GGUF served as `alias`; return once it answers."""
    global _atexit_registered
    model = gguf_path()
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        raise ExplainError("serving the embedded GGUF over HTTP needs llama-cpp-python: "
                           "pip install 'explain[serve]'")
    port = free_port()
    threads = n_threads or os.cpu_count() or 1
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model),
           "--model_alias", alias, "--host", "127.0.0.1", "--port", str(port),
           "--n_ctx", str(N_CTX), "--n_threads", str(threads),
           "--n_threads_batch", str(threads),
           # The simulator reads prompt log-probabilities (echo + logprobs on /v1/completions).
           "--logits_all", "true" if logits_all else "false"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out = open(log_path, "ab")
    try:
        # Passive OpenMP waits: on a busy machine, spinning threads at every op's barrier made
        # prompt evaluation about twice as slow (measured with 2 threads on 2 shared cores).
        env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=env,
                                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                                start_new_session=True)  # Ctrl-C reaches us; we stop it ourselves
    finally:
        out.close()
    _live.add(proc)
    if not _atexit_registered:
        atexit.register(_stop_all)
        _atexit_registered = True
    server = Server(proc, port, log_path)
    try:
        _wait_ready(server)
    except BaseException:
        server.stop()
        raise
    log.info("embedded LLM server pid %d on port %d", proc.pid, port)
    return server


def _wait_ready(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    url = server.base_url + "/models"
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            tail = _tail(server.log_path)
            raise ExplainError(f"the embedded LLM server exited with code {server.proc.returncode}"
                               f" ({tail}); see {server.log_path}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.2)
    raise ExplainError(f"the embedded LLM server did not answer within {START_TIMEOUT_S:.0f} s; "
                       f"see {server.log_path}")


def _tail(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1][:200] if lines else "no output"


def stop(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """Terminate a server process, kill it if it lingers, and reap it."""
    try:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=grace_s)
    finally:
        _live.discard(proc)


@contextlib.contextmanager
def serve(alias: str, log_path: Path, *, logits_all: bool = True) -> Iterator[str]:
    """The embedded server for the length of a `with` block; yields its base URL only."""
    server = start(alias, log_path, logits_all=logits_all)
    try:
        yield server.base_url
    finally:
        server.stop()  # whatever happened in the block, the server goes


def live_pids() -> list[int]:
    """Process ids of the embedded servers this process has running now."""
    return sorted(p.pid for p in _live if p.poll() is None)
