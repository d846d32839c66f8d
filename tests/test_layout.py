"""The architecture holds: stages meet only at the run directory, nothing heavy runs at import."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "explainer"
# Plumbing packages: anyone may import them, and they import no stage.
# subject (the subject model: load, read activations) is plumbing because two stages run it:
# record reads the corpus through it, judge (generation, steering) feeds it texts and steers it.
PLUMBING = {"run", "llm", "prompts", "config", "progress", "engine", "subject"}
# Shared rules that stages may import (pure scoring); they import plumbing only.
SHARED = {"score"}
# Composition: may import anything.
# puzzles runs the simulator (and explainer) on known answers, outside any run directory.
# cascade runs describe and simulate level by level (describe/revise.py asks for revisions).
# cascade_accept: which scorer accepts a cascade level (runs the judge stage)
COMPOSERS = {"pipeline", "cli", "puzzles", "cascade", "cascade_accept"}


def _package_of(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    """The explainer subpackages (or top-level modules) a file imports."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "explainer":
                out |= {a.name for a in node.names}
            elif node.module.startswith("explainer."):
                out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("explainer.")}
    return out - {"ExplainError"}


def _sources() -> list[Path]:
    return [p for p in PKG.rglob("*.py") if not p.is_symlink()] + \
        sorted((ROOT / "prompts").glob("*.py"))


def _package(path: Path) -> str:
    return "prompts" if path.parent == ROOT / "prompts" else _package_of(path)


def test_every_stage_and_plumbing_package_exists():
    packages = {p.name for p in PKG.iterdir() if (p / "__init__.py").exists()}
    assert {"run", "record", "llm", "describe", "simulate", "score", "views"} <= packages
    for name in packages:
        doc = ast.get_docstring(ast.parse((PKG / name / "__init__.py").read_text()))
        assert doc and len(doc.splitlines()) >= 2, f"{name}/__init__.py says what it does"


def test_stages_do_not_import_each_other_and_plumbing_imports_no_stage():
    bad = []
    for path in _sources():
        mine = _package(path)
        if mine in COMPOSERS:
            continue
        for dep in _imports(path) - {mine}:
            allowed = PLUMBING | (set() if mine in PLUMBING or mine in SHARED else SHARED)
            if dep not in allowed:
                bad.append(f"{path.relative_to(ROOT)} -> {dep}")
    assert not bad, bad


def test_only_the_run_package_writes_parquet():
    writers = [p.relative_to(ROOT) for p in _sources()
               if ("pq.write_table" in p.read_text() or ".to_parquet(" in p.read_text())
               and _package(p) != "run"]
    assert not writers, writers


def test_score_metrics_and_rows_are_pure():
    for name in ("metrics.py", "rows.py"):
        tree = ast.parse((PKG / "score" / name).read_text())
        mods = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names} | \
            {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        allowed = {"__future__", "dataclasses", "typing", "math", "numpy", "hashlib",
                   "explainer.run.rows", "explainer.run.query", "explainer.score"}
        assert mods <= allowed, (name, mods - allowed)
        calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Name)}
        assert not calls & {"open", "print"}, name


def test_cli_is_thin_and_help_is_instant():
    tree = ast.parse((ROOT / "cli.py").read_text())
    top = {a.name.split(".")[0] for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
           for a in n.names} | {n.module.split(".")[0] for n in tree.body
                                if isinstance(n, ast.ImportFrom) and n.module}
    assert not top & {"torch", "pandas", "numpy", "pyarrow", "transformer_lens", "openai"}
    code = ("import sys\nfrom explainer import cli\nsys.argv = ['explain', '--help']\n"
            "try: cli.main()\nexcept SystemExit: pass\n"
            "heavy = {'torch', 'pandas', 'pyarrow', 'transformer_lens', 'openai', 'llama_cpp'}\n"
            "print(sorted(heavy & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_every_module_is_under_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in [*_sources(), ROOT / "cli.py"]
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


# A hand-written filter of the scores (or simulations) table by method, control or best: the
# selection rule lives once, in run/query.py, and every reader asks it.
_HAND_FILTER = re.compile(
    r"""\[["'](method|control|best)["']\]\s*(==|!=|\.isin|\.astype)"""  # frame["best"] ...
    r"""|\b(if|and)\s+r\.(method|control|best)\b(?!.*\belse\b)"""  # a row-by-row filter
    r"""|sort_values\(\[["']best["']""")  # best-first, then drop_duplicates


def test_no_module_outside_run_filters_scores_by_hand():
    bad = []
    for path in _sources():
        if _package(path) == "run":
            continue
        text = path.read_text()
        if "scores" not in text and "simulations" not in text:
            continue  # reads neither table
        for i, line in enumerate(text.splitlines(), 1):
            if _HAND_FILTER.search(line):
                bad.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not bad, "filter through explainer.run.query instead:\n" + "\n".join(bad)


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _module_imports(path: Path, known: set[str]) -> set[str]:
    """explainer modules a file imports, at module level or inside a function (a package's
    `from explainer.x import y` names module x.y when y is a module, else x)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("explainer"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in known else node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("explainer")}
    return {m for m in out if m in known}


def test_no_two_modules_import_each_other_directly_or_in_a_loop():
    paths = {_module_name(p): p for p in PKG.rglob("*.py") if not p.is_symlink()}
    known = set(paths)
    # A package's __init__ re-exporting its modules is the package's interface, not a loop:
    # only module-to-module edges count (package -> its own modules is left out).
    graph = {m: {d for d in _module_imports(p, known) - {m}
                 if not (p.name == "__init__.py" and d.startswith(m + "."))
                 and not m.startswith(d + ".") and paths[d].name != "__init__.py"}
             for m, p in paths.items()}
    loops = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, trail: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                loops.append(" -> ".join(trail[trail.index(d):] + [d]))
            elif d not in state:
                visit(d, trail + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not loops, loops
