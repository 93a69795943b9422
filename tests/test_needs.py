"""needs.need: under CI=true a missing real component fails the run; elsewhere it skips with the reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize("ci, code, said", [("true", 1, "polars is missing under CI=true (polars inputs)"),
                                            ("", 0, "polars is not installed (polars inputs)")])
def test_missing_component(tmp_path, ci, code, said):
    (tmp_path / "conftest.py").write_text(f"import sys\nsys.modules['polars'] = None\nsys.path.insert(0, {str(TESTS)!r})\n")
    (tmp_path / "test_it.py").write_text("from needs import need\n\ndef test_it():\n    need('polars', 'polars inputs')\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"} | ({"CI": ci} if ci else {})
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(tmp_path)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == code, out.stdout[-2000:]
    assert said in out.stdout
