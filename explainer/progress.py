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
