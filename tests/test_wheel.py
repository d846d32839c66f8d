"""The wheel works installed, not only editable: every package, prompt and asset ships in it.

Builds the wheel from a copy of the repository, installs it (`--no-deps`) into a fresh virtual
environment outside the checkout, and runs the installed `explain run` end to end from another
working directory: record on the tiny GPT-2, describe, simulate, judge (detection), report and
viewer, against the fake endpoint. The new environment sees the test environment's third-party
packages through a plain path in a .pth file (offline and fast), which adds the directory but
runs none of the .pth files inside it, so the repository's editable install stays out and the
installed package, not the checkout, is the one that answers.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from explainer import run as rundir
from tests.fake_openai import FakeOpenAI, Reply

ROOT = Path(__file__).resolve().parents[1]
SKIP = shutil.ignore_patterns(".venv", ".git", "runs", ".test-cache", "__pycache__", "build",
                              "*.egg-info", ".pytest_cache", "out")
_ROW = re.compile(r"^(\d+)\t(.*)$")
_ITEM = re.compile(r"^(\d+)\) ", re.MULTILINE)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(wheel, the new environment's bin folder, its site-packages)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=SKIP, symlinks=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp / "dist"), str(src)], check=True, capture_output=True)
    wheel = next((tmp / "dist").glob("explain-*.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   capture_output=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; "
                                "print(sysconfig.get_paths()['purelib'])"], check=True,
                               capture_output=True, text=True).stdout.strip())
    # This environment's packages (torch, transformers, ...) as a plain path: no install.
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "test-env.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                    "--no-index", "-q", str(wheel)], check=True, capture_output=True)
    return wheel, venv / "bin", site


def test_wheel_holds_every_package_prompt_and_asset_and_no_generic_top_level_name(installed):
    wheel, _, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"explainer"}, tops  # no `cli` or `prompts` (or anything else) at the top
    # Every package of the checkout, found independently: a folder with an __init__.py.
    packages = {p.parent.relative_to(ROOT).as_posix()
                for p in (ROOT / "explainer").rglob("__init__.py") if "__pycache__" not in p.parts}
    packages.add("explainer/prompts")
    assert {f"{p}/__init__.py" for p in packages} <= names
    assert "explainer/judge/stage.py" in names  # the package a hand-written list once left out
    prompts = {Path(n).name for n in names if n.startswith("explainer/prompts/")}
    assert prompts >= {p.name for p in (ROOT / "prompts").glob("*.txt")}
    assets = {f"explainer/views/assets/{p.name}" for p in (ROOT / "explainer/views/assets").iterdir()}
    assert assets | {"explainer/cli.py", "explainer/llm/prices.json",
                     "explainer/puzzles/puzzles.json"} <= names


def _handler(req) -> Reply:
    """Describe: a phrase. Simulate (chat): a value per token. Judge: yes to even items."""
    body = req.body or {}
    last = (body.get("messages") or [{}])[-1].get("content", "")
    if last.startswith("Description:"):
        items = [int(k) for k in _ITEM.findall(last)]
        return Reply.chat("\n".join(f"{k}: {'yes' if k % 2 == 0 else 'no'}" for k in items))
    if last.startswith("Neuron:"):
        rows = [_ROW.match(line) for line in last.split("\n")[2:]]
        return Reply.chat("\n".join(f"{m.group(1)}\t{(len(m.group(2)) * 7) % 10}"
                                    for m in rows if m))
    return Reply.chat("words about the topic")


def test_installed_explain_run_works_end_to_end_from_another_directory(
        installed, tmp_path, tiny_gpt2, tiny_corpus):
    _, bin_dir, site = installed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OPENAI_API_KEY="sk-test", PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}")
    where = subprocess.run([str(bin_dir / "python"), "-c", "import explainer, explainer.prompts "
                            "as p; print(explainer.__file__); print(p.PROMPTS_DIR)"],
                           cwd=elsewhere, env=env, text=True, capture_output=True, check=True)
    package, prompts = map(Path, where.stdout.split())
    assert package == site / "explainer" / "__init__.py"  # the wheel's, not the checkout's
    assert prompts == site / "explainer" / "prompts"
    run = tmp_path / "run"
    with FakeOpenAI(_handler) as fake:
        out = subprocess.run([str(bin_dir / "explain"), "run", "--run", str(run),
                              "--model", str(tiny_gpt2), "--corpus", str(tiny_corpus),
                              "--layers", "0", "--neurons", "0-1", "--n-excerpts", "40",
                              "--explainer", "fake-model", "--simulator", "fake-model",
                              "--base-url", fake.base_url, "--mode", "chat",
                              "--judge-methods", "detection"],
                             cwd=elsewhere, env=env, text=True, capture_output=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (run / "report.png").stat().st_size > 10_000
    assert (run / "view" / "index.html").exists() and "viewer:" in out.stdout
    scores = rundir.read(run, "scores")
    sim = scores[(scores["method"] == "simulation") & (scores["simulator"] == "fake-model")]
    assert set(sim["neuron"]) == {0, 1} and (sim["status"] == "ok").all()
    # The installed judge ran and scored each neuron. (Every random excerpt of the tiny random
    # GPT-2 fires, so detection finds no negatives: `one_class`, a status and not a crash.)
    det = scores[scores["method"] == "detection"]
    assert set(det["neuron"]) == {0, 1} and set(det["status"]) <= {"ok", "one_class"}
    assert not list(elsewhere.iterdir())  # nothing written to the working directory
