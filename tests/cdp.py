"""A minimal headless-Chromium driver over the DevTools protocol on a pipe (no extra package).

`--remote-debugging-pipe` makes Chromium read protocol commands from fd 3 and write replies and
events to fd 4, as NUL-terminated JSON. That avoids ports, websockets and a PyPI client, and the
browser dies with its pipes. Used by tests/test_view.py to load the static viewer from file://.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import shutil
import subprocess
import threading
import time

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-default-apps", "--mute-audio",
         "--remote-debugging-pipe"]


def find_chromium() -> str | None:
    """Path of a Chromium-family browser, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _high(fd: int) -> int:
    # Move a pipe end above the fds bash will set (3, 4) so the redirections cannot clash.
    new = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return new


class Browser:
    """One headless Chromium; `page()` opens a tab that records console errors and requests."""

    def __init__(self, exe: str, profile_dir: str, timeout_s: float = 30.0):
        to_browser_r, to_browser_w = (_high(fd) for fd in os.pipe())
        from_browser_r, from_browser_w = (_high(fd) for fd in os.pipe())
        script = (f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w} '
                  f'{to_browser_r}<&- {from_browser_w}>&-')
        self.proc = subprocess.Popen(
            ["bash", "-c", script, exe, *FLAGS, f"--user-data-dir={profile_dir}", "about:blank"],
            pass_fds=(to_browser_r, from_browser_w), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._out = os.fdopen(to_browser_w, "wb", buffering=0)
        self._in = os.fdopen(from_browser_r, "rb", buffering=0)
        self.timeout_s = timeout_s
        self._next_id = 0
        self._replies: dict[int, dict] = {}
        self._events: queue.Queue = queue.Queue()
        self._lock = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()  # keep it drained

    def _read(self) -> None:
        buf = b""
        while True:
            chunk = self._in.read(65536)
            if not chunk:
                break
            buf += chunk
            *messages, buf = buf.split(b"\0")
            for raw in messages:
                msg = json.loads(raw)
                if "id" in msg:
                    with self._lock:
                        self._replies[msg["id"]] = msg
                        self._lock.notify_all()
                else:
                    self._events.put(msg)
        with self._lock:
            self._lock.notify_all()

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send one command and wait for its reply's result (RuntimeError on a protocol error)."""
        self._next_id += 1
        mid = self._next_id
        msg = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self._out.write(json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout_s
        with self._lock:
            while mid not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise TimeoutError(f"no reply to {method} (browser exit {self.proc.poll()})")
                self._lock.wait(min(left, 0.5))
            reply = self._replies.pop(mid)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def events(self) -> list[dict]:
        """Events received so far (drained)."""
        out = []
        while not self._events.empty():
            out.append(self._events.get_nowait())
        return out

    def page(self, width: int = 1280, height: int = 900) -> "Page":
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})
        return Page(self, session["sessionId"], width, height)

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (TimeoutError, RuntimeError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._out.close()


class Page:
    """One tab: navigation, JS evaluation, screenshots, and what went wrong on the way."""

    def __init__(self, browser: Browser, session: str, width: int, height: int):
        self.b, self.s = browser, session
        self.errors: list[str] = []  # console errors, uncaught exceptions, failed loads
        self.requests: list[str] = []  # every URL the page asked for
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.b.send(f"{domain}.enable", session=session)
        self.b.send("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=session)

    def _collect(self) -> list[dict]:
        mine = []
        for ev in self.b.events():
            if ev.get("sessionId") != self.s:
                continue
            method, p = ev["method"], ev.get("params", {})
            if method == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                self.errors.append(f"exception: {d.get('exception', {}).get('description') or d['text']}")
            elif method == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
                self.errors.append("console: " + " ".join(str(a.get("value", a.get("description")))
                                                          for a in p["args"]))
            elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
                self.errors.append(f"log: {p['entry']['text']} {p['entry'].get('url', '')}")
            elif method == "Network.requestWillBeSent":
                self.requests.append(p["request"]["url"])
            elif method == "Network.loadingFailed":
                self.errors.append(f"load failed: {p.get('errorText')}")
            mine.append(ev)
        return mine

    def goto(self, url: str, settle_s: float = 0.3) -> None:
        """Navigate and wait for the load event, then a little for scripts added on load."""
        self.b.send("Page.navigate", {"url": url}, session=self.s)
        deadline = time.monotonic() + self.b.timeout_s
        while time.monotonic() < deadline:
            if any(e["method"] == "Page.loadEventFired" for e in self._collect()):
                break
            time.sleep(0.05)
        else:
            raise TimeoutError(f"{url} did not load")
        time.sleep(settle_s)
        self._collect()

    def js(self, expression: str):
        """Evaluate an expression in the page and return its JSON value."""
        r = self.b.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                             "awaitPromise": True}, session=self.s)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        self._collect()
        return r["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 10.0):
        """Poll an expression until it is truthy; return its value."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                value = self.js(expression)
            except RuntimeError:  # the page is navigating: its context went away meanwhile
                value = None
            if value:
                return value
            time.sleep(0.05)
        raise TimeoutError(f"never true: {expression}")

    def screenshot(self, path) -> bytes:
        """Save a PNG of the viewport (the full page height) to `path`."""
        data = base64.b64decode(self.b.send("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True}, session=self.s)["data"])
        with open(path, "wb") as f:
            f.write(data)
        self._collect()
        return data
