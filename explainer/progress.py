"""The one progress bar every long stage shows, on stderr (stdout carries results).

It shows what was done of how much, the rate, the time elapsed and the time left, so a bar that
finishes still says how long the work took and how fast it went.
"""

from __future__ import annotations


def bar(label: str, *extra, transient: bool = False):
    """A rich `Progress` for one stage: `label`, the bar, n/total, rate, elapsed, left.

    `extra` are further rich columns (e.g. a tokens-per-second text) shown before the times.
    """
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn,
                               TextColumn, TimeElapsedColumn, TimeRemainingColumn)
    from rich.text import Text

    class Rate(ProgressColumn):
        """Items per second, or seconds per item when each takes longer than a second."""

        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            if not speed:
                return Text("  -/s", style="progress.data.speed")
            shown = f"{speed:,.1f}/s" if speed >= 1 else f"{1 / speed:,.1f} s/it"
            return Text(shown, style="progress.data.speed")

    label = label.replace("{", "{{").replace("}", "}}")  # shown as is, not a template
    # Narrow enough for an 80-column terminal: label, bar, n/total, rate, extra, elapsed, eta.
    return Progress(TextColumn(label, markup=False), BarColumn(bar_width=16),
                    MofNCompleteColumn(), Rate(), *extra, TimeElapsedColumn(), TextColumn("eta"),
                    TimeRemainingColumn(), console=Console(stderr=True), transient=transient)


FLUSH_S = 30.0  # a stage writes what it holds at least this often: a kill loses at most this
FLUSH_ENV = "EXPLAIN_FLUSH_S"  # ... or this many seconds, when set (tests use a second)


def flush_interval_s() -> float:
    """Seconds between time-based flushes: $EXPLAIN_FLUSH_S, else FLUSH_S."""
    import os

    from explainer import ExplainError

    raw = os.environ.get(FLUSH_ENV, "").strip()
    if not raw:
        return FLUSH_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ExplainError(f"${FLUSH_ENV}={raw!r}: expected a number of seconds above 0")
    return value


async def drain(label: str, items: list, handle, workers: int, finish=None) -> None:
    """Await handle(item) for every item, `workers` at a time, under one bar labelled `label`.

    `finish` is the stage writer's flush: it runs when the items are done or one failed (so a
    failure or Ctrl-C keeps the finished work), and also whenever `flush_interval_s()` has
    passed since it last ran (so a SIGKILL loses at most that much work, however slowly
    items finish). A timer calls it while items are in flight (e.g. an in-process model
    computing in a thread), and a check after each item covers handlers that never yield."""
    import asyncio
    import time

    queue: asyncio.Queue = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)
    every = flush_interval_s()
    last = [time.monotonic()]

    def flush_if_due() -> None:
        if finish is not None and time.monotonic() - last[0] >= every:
            last[0] = time.monotonic()
            finish()

    async def timer() -> None:
        while True:
            await asyncio.sleep(max(0.0, every - (time.monotonic() - last[0])))
            flush_if_due()

    async def worker(shown, task) -> None:
        while not queue.empty():
            await handle(queue.get_nowait())
            shown.advance(task)
            flush_if_due()

    with bar(label) as shown:
        task = shown.add_task(label, total=len(items))
        n = max(1, min(len(items), workers))
        work = asyncio.ensure_future(asyncio.gather(*(worker(shown, task) for _ in range(n))))
        tick = asyncio.ensure_future(timer())
        try:
            await asyncio.wait({work, tick}, return_when=asyncio.FIRST_COMPLETED)
            if tick.done():  # the timer stops only when a flush failed: say why
                work.cancel()
                tick.result()
            await work
        finally:
            tick.cancel()
            work.cancel()
            if finish is not None:
                finish()
