"""The architecture holds: stages meet only at the run directory, nothing heavy runs at import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Each stage and the private modules only it uses. Plumbing (store, models, corpus, llm*,
# prompts, config) may be imported by anyone; a stage family may not import another.
FAMILIES = {
    "record": {"record", "topk"},
    "describe": {"describe", "describe_prompt"},
    "simulate": {"simulate", "simulators", "simprompt", "simscore", "inprocess", "score"},
    "report": {"report", "plot", "show", "view"},  # read-only views over a finished run
}


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "explainer":
                out |= {a.name for a in node.names}
            elif node.module.startswith("explainer."):
                out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("explainer.")}
    return out


def test_stages_do_not_import_each_other():
    owner = {mod: fam for fam, mods in FAMILIES.items() for mod in mods}
    bad = []
    for mod, fam in owner.items():
        for dep in _imports(ROOT / "explainer" / f"{mod}.py"):
            if owner.get(dep, fam) != fam:
                bad.append(f"{mod} -> {dep}")
    assert not bad, bad


def test_score_metrics_are_pure():
    tree = ast.parse((ROOT / "explainer" / "score.py").read_text())
    mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
            for a in n.names} | {n.module.split(".")[0] for n in ast.walk(tree)
                                 if isinstance(n, ast.ImportFrom) and n.module}
    assert mods <= {"__future__", "dataclasses", "typing", "math", "numpy"}, mods
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Name)}
    assert not calls & {"open", "print"}


def test_cli_is_thin_and_help_is_instant():
    tree = ast.parse((ROOT / "cli.py").read_text())
    top = {a.name.split(".")[0] for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
           for a in n.names} | {n.module.split(".")[0] for n in tree.body
                                if isinstance(n, ast.ImportFrom) and n.module}
    assert not top & {"torch", "pandas", "numpy", "pyarrow", "transformer_lens", "openai"}
    code = ("import sys, cli; sys.argv = ['explain', '--help']\n"
            "try: cli.main()\nexcept SystemExit: pass\n"
            "heavy = {'torch', 'pandas', 'pyarrow', 'transformer_lens', 'openai', 'llama_cpp'}\n"
            "print(sorted(heavy & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_every_module_is_under_400_lines():
    long = {p.name: n for p in [*ROOT.glob("explainer/*.py"), ROOT / "cli.py"]
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long
