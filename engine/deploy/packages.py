"""What a model's image or environment installs: arrowscore with the extras its flavor needs, the
model's pinned requirements, and arrowscore's own dependencies at the versions running here.

- The flavor is the one arrowscore loads the model with (native first, python_function last).
- The model's ``requirements.txt`` is kept line by line, except ``mlflow``: native flavors do not
  need it (arrowscore loads them without MLflow), and python_function models get ``mlflow-skinny``
  at the same version (MLflow's pyfunc without its tracking server, UI and SQL stack). A ``-r`` or
  ``-c`` line names a file of the model's, which goes along (``files``).
- Each package arrowscore needs and the model does not name is pinned to the version installed in
  this environment (when it is installed), so the image runs what was tested here. A model pin
  outside what arrowscore accepts is refused here, not minutes later in pip.

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

from ..errors import ConfigError, ModelLoadError

__all__ = ["InstallPlan", "install_plan", "line_name", "check_requirement", "resolve_pinned", "FLAVOR_EXTRAS",
           "MIN_PYTHON"]

# the extras each flavor needs; every deployment also serves (serve) and may run jobs (run). sklearn:
# a model fitted on named columns is called with a pandas DataFrame
# xgboost: images serve, so they bring the compiled small-batch path (flavors.compiled)
FLAVOR_EXTRAS = {"onnx": ("onnx",), "sklearn": ("sklearn", "pandas"), "xgboost": ("xgboost", "compiled"),
                 "lightgbm": ("lightgbm",), "pytorch": ("pytorch",), "python_function": ("mlflow", "pandas")}
MIN_PYTHON = (3, 10)  # pyproject's requires-python
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_EXTRA = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")
_PYTHON = re.compile(r"^3\.\d{1,2}(\.\d{1,3})?$")
_FILE_OPTS = ("-r", "-c", "--requirement", "--constraint")


def line_name(line: str) -> str | None:
    """The package name a requirement line names (None for options and URLs)."""
    m = _NAME.match(line)
    return m.group(1) if m and not line.lstrip().startswith("-") and "://" not in line.split(";")[0] else None


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def resolve_pinned(model_uri, cache_dir=None) -> tuple[Path, str | None]:
    """(the model's local directory, "name/version" for a registry URI): an alias is resolved once, to
    the version it names now, so what is built and what runs are the same model."""
    from ..model import uris

    version = uris.registry_version(str(model_uri))
    fetch = f"models:/{version.name}/{version.version}" if version is not None else model_uri
    return Path(uris.resolve(fetch, cache_dir)), (f"{version.name}/{version.version}" if version else None)


def check_requirement(line: str, what: str) -> str:
    """``line`` if it is one PEP 508 requirement (``NAME==VERSION``, ``NAME @ URL`` ...); ConfigError if not."""
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        Requirement(line)
    except InvalidRequirement as exc:
        raise ConfigError(f"{what} {line!r} is not a requirement ({exc}); pass NAME==VERSION") from None
    return line


@dataclass(frozen=True)
class InstallPlan:
    """What to install for one model.

    flavor: the flavor arrowscore loads it with; python: the model's Python version ("3.11.7");
    extras: arrowscore's extras; requirements: requirements.txt lines beside arrowscore's own line
    (the model's, then arrowscore's dependencies pinned); notes: what was changed from the model's
    list, and why; constraints: the model's pins when they only constrain; files: (the model's file a
    ``-r``/``-c`` line names, the name it has in FILES_DIR).
    """

    flavor: str
    python: str
    extras: tuple[str, ...]
    requirements: tuple[str, ...]
    notes: tuple[str, ...]
    constraints: tuple[str, ...] = ()
    files: tuple[tuple[Path, str], ...] = ()

    FILES_DIR = "requirements.d"  # where ``files`` go, beside requirements.txt

    def arrowscore_line(self, wheel: str) -> str:
        """The requirement line installing arrowscore with its extras from ``wheel`` (a path or file URL)."""
        url = wheel if "://" in wheel else Path(wheel).resolve().as_uri()
        return f"arrowscore[{','.join(self.extras)}] @ {url}"

    def requirements_txt(self, wheel: str, base: str, constraints: str | None = None) -> str:
        """requirements.txt installing the plan; ``base``: the directory holding FILES_DIR there;
        ``constraints``: where constraints_txt() is (if any)."""
        head = [*(f"# {n}" for n in self.notes), *([f"-c {constraints}"] if constraints and self.constraints else [])]
        lines = [line.replace("{files}", f"{base}/{self.FILES_DIR}") for line in self.requirements]
        return "\n".join([*head, self.arrowscore_line(wheel), *lines]) + "\n"

    def constraints_txt(self) -> str:
        return "\n".join(["# the model's requirements, as versions for what is installed, not as installs",
                          *self.constraints]) + "\n"


def _python(model_dir: Path) -> str:
    env = model_dir / "python_env.yaml"
    version = None
    if env.is_file():
        try:
            version = (yaml.safe_load(env.read_text()) or {}).get("python")
        except (yaml.YAMLError, AttributeError):
            version = None
    if not version:
        return ".".join(map(str, sys.version_info[:3]))
    version = str(version).strip()
    if not _PYTHON.match(version):
        raise ModelLoadError(f"{env}: python {version!r} is not a Python version (like 3.11.7); fix the file")
    if tuple(int(p) for p in version.split(".")[:2]) < MIN_PYTHON:
        raise ConfigError(f"the model was logged with Python {version}; arrowscore needs Python "
                          f"{'.'.join(map(str, MIN_PYTHON))} or newer: pass --base-image python:3.11-slim (or another "
                          "newer Python) if the model loads there")
    return version


def _model_lines(model_dir: Path, flavor: str) -> tuple[list[str], list[str], list[tuple[Path, str]]]:
    path = model_dir / "requirements.txt"
    lines, notes, files = [], [], []
    for raw in (path.read_text().splitlines() if path.is_file() else []):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        opt, _, ref = line.partition(" ")
        if opt in _FILE_OPTS:
            source = (model_dir / ref.strip()).resolve()
            if not source.is_file() or not source.is_relative_to(model_dir.resolve()):
                raise ModelLoadError(f"{path}: {line!r} names {ref.strip()!r}, which is not a file in the model's "
                                     "directory; fix the model's requirements")
            name = f"{len(files)}-{source.name}"
            files.append((source, name))
            lines.append(f"{opt} {{files}}/{name}")
            continue
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
    return lines, notes, files


def _as_constraint(line: str) -> str | None:
    """A requirement line as a pip constraint (no extras, no options), or None when it cannot be one."""
    name = line_name(line)
    if not name:
        return None
    rest = line.strip()[len(name):]
    if rest.startswith("["):
        rest = rest.split("]", 1)[1]
    return name + rest if not rest.lstrip().startswith("@") else None


def _ours(extras: tuple[str, ...]) -> dict[str, tuple[str, str]]:
    """{key: (name, specifier)} of arrowscore's requirements with ``extras``."""
    from .wheel import installed

    wanted, out = set(extras), {}
    for req in installed().requires or []:
        spec, _, marker = req.partition(";")
        m = _EXTRA.search(marker)
        if m and m.group(1) not in wanted:
            continue
        name = line_name(spec)
        if name and _key(name) != "arrowscore":
            out[_key(name)] = (name, spec.strip()[len(name):].split("]")[-1].strip())
    return out


