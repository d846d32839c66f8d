"""view: the static site's files, and the site itself in real headless Chromium from file://."""

from __future__ import annotations

import os
import re
import struct

import numpy as np
import pytest

from explainer import ExplainError
from explainer.views import html as view
from explainer.config import ViewConfig
from tests.cdp import Browser, find_chromium
from tests.reportfactory import MODELS, make_run

N = 10  # neurons per layer in the hand-made run


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    truth = make_run(run, n_neurons=N)
    out = tmp_path_factory.mktemp("site")
    index = view.run(ViewConfig(run=run, out=out))
    return run, out, index, truth


def test_files_and_contents(site):
    run, out, index, truth = site
    assert index == str(out / "index.html")
    for model, spec in MODELS.items():
        for layer in spec["layers"]:
            assert (out / "data" / model / f"layer-{layer}.js").is_file()
            pages = sorted((out / "neurons" / model / f"L{layer}").glob("N*.html"))
            assert len(pages) == N
    page = (out / "neurons" / "a-big-gpt2" / "L2" / "N3.html").read_text()
    assert "&lt;b&gt;mat&lt;/b&gt;" in page and "<b>mat" not in page  # tokens are escaped
    assert truth.explanations[("a-big-gpt2", 2, 3, "smollm2-135m")].replace(
        "&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") in page
    assert 'href="../../../index.html#model=a-big-gpt2&amp;layer=2"' in page
    assert "<svg" in page and "<rect" in page
    # No file of the site may reach the network.
    for f in out.rglob("*"):
        if f.is_file():
            assert not re.search(r"(https?:)?//[a-z0-9]", f.read_text().replace("file://", "")), f


def test_index_rows_one_per_pair(site):
    _, out, _, truth = site
    text = (out / "data" / "z-tiny-gpt2" / "layer-1.js").read_text()
    import json

    rows = json.loads(text[text.index("[["):text.rindex(");")])
    assert len(rows) == 2 * N
    by = {(r[0], r[1]): r for r in rows}
    want = dict((n, s) for n, s, *_ in truth.scores[("z-tiny-gpt2", 1, "smollm2-135m")])
    for n in range(N):
        got = by[(n, "smollm2-135m")][3]
        assert (got is None) == (want[n] is None)
        if got is not None:
            assert got == pytest.approx(want[n], abs=1e-4)


def test_histogram_svg_counts():
    x = np.array([0.0, 0.1, 0.1, 0.9, 1.0])
    svg = view.histogram_svg({"top excerpts": x}, bins=2)
    assert re.findall(r"top excerpts: (\d+) tokens", svg) == ["3", "2"]


