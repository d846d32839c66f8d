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


def test_scored_only_pages_equal_the_full_sites(site, tmp_path):
    """`explain run`'s viewer (scored neurons only, their rows alone split) writes each page
    exactly as the full site does."""
    run, out, _, _ = site
    fast = tmp_path / "fast"
    view.run(ViewConfig(run=run, out=fast, scored_only=True))
    pages = sorted(p.relative_to(out) for p in (out / "neurons").rglob("N*.html"))
    assert pages and pages == sorted(p.relative_to(fast) for p in (fast / "neurons").rglob("N*.html"))
    for p in pages:
        assert (fast / p).read_text() == (out / p).read_text(), p
    for js in (out / "data").rglob("layer-*.js"):
        assert (fast / js.relative_to(out)).read_text() == js.read_text()


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
    scores = page.js("[...document.querySelectorAll('#neurons tbody td[data-col=score]')]"
                     ".map(td => td.textContent)")
    vals = [float(s) for s in scores if s != "\u2014"]
    assert vals == sorted(vals, reverse=True) and len(vals) == 2 * (N - 2)
    page.js("document.querySelector('th[data-key=score]').click()")  # now ascending
    vals = [float(s) for s in page.js(
        "[...document.querySelectorAll('#neurons tbody td[data-col=score]')]"
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


# --- the index tells its rows apart: side, simulator (mode), method; the URL keeps the view ---

LEX = "baseline-lexical"


@pytest.fixture(scope="module")
def sided_site(tmp_path_factory):
    """The hand-made run plus, in z-tiny-gpt2 layer 0, rows that repeat an explanation: the
    negative side's own scores, the lexical baseline's, and a detection judge's (as `explain
    run` writes them beside its LLM simulator)."""
    from tests.reportfactory import EXPLAINERS, SIM

    from explainer import run as rundir

    run = tmp_path_factory.mktemp("sided-run")
    truth = make_run(run, n_neurons=N)
    model, explainer, rows = "z-tiny-gpt2", EXPLAINERS[0], []
    for n in range(N):
        text = truth.explanations[(model, 0, n, explainer)]
        common = dict(model=model, layer=0, neuron=n, explainer=explainer, candidate=0,
                      split="valid", explanation=text, rsquared=None, abs_dev_explained=None,
                      n_tokens=80, best=True, status="ok", error=None)
        rows += [
            rundir.ScoreRow(simulator=SIM, score=-0.1 - n / 100, score_top=0.0, score_random=0.0,
                            side="neg", mode="logprob", **common),
            rundir.ScoreRow(simulator=LEX, score=0.2 + n / 100, score_top=0.1, score_random=0.1,
                            side="pos", mode="lexical", **common),
            rundir.ScoreRow(simulator=LEX, score=0.3 - n / 100, score_top=0.1, score_random=0.1,
                            side="neg", mode="lexical", **common),
            rundir.ScoreRow(simulator=SIM, score=0.5 + n / 50, score_top=None, score_random=None,
                            side="pos", method="detection", balanced_accuracy=0.5 + n / 50,
                            **common),
            # the same judge under another sampling preset, and the LLM simulator under a
            # second prompt version: rows that differ only there must say so
            rundir.ScoreRow(simulator=SIM, score=0.6, score_top=None, score_random=None,
                            side="pos", method="detection", sampling="delphi", **common),
            rundir.ScoreRow(simulator=SIM, score=0.4, score_top=0.4, score_random=0.4,
                            side="pos", sim_prompt_hash="b" * 12, **common)]
    rundir.write_rows(run, "scores", rows)
    out = tmp_path_factory.mktemp("sided-site")
    view.run(ViewConfig(run=run, out=out))
    stats = rundir.read(run, "neurons", model, 0)
    return out, dict(zip(stats["neuron"].astype(int), zip(stats["max"], stats["min"])))


ROWS_JS = ("[...document.querySelectorAll('#neurons tbody tr')].map(tr => Object.fromEntries("
           "[...tr.children].map(td => [td.dataset.col, td.textContent])"
           ".concat([['neg', tr.classList.contains('neg')]])))")


def _distinct_where_text_repeats(rows, cols):
    """Rows of one neuron with one explanation differ in `cols` (what the reader sees)."""
    seen = {}
    for r in rows:
        key = (r["neuron"], r["explanation"], tuple(r[c] for c in cols))
        assert key not in seen, f"two rows alike in {cols}: {r}"
        seen[key] = r
    return len({(r["neuron"], r["explanation"]) for r in rows}) < len(rows)


def test_index_tells_rows_apart_in_browser(sided_site, browser):
    from tests.reportfactory import SIM

    out, peaks = sided_site
    page = browser.page()
    page.goto((out / "index.html").as_uri())
    page.wait_for("document.querySelectorAll('#neurons tbody tr').length")
    heads = page.js("[...document.querySelectorAll('#neurons thead th')].map(t => t.textContent)")
    assert {"side", "simulator", "method", "max act."} <= set(heads)
    # Default: the run's LLM simulator (not the lexical baseline, first by name), simulation only.
    assert page.js("document.getElementById('sim').value") == SIM
    assert page.js("document.getElementById('method').value") == "simulation"
    rows = page.js(ROWS_JS)
    # both explainers' positive side, one explainer's negative side and its second prompt
    assert len(rows) == 4 * N
    assert {r["simulator"] for r in rows} == {SIM, f"{SIM} \u00b7 logprob",
                                              f"{SIM} \u00b7 prompt bbbbbb"}
    assert {r["method"] for r in rows} == {"simulation"}
    # Same neuron, same explanation: told apart by side or simulator, and such pairs exist.
    assert _distinct_where_text_repeats(rows, ["side", "simulator"])
    for r in rows:  # the side's own peak: the minimum on the negative side, labelled and marked
        hi, lo = peaks[int(r["neuron"])]
        neg = "neg" in r["side"]
        assert r["neg"] == neg
        assert r["max"].endswith(" min") == neg
        assert float(r["max"].removesuffix(" min")) == float(f"{lo if neg else hi:.3g}")
    colors = page.js("[...document.querySelectorAll('#neurons tbody tr')].map(tr => "
                     "[tr.classList.contains('neg'), getComputedStyle(tr.children[0])"
                     ".backgroundColor])")
    assert len({c for neg, c in colors if neg}) == 1
    assert {c for neg, c in colors if neg}.isdisjoint({c for neg, c in colors if not neg})
    # The baseline and the judge are one choice away; every row stays distinguishable.
    page.js("for (const [id, v] of [['sim', 'all'], ['method', 'all'], ['size', '100']]) {"
            " const s = document.getElementById(id); s.value = v; s.onchange(); }")
    rows = page.js(ROWS_JS)
    assert len(rows) == 8 * N
    assert {r["method"] for r in rows} == {"simulation", "detection", "detection (delphi)"}
    assert _distinct_where_text_repeats(rows, ["side", "simulator", "method"])
    # Sort, filters and page survive a reload: the address alone rebuilds the view.
    page.js("const z = document.getElementById('size'); z.value = '25'; z.onchange();")
    page.js("document.querySelector('th[data-key=max]').click()")
    page.js("document.getElementById('next').click()")
    want = page.js(ROWS_JS)
    url = page.js("location.href")
    assert "page=2" in url and "sort=max" in url and "sim=all" in url
    again = browser.page()
    again.goto(url)
    again.wait_for("document.querySelectorAll('#neurons tbody tr').length")
    assert again.js(ROWS_JS) == want
    assert again.js("document.getElementById('pageinfo').textContent").startswith("page 2 of 4")
    peaks_shown = [abs(float(r["max"].removesuffix(" min"))) for r in want]
    assert peaks_shown == sorted(peaks_shown, reverse=True)  # by the size of the side's peak
    # A shared link to one side: layer 0, negative side, sorted by score.
    link = page.js("location.href.split('#')[0]") + \
        "#model=z-tiny-gpt2&layer=0&side=neg&sort=score&dir=desc"
    neg = browser.page()
    neg.goto(link)
    neg.wait_for("document.querySelectorAll('#neurons tbody tr').length")
    rows = neg.js(ROWS_JS)
    assert len(rows) == N and all(r["neg"] for r in rows)
    assert neg.js("document.getElementById('sim').value") == SIM  # unnamed filters: defaults
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    for p in (page, again, neg):
        assert p.errors == []
