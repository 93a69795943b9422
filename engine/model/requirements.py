"""Compare a model's requirements.txt with what is installed; report mismatches once, concisely."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

__all__ = ["Mismatch", "check_requirements", "warn_once"]

log = logging.getLogger("arrowscore.requirements")
_LINE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*(==|>=|<=|~=|!=|>|<)?\s*([^;\s]*)\s*(?:;(.*))?$")
_warned: set[str] = set()


@dataclass(frozen=True)
class Mismatch:
    package: str
    wanted: str  # e.g. "==2.4.6" or "" when unpinned
    installed: str | None  # None: not installed

    def __str__(self) -> str:
        have = self.installed or "not installed"
        return f"{self.package} {self.wanted or '(any)'} (installed: {have})"


def _marker_applies(marker: str | None) -> bool:
    if not marker:
        return True
    try:
        from packaging.markers import Marker
    except ImportError:
        return True
    try:
        return Marker(marker).evaluate()
    except Exception:  # an unparseable marker: check the line rather than drop it
        return True


def _version_ok(op: str | None, wanted: str, have: str) -> bool:
    if not op or not wanted:
        return True
    if op == "==":
        return have == wanted or have.split("+")[0] == wanted or (wanted.endswith(".*") and have.startswith(wanted[:-1]))
    try:
        from packaging.specifiers import SpecifierSet
    except ImportError:
        return True
    return SpecifierSet(f"{op}{wanted}").contains(have, prereleases=True)


def _installed(name: str) -> str:
    """The installed version of ``name``; MLflow's pyfunc also comes as mlflow-skinny (what images install)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        if name.lower() != "mlflow":
            raise
        return metadata.version("mlflow-skinny")


def check_requirements(model_dir: str | Path, flavor: str | None = None) -> list[Mismatch]:
    """Requirements of the model that the running environment does not meet (``mlflow`` counts only
    for the python_function flavor: arrowscore loads the native ones without it)."""
    path = Path(model_dir) / "requirements.txt"
    if not path.is_file():
        return []
    out = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        m = _LINE.match(line)
        if not m or not _marker_applies(m.group(4)):
            continue
        name, op, wanted = m.group(1), m.group(2), m.group(3)
        if name.lower() == "mlflow" and flavor not in (None, "python_function"):
            continue
        try:
            have = _installed(name)
        except metadata.PackageNotFoundError:
            out.append(Mismatch(name, f"{op or ''}{wanted}", None))
            continue
        if not _version_ok(op, wanted, have):
            out.append(Mismatch(name, f"{op}{wanted}", have))
    return out


def warn_once(model_dir: str | Path, flavor: str | None = None) -> list[Mismatch]:
    """Log one line per model directory (per process) when requirements differ."""
    key = str(Path(model_dir).resolve())
    if key in _warned:
        return []
    _warned.add(key)
    found = check_requirements(model_dir, flavor)
    if found:
        log.warning("model %s was logged with other packages: %s; scoring may differ "
                    "(arrowscore info MODEL lists them)", model_dir, "; ".join(map(str, found)))
    return found
