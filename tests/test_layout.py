"""The layout's rules, read from the source: a lower layer never imports a higher one, no import cycles,
runners listed in one table, and every public name of the README and DESIGN importable."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "flavors", "connectors")

# lowest first; a module may import its own layer and the ones before it
LAYERS = [
    ("engine.errors",),
    ("engine.model", "flavors"),
    ("connectors",),
    ("engine.jobs",),
    ("engine.runners", "engine.server", "engine.scheduler"),  # the modes
    ("engine", "engine.cli", "engine.spark", "engine.spark_job", "engine.__main__"),  # the public face
]


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _layer(module: str) -> int:
    best, rank = -1, None
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, rank = len(name), i
    assert rank is not None, f"{module} is in no layer; add it to LAYERS"
    return rank


def _imports(module: str, path: Path) -> set[str]:
    """Every module of ours this one imports, at the top or inside a function."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            names = [f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target for a in node.names]
        else:
            continue
        out.update(n for n in names if n.split(".")[0] in PACKAGES and n in MODULES)
    out.discard(module)
    return out


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def test_no_lower_layer_imports_a_higher_one():
    wrong = [f"{m} ({_layer(m)}) imports {t} ({_layer(t)})" for m, targets in GRAPH.items()
             for t in targets if _layer(t) > _layer(m)]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    def cycle_from(start):
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for nxt in GRAPH[node]:
                if nxt == start:
                    return trail
                # an import of a package runs its __init__, not its other submodules
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, trail + [nxt]))
        return None

    cycles = {" -> ".join(c + [c[0]]) for m in GRAPH if (c := cycle_from(m))}
    assert not cycles, "\n".join(sorted(cycles))


def test_the_checks_see_imports():
    """The graph is not empty by accident: known imports are in it."""
    assert "engine.errors" in GRAPH["engine.model.scorer"]
    assert "engine.jobs.scoring" in GRAPH["engine.runners.local"]
    assert "engine.model.signature" in GRAPH["flavors.onnx"]


def test_runners_are_a_table_and_importing_one_registers_nothing():
    from engine import runners
    from engine.jobs.options import RUNNER_OPTIONS

    assert set(runners.RUNNERS) == set(RUNNER_OPTIONS) == {"local", "ray", "spark"}
    for name, target in runners.RUNNERS.items():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), name
    assert not any(hasattr(m, "register_runner") for m in (runners, importlib.import_module("engine.jobs.options")))


def test_import_engine_loads_no_runner_or_heavy_library():
    code = ("import sys, engine; heavy = [m for m in ('ray', 'pyspark', 'confluent_kafka', 'onnxruntime', 'xgboost', "
            "'mlflow', 'engine.runners.local', 'engine.runners.ray', 'engine.runners.spark', 'engine.runners.stream') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", ["load_model", "Model", "save_model", "Signature", "score", "stream", "run_job", "ScoreOptions",
                                  "ScoreReport", "RayOptions", "SparkOptions", "StreamOptions", "EngineError"])
def test_public_names(name):
    import engine

    assert name in engine.__all__ and getattr(engine, name) is not None


def test_engine_stream_stays_the_function():
    """Importing the stream runner does not turn ``engine.stream`` into a module."""
    import engine
    import engine.runners.stream  # noqa: F401

    assert callable(engine.stream) and engine.stream.__module__ == "engine"


def test_engine_run_job_stays_the_function():
    """``engine.run_job`` is no module's name: importing the scheduler does not shadow it."""
    import engine
    import engine.scheduler  # noqa: F401

    assert callable(engine.run_job) and engine.run_job.__module__ == "engine"


def test_spark_names_and_entry_point():
    import engine.spark

    assert {"udf", "score", "spark_schema"} <= set(engine.spark.__all__)
    out = subprocess.run([sys.executable, "-m", "engine.spark_job", "--path"], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == 0 and Path(out.stdout.strip()).name == "spark_job.py"


def _public_modules() -> list[str]:
    return [m for m in MODULES if not any(part.startswith("_") for part in m.split("."))]


def test_no_public_function_shares_a_name_with_a_submodule():
    """``package.name`` is a function until something imports ``package.name`` the module: then it is the
    module, and calling it raises TypeError. So no package may have both."""
    clashes = []
    for module in _public_modules():
        path = MODULES[module]
        if path.name != "__init__.py":
            continue
        children = {p.stem for p in path.parent.glob("*.py") if p.stem != "__init__"}
        children |= {p.name for p in path.parent.iterdir() if (p / "__init__.py").exists()}
        tree = ast.parse(path.read_text())
        defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        imported = {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
        clashes += [f"{module}.{name}" for name in sorted((defined | imported) & children)
                    if not (name in imported and f"{module}.{name}" in MODULES)]  # importing the submodule itself is fine
    assert not clashes, f"functions or classes named like a submodule of their package: {clashes}"


def test_engine_functions_stay_callable_after_every_submodule_is_imported():
    """Import every public module of engine, connectors and flavors (the heavy ones whose library is
    installed), then every function in ``engine.__all__`` is still that function."""
    import engine

    for module in _public_modules():
        try:
            importlib.import_module(module)
        except ImportError as exc:  # an optional library (ray, pyspark, ...) not installed here
            if exc.name is None or exc.name.split(".")[0] in PACKAGES:
                raise
    functions = [n for n in engine.__all__ if not isinstance(getattr(engine, n), type)]
    assert {"stream", "serve", "score", "run_job", "load_model", "save_model"} <= set(functions)
    for name in functions:
        value = getattr(engine, name)
        assert callable(value) and not isinstance(value, type(engine)), f"engine.{name} is {value!r}"
