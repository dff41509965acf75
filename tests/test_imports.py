"""Dependencies point one way: library (tda_clean) <- flows <- the ``tda-clean`` command. No import circles among
the project's modules (function-local imports count: a circle that closes at call time is still a tangle), no
import of the flows from the library, and the flows shipped under their own name (the wheel: tests/test_wheel.py)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOPS = ("tda_clean", "flows")


def _modules() -> dict[str, Path]:
    modules = {}
    for top in TOPS:
        for path in (REPO / top).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports anywhere in its body (the deepest existing module of each target)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1] + [node.module or ""]) if node.level else node.module
            base = base.strip(".")
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            # a package importing its own submodule (re-export) is not a dependency circle
            if target and target != name and not target.startswith(name + "."):
                found.add(target)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_planted_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_relative_and_local_imports_are_resolved():
    modules = _modules()
    assert "flows.clean" in _imports("flows.deploy", modules["flows.deploy"], modules)  # relative, inside a function
    assert "tda_clean.review" in _imports("tda_clean.pipeline", modules["tda_clean.pipeline"], modules)


def test_no_import_cycles_and_the_library_never_imports_the_flows():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    library_to_flows = sorted(f"{m} -> {t}" for m, ts in graph.items() if m.startswith("tda_clean")
                              for t in ts if t.split(".")[0] == "flows")
    assert library_to_flows == []
    assert _cycles(graph) == []


def test_console_script_is_the_flows_cli_and_flows_ship_under_their_own_name():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["scripts"] == {"tda-clean": "tda_clean_flows.cli:main"}
    setuptools = project["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"tda_clean_flows": "flows", "tda_clean.configs": "configs"}
    on_disk = sorted(".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "tda_clean").rglob("__init__.py"))
    # the hand list is complete; configs/ ships as data (tests/test_wheel.py builds the wheel)
    assert sorted(setuptools["packages"]) == sorted([*on_disk, "tda_clean_flows", "tda_clean.configs"])


HEAVY = ("matplotlib", "mlflow", "prefect", "torch._dynamo")


@pytest.mark.parametrize("module", ["tda_clean", "tda_clean.pipeline", "tda_clean.api"])
def test_importing_the_library_loads_no_plotting_tracking_orchestration_or_compiler(module):
    """``import tda_clean[.pipeline|.api]`` in a fresh interpreter leaves matplotlib, mlflow, prefect and torch's
    compiler (torch._dynamo) out of ``sys.modules``: they load when a run plots, tracks, orchestrates."""
    code = (f"import sys, {module}; print(sorted({{m.split('.')[0] if m.split('.')[0] != 'torch' else m "
            f"for m in sys.modules}} & set({HEAVY!r})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_lbfgs_training_does_not_import_the_compiler_and_leaves_torch_optim_as_it_was():
    code = """
import sys
import numpy as np
import torch
from tda_clean.models.eager import _wrapped_methods
from tda_clean.models.factory import LogisticRegression
from tda_clean.models.trainer import fit_to_optimum
rng = np.random.default_rng(0)
fit_to_optimum(LogisticRegression(3, 2).double(), rng.normal(size=(30, 3)), rng.integers(0, 2, 30), 0.1)
assert "torch._dynamo" not in sys.modules, "L-BFGS imported torch._dynamo"
methods = _wrapped_methods()
assert len(methods) == 4, methods  # the torch wrappers this relies on are still there
assert not any(hasattr(f, "__dynamo_disable") for f in methods), "wrapper caches left filled"
torch.optim.LBFGS(torch.nn.Linear(2, 2).parameters())  # outside the block: torch's own behaviour
assert "torch._dynamo" in sys.modules
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
