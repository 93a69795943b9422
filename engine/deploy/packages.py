"""What a model's image or environment installs: arrowscore with the extras its flavor needs, the
model's pinned requirements, and arrowscore's own dependencies at the versions running here.

- The flavor is the one arrowscore loads the model with (native first, python_function last).
- The model's ``requirements.txt`` is kept line by line, except ``mlflow``: native flavors do not
  need it (arrowscore loads them without MLflow), and python_function models get ``mlflow-skinny``
  at the same version (MLflow's pyfunc without its tracking server, UI and SQL stack).
- Each package arrowscore needs and the model does not name is pinned to the version installed in
  this environment (when it is installed), so the image runs what was tested here.

>>> line_name("scikit-learn[alldeps]==1.9.1 ; python_version >= '3.9'")
'scikit-learn'
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import yaml

from ..errors import ModelLoadError

__all__ = ["InstallPlan", "install_plan", "line_name", "FLAVOR_EXTRAS"]

# the extras each flavor needs; every deployment also serves (serve) and may run jobs (run)
FLAVOR_EXTRAS = {"onnx": ("onnx",), "sklearn": ("sklearn",), "xgboost": ("xgboost",), "lightgbm": ("lightgbm",),
                 "pytorch": ("pytorch",), "python_function": ("mlflow", "pandas")}
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_EXTRA = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


def line_name(line: str) -> str | None:
    """The normalized-for-display package name a requirement line names (None for options and URLs)."""
    m = _NAME.match(line)
    return m.group(1) if m and not line.lstrip().startswith("-") and "://" not in line.split(";")[0] else None


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class InstallPlan:
    """What to install for one model.

    flavor: the flavor arrowscore loads it with; python: the model's Python version ("3.11.7");
    extras: arrowscore's extras; requirements: requirements.txt lines beside arrowscore's own line
    (the model's, then arrowscore's dependencies pinned); notes: what was changed from the model's
    list, and why (for the generated files' comments and the log).
    """

    flavor: str
    python: str
    extras: tuple[str, ...]
    requirements: tuple[str, ...]
    notes: tuple[str, ...]
    constraints: tuple[str, ...] = ()  # the model's pins, when they only constrain (constrain=True)

    def arrowscore_line(self, wheel: str) -> str:
        """The requirement line installing arrowscore with its extras from ``wheel`` (a path or file URL)."""
        url = wheel if "://" in wheel else Path(wheel).resolve().as_uri()
        return f"arrowscore[{','.join(self.extras)}] @ {url}"

    def requirements_txt(self, wheel: str, constraints: str | None = None) -> str:
        """requirements.txt installing the plan; ``constraints``: where constraints_txt() is (if any)."""
        head = [*(f"# {n}" for n in self.notes), *([f"-c {constraints}"] if constraints and self.constraints else [])]
        return "\n".join([*head, self.arrowscore_line(wheel), *self.requirements]) + "\n"

    def constraints_txt(self) -> str:
        return "\n".join(["# the model's requirements, as versions for what is installed, not as installs",
                          *self.constraints]) + "\n"


def _python(model_dir: Path) -> str:
    env = model_dir / "python_env.yaml"
    if env.is_file():
        try:
            version = (yaml.safe_load(env.read_text()) or {}).get("python")
        except yaml.YAMLError:
            version = None
        if version:
            return str(version)
    return ".".join(map(str, sys.version_info[:3]))


def _model_lines(model_dir: Path, flavor: str) -> tuple[list[str], list[str]]:
    path = model_dir / "requirements.txt"
    lines, notes = [], []
    for raw in (path.read_text().splitlines() if path.is_file() else []):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-r ", "-c ", "--requirement", "--constraint")):
            opt, _, ref = line.partition(" ")
            line = f"{opt} {(model_dir / ref.strip()).as_posix()}" if not Path(ref.strip()).is_absolute() else line
        name = line_name(line)
        if name and _key(name) == "mlflow":
            if flavor == "python_function":
                skinny = "mlflow-skinny" + line[len(name):].split(";")[0].split("]")[-1].strip()
                lines.append(skinny)
                notes.append(f"{line}: installed as {skinny} (MLflow's pyfunc without its server, UI and SQL stack)")
            else:
                notes.append(f"{line}: left out (arrowscore loads {flavor} models without MLflow)")
            continue
        lines.append(line)
    return lines, notes


def _ours(extras: tuple[str, ...], named: set[str]) -> list[str]:
    """arrowscore's requirements for ``extras``, pinned to what is installed here, unless the model names them."""
    from .wheel import installed

    dist = installed()
    wanted = set(extras)
    pins = {}
    for req in dist.requires or []:
        spec, _, marker = req.partition(";")
        m = _EXTRA.search(marker)
        if m and m.group(1) not in wanted:
            continue
        name = line_name(spec)
        if not name or _key(name) in named or _key(name) == "arrowscore":
            continue
        try:
            pins[_key(name)] = f"{name}=={metadata.version(name)}"
        except metadata.PackageNotFoundError:
            pins[_key(name)] = spec.strip()
    return sorted(pins.values())


def _as_constraint(line: str) -> str | None:
    """A requirement line as a pip constraint (no extras, no options), or None when it cannot be one."""
    name = line_name(line)
    if not name:
        return None
    rest = line.strip()[len(name):]
    if rest.startswith("["):
        rest = rest.split("]", 1)[1]
    return name + rest if not rest.lstrip().startswith("@") else None


def install_plan(model_dir: str | Path, flavor: str | None = None, extras: tuple[str, ...] = ("serve", "run"),
                 pip_packages: tuple[str, ...] = (), constrain: bool = False) -> InstallPlan:
    """The install plan for the model in ``model_dir`` (a local directory holding MLmodel).

    constrain: the model's requirements pin the versions of what arrowscore and its flavor install,
    but add no packages of their own (MLflow infers them from the logging process, which brings
    test and notebook packages along); the default installs them all, as MLflow does.
    """
    from flavors import choose

    from ..model.mlmodel import read_mlmodel

    model_dir = Path(model_dir)
    name, _ = choose(read_mlmodel(model_dir), flavor)
    if name not in FLAVOR_EXTRAS:
        raise ModelLoadError(f"arrowscore does not know which packages the {name!r} flavor needs; pass them with "
                             "--pip-package NAME==VERSION and --flavor python_function")
    all_extras = tuple(dict.fromkeys([*FLAVOR_EXTRAS[name], *extras]))
    lines, notes = _model_lines(model_dir, name)
    constraints: list[str] = []
    if constrain:
        constraints = [c for c in map(_as_constraint, lines) if c]
        notes.append("the model's requirements constrain versions only (--model-requirements constrain): "
                     + ", ".join(constraints))
        lines = []
    lines += list(pip_packages)
    named = {_key(n) for n in map(line_name, lines + constraints) if n}
    return InstallPlan(name, _python(model_dir), all_extras, tuple(lines + _ours(all_extras, named)), tuple(notes),
                       tuple(constraints))
