"""Run Python in a fresh interpreter where some packages cannot be imported (a real missing install)."""

from __future__ import annotations

import subprocess
import sys


def run_without(modules: list[str], code: str) -> subprocess.CompletedProcess:
    block = "".join(f"sys.modules[{m!r}] = None\n" for m in modules)
    return subprocess.run([sys.executable, "-c", f"import sys\n{block}{code}"], capture_output=True, text=True,
                          timeout=120)


def load_error(modules: list[str], uri: str) -> str:
    """The MissingDependency message engine.load_model(uri) gives without ``modules`` ('' if none)."""
    out = run_without(modules, "import engine\ntry:\n"
                               f"    engine.load_model({uri!r})\n"
                               "except engine.MissingDependency as e:\n    print('MISSING:', e)\n")
    assert out.returncode == 0, out.stderr
    return out.stdout
