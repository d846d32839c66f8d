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


async def drain(label: str, items: list, handle, workers: int, finish=None) -> None:
    """Await handle(item) for every item, `workers` at a time, under one bar labelled `label`;
    finish() runs when they are done or one failed (a stage's writer flushes what it holds, so
    a failure or Ctrl-C keeps the finished work)."""
    import asyncio

    queue: asyncio.Queue = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)

    async def worker(shown, task) -> None:
        while not queue.empty():
            await handle(queue.get_nowait())
            shown.advance(task)

    with bar(label) as shown:
        task = shown.add_task(label, total=len(items))
        try:
            n = max(1, min(len(items), workers))
            await asyncio.gather(*(worker(shown, task) for _ in range(n)))
        finally:
            if finish is not None:
                finish()
