"""The real components a suite needs. Under CI=true a missing one fails the run: a broken install must
not turn a suite into skips and look green. Elsewhere it skips, with the reason."""

from __future__ import annotations

import importlib
import os

import pytest

STRICT = os.environ.get("CI", "").lower() == "true"


def need(module: str, why: str):
    """Import ``module``, or skip (fail under CI=true) saying which part of the suite needs it."""
    if STRICT:
        try:
            return importlib.import_module(module)
        except ImportError as exc:
            pytest.fail(f"{module} is missing under CI=true ({why}): {exc}; `make test` installs it", pytrace=False)
    return pytest.importorskip(module, reason=f"{module} is not installed ({why})")
