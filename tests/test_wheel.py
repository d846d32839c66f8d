"""The wheel works installed, not only editable: prompts and assets ship inside the package.

Builds the wheel from a copy of the repository, installs it with `pip install --no-deps
--target`, and runs the installed `explain describe` from another working directory against the
fake endpoint. The installed package, not the repository, must be the one that answers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from explainer import run as rundir
from tests import runfactory as RF
from tests.fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parents[1]
SKIP = shutil.ignore_patterns(".venv", ".git", "runs", ".test-cache", "__pycache__", "build",
                              "*.egg-info", ".pytest_cache", "out")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=SKIP, symlinks=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp / "dist"), str(src)], check=True, capture_output=True)
    wheel = next((tmp / "dist").glob("explain-*.whl"))
    site = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(site), str(wheel)], check=True, capture_output=True)
    return wheel, site


def test_wheel_holds_prompts_assets_and_no_generic_top_level_name(installed):
    wheel, site = installed
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"explainer"}, tops  # no `cli` (or anything else) at the top
    prompts = {Path(n).name for n in names if n.startswith("explainer/prompts/")}
    assert prompts >= {p.name for p in (ROOT / "prompts").glob("*.txt")}
    assert "explainer/cli.py" in names and "explainer/llm/prices.json" in names
    assert {"explainer/views/assets/index.js", "explainer/puzzles/puzzles.json"} <= set(names)


def test_installed_describe_runs_from_another_directory(installed, tmp_path):
    _, site = installed
    run = RF.make_run(tmp_path / "run")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "OPENAI_API_KEY": "sk-test"}
    where = subprocess.run([sys.executable, "-c", "import explainer.prompts as p; "
                            "print(p.PROMPTS_DIR)"], cwd=elsewhere, env=env, text=True,
                           capture_output=True, check=True).stdout.strip()
    assert Path(where) == site / "explainer" / "prompts"  # the wheel's copy, not the repo's
    with FakeOpenAI() as fake:
        out = subprocess.run([str(site / "bin" / "explain"), "describe", "--run", str(run),
                              "--layer", "0", "--neurons", "0-2", "--explainer", "fake-model",
                              "--base-url", fake.base_url], cwd=elsewhere, env=env, text=True,
                             capture_output=True)
    assert out.returncode == 0, out.stderr
    rows = rundir.read(run, "explanations")
    assert len(rows) == 3 and set(rows["status"]) == {"ok"}
    from explainer.describe import prompt as P

    assert set(rows["prompt_hash"]) == {P.prompt_hash()}  # same files, same hash