def test_bad_run(tmp_path):
    with pytest.raises(ExplainError, match="no such run"):
        view.run(ViewConfig(run=tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExplainError, match="no recorded model"):
        view.run(ViewConfig(run=tmp_path / "empty"))


# --- in the browser ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    exe = find_chromium()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (apt-get install chromium); CI needs it")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    b = Browser(exe, str(tmp_path_factory.mktemp("profile")))
    yield b
    b.close()


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_index_in_browser(site, browser):
    _, out, _, _ = site
    page = browser.page()
    page.goto((out / "index.html").as_uri())
    # Smallest model first; only its first layer's data has been loaded.
    assert page.wait_for("document.querySelectorAll('#neurons tbody tr').length") == 2 * N
    assert page.js("document.getElementById('model').value") == "z-tiny-gpt2"
    assert page.js("Object.keys(EXPLAIN.state.rows)") == ["z-tiny-gpt2/0"]
    scores = page.js("[...document.querySelectorAll('#neurons tbody tr td:nth-child(3)')]"
                     ".map(td => td.textContent)")
    vals = [float(s) for s in scores if s != "\u2014"]
    assert vals == sorted(vals, reverse=True) and len(vals) == 2 * (N - 2)
    page.js("document.querySelector('th[data-key=score]').click()")  # now ascending
    vals = [float(s) for s in page.js(
        "[...document.querySelectorAll('#neurons tbody tr td:nth-child(3)')]"
        ".map(td => td.textContent)") if s != "\u2014"]
    assert vals == sorted(vals)
    # All layers of the bigger model: 3 layers x N neurons x 2 explainers, 50 to a page.
    page.js("const m = document.getElementById('model'); m.value = 'a-big-gpt2';"
            "m.onchange(); const l = document.getElementById('layer'); l.value = 'all';"
            "l.onchange();")
    page.wait_for("document.getElementById('pageinfo').textContent.includes('60 rows')")
    assert page.js("document.querySelectorAll('#neurons tbody tr').length") == 50
    page.js("document.getElementById('next').click()")
    assert page.js("document.querySelectorAll('#neurons tbody tr').length") == 10
    page.js("const s = document.getElementById('search'); s.value = 'neuron 7 of layer 3';"
            "s.oninput()")
    assert page.js("document.querySelectorAll('#neurons tbody tr').length") == 2
    assert page.errors == []
    assert all(u.startswith(("file:", "data:")) for u in page.requests), page.requests
    shot = page.screenshot(out.parent / "index.png")
    assert 1180 <= _png_size(shot)[0] <= 1280 and len(shot) > 20_000


def test_neuron_page_in_browser(site, browser, tmp_path):
    _, out, _, _ = site
    page = browser.page(width=1200, height=900)
    page.goto((out / "neurons" / "z-tiny-gpt2" / "L0" / "N3.html").as_uri())
    assert page.errors == []
    n_tokens = page.js("document.querySelectorAll('.tokens.real .tok').length")
    assert n_tokens > 8 and n_tokens == page.js(
        "document.querySelectorAll('.excerpt').length") * 8
    # Highlighting really renders: some real tokens carry an opaque orange, some sims blue.
    colors = page.js("[...document.querySelectorAll('.tok')].map(e => "
                     "getComputedStyle(e).backgroundColor)")
    assert any(c.startswith("rgba(255, 140, 0") or c == "rgb(255, 140, 0)" for c in colors)
    assert any(c.startswith("rgba(30, 120, 255") or c == "rgb(30, 120, 255)" for c in colors)
    assert page.js("document.querySelector('.tok').title").startswith("real ")
    assert page.js("document.querySelectorAll('svg.hist rect').length") > 2
    shot = page.screenshot(tmp_path / "neuron.png")
    width, height = _png_size(shot)
    assert 1100 <= width <= 1200 and height >= 900 and len(shot) > 30_000  # less a scrollbar
    import matplotlib.image as mpimg

    px = mpimg.imread(tmp_path / "neuron.png")[..., :3]
    orange = (px[..., 0] > 0.9) & (px[..., 1] > 0.5) & (px[..., 1] < 0.8) & (px[..., 2] < 0.4)
    assert orange.sum() > 200  # highlighted tokens are visible in the screenshot
    # The link back lands on the index with this model and layer selected.
    page.js("document.getElementById('back').click()")
    page.wait_for("location.pathname.endsWith('/index.html') && "
                  "document.querySelectorAll('#neurons tbody tr').length > 0")
    assert page.js("document.getElementById('layer').value") == "0"
    assert page.errors == []


def test_browser_harness_sees_errors(browser, tmp_path):
    # The checks above could fail: a broken page does produce errors and requests here.
    bad = tmp_path / "bad.html"
    bad.write_text('<!doctype html><link rel="icon" href="data:,"><script src="missing.js">'
                   "</script><script>console.error('boom'); undefinedFn();</script>")
    page = browser.page()
    page.goto(bad.as_uri())
    text = " | ".join(page.errors)
    assert "boom" in text and "undefinedFn" in text, text
    assert "missing.js" in text or "ERR_FILE_NOT_FOUND" in text, text
    assert any(u.endswith("missing.js") for u in page.requests)
