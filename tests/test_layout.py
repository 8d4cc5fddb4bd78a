"""The package's shape: no import circle (lazy imports inside functions included), runs never import analyses, and
no branch on a kind of run, task or model outside coopinterp/runs/ and coopinterp/tasks/."""
import ast
import re
import subprocess
import sys
from pathlib import Path

import coopinterp

PACKAGE = Path(coopinterp.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The coopinterp modules a module imports anywhere in its body (a function's lazy import too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as the modules around it, or None (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_walker_finds_a_planted_circle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycle(edges) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None
    edges = graph()
    assert "coopinterp.cli.train" in edges["coopinterp.cli"]  # `from . import train` is an edge
    assert "coopinterp.runs" in edges["coopinterp.analysis.executors"]  # a lazy import inside a function too


def test_no_import_circle():
    assert cycle(graph()) is None, " -> ".join(cycle(graph()))


def test_runs_and_tasks_never_import_analyses_plots_or_the_cli():
    higher = ("coopinterp.analysis", "coopinterp.plots", "coopinterp.cli", "coopinterp.app", "coopinterp.training")
    for name, targets in graph().items():
        if name.startswith(("coopinterp.runs", "coopinterp.tasks")):
            assert not [t for t in targets if t.startswith(higher)], name


def test_runs_and_tasks_import_in_a_fresh_process():
    done = subprocess.run([sys.executable, "-c", "import coopinterp.runs, coopinterp.tasks"], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr


def test_a_run_opens_without_the_other_tasks_models():
    """The registry imports a task's module when its kind is first asked for: opening the demo (an exemplar run of
    run.json format 2) loads neither the linreg nor the parity module, nor transformer-lens through them."""
    code = ("import sys, coopinterp as ci; ci.load_run('checkpoints/demo'); "
            "print(sorted(m for m in ('coopinterp.tasks.linreg', 'coopinterp.tasks.parity', 'transformer_lens') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_no_kind_branch_outside_runs_and_tasks():
    branch = re.compile(r"\.kind\s*(==|!=|\bin\b)")
    found = [f"{path.relative_to(PACKAGE)}:{i}" for path in PACKAGE.rglob("*.py")
             if path.relative_to(PACKAGE).parts[0] not in ("runs", "tasks")
             for i, line in enumerate(path.read_text().splitlines(), 1) if branch.search(line)]
    assert not found, found
