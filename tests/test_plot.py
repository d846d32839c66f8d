"""plot: the report's PNG is a real image of sensible size, written through `explain report`."""

from __future__ import annotations

import struct

import numpy as np

from explainer.views import report
from explainer.config import ReportConfig
from tests.reportfactory import make_run


def _png_size(data: bytes) -> tuple[int, int]:
    # PNG signature, then the IHDR chunk: length, type, width, height (big-endian).
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_report_writes_png(tmp_path):
    run = tmp_path / "run"
    make_run(run, n_neurons=8, full=False)
    out = tmp_path / "figs" / "scores.png"
    text = report.run(ReportConfig(run=run, plot=out))
    assert f"plot: {out}" in text
    data = out.read_bytes()
    width, height = _png_size(data)
    assert 800 <= width <= 3000 and 400 <= height <= 2000
    assert 20_000 < len(data) < 2_000_000  # lines, bands and text, not an empty canvas
    assert not list(out.parent.glob(".*"))  # no temporary file left behind

    import matplotlib.image as mpimg

    pixels = mpimg.imread(out)
    # Both panels drew something coloured (matplotlib's C0 blue / C1 orange lines and bands).
    left, right = pixels[:, : width // 2, :3], pixels[:, width // 2:, :3]
    for half in (left, right):
        colourful = np.ptp(half, axis=2) > 0.3
        assert colourful.mean() > 0.002


def test_plot_labels(tmp_path, monkeypatch):
    run = tmp_path / "run"
    make_run(run, n_neurons=6, full=False)
    scores, meta = report.load(run)
    rows = report.aggregate(scores, meta, "layer")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from explainer.views import plot

    seen = {}
    real_savefig = matplotlib.figure.Figure.savefig

    def spy(fig, *args, **kwargs):
        seen["title"] = fig._suptitle.get_text()
        seen["axes"] = [(a.get_xlabel(), a.get_ylabel(), [t.get_text() for t in
                        a.get_legend().get_texts()]) for a in fig.axes]
        return real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    plot.write(tmp_path / "p.png", rows, report.headline(scores), meta)
    assert "baseline-tokens" in seen["title"] and "simulator: smollm2-135m" in seen["title"]
    (x0, y0, leg0), (x1, y1, _) = seen["axes"]
    assert "depth" in x0 and "mean score" in y0 and "score" in x1 and y1 == "neurons"
    assert leg0[0].startswith("z-tiny-gpt2 (120K)")  # smallest model first
    assert plt.get_fignums() == []  # the figure was closed