def _check_pins(lines: list[str], ours: dict[str, tuple[str, str]]) -> None:
    """A model pin (``NAME==VERSION``) that arrowscore's own requirement excludes: refused now."""
    from packaging.specifiers import SpecifierSet

    for line in lines:
        name = line_name(line)
        m = re.match(r"^[A-Za-z0-9._-]+(?:\[[^\]]*\])?\s*==\s*([^\s;,]+)\s*(?:;.*)?$", line)
        if not name or not m or _key(name) not in ours or not ours[_key(name)][1]:
            continue
        if not SpecifierSet(ours[_key(name)][1]).contains(m.group(1), prereleases=True):
            raise ConfigError(f"the model pins {line!r}, but arrowscore needs {name}{ours[_key(name)][1]}; re-log "
                              "the model with a version that fits, or use --model-requirements constrain")


def _pins(ours: dict[str, tuple[str, str]], named: set[str]) -> list[str]:
    """arrowscore's requirements pinned to what is installed here, unless the model names them."""
    pins = []
    for key, (name, spec) in ours.items():
        if key in named:
            continue
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pins.append(f"{name}{spec}")
    return sorted(pins)


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
    python = _python(model_dir)
    lines, notes, files = _model_lines(model_dir, name)
    ours = _ours(all_extras)
    constraints: list[str] = []
    if constrain:
        constraints = [c for c in map(_as_constraint, lines) if c]
        dropped = [line for line in lines if not _as_constraint(line)]
        notes.append("the model's requirements constrain versions only (--model-requirements constrain): "
                     + ", ".join(constraints))
        if dropped:
            notes.append(f"left out, as they cannot be constraints: {', '.join(dropped)}")
        lines, files = [], []
    _check_pins(lines + constraints, ours)
    lines += [check_requirement(p, "--pip-package") for p in pip_packages]
    named = {_key(n) for n in map(line_name, lines + constraints) if n}
    return InstallPlan(name, python, all_extras, tuple(lines + _pins(ours, named)), tuple(notes),
                       tuple(constraints), tuple(files))
