"""``arrowscore env`` and ``--env-manager uv``: the model's own environment, as MLflow's env_manager.

A virtualenv made with uv holding arrowscore (this code, as a wheel) with the extras the model's
flavor needs and the model's pinned requirements (packages.py), under
``<cache>/envs/<hash of what it installs>``: the same model, or another with the same requirements,
reuses it; a changed requirement or arrowscore makes a new one. It is built beside its final place
and renamed into it, under a lock, so two commands at once build it once and nobody sees half of it.

The Python is the model's major.minor when this machine has it (uv finds installed interpreters;
it downloads none), else the running one with a warning naming both.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import ConfigError, MissingDependency, ModelLoadError
from .packages import install_plan, resolve_pinned
from .wheel import build_wheel

__all__ = ["create_env", "env_python", "uv_binary", "envs_dir", "env_entries", "prune_envs"]

log = logging.getLogger("arrowscore.env")


def envs_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache>/envs``: beside the models, in the cache ``--cache-dir`` / ``ARROWSCORE_CACHE_DIR`` name."""
    from ..model.cache import default_cache_dir

    return Path(cache_dir) / "envs" if cache_dir else default_cache_dir().parent / "envs"


def uv_binary() -> str:
    """The uv executable: the ``uv`` package's, beside this Python, or on PATH."""
    try:
        import uv

        return uv.find_uv_bin()
    except (ImportError, FileNotFoundError):
        pass
    here = Path(sys.executable).parent / "uv"
    found = str(here) if here.is_file() else shutil.which("uv")
    if not found:
        raise MissingDependency("--env-manager uv and `arrowscore env` need uv; pip install 'arrowscore[env]' "
                                "(or put uv on PATH)")
    return found


def _interpreter(uv: str, wanted: str) -> str:
    """The Python for the model: its major.minor if installed here, else this one (with a warning)."""
    minor = ".".join(wanted.split(".")[:2])
    if minor == ".".join(map(str, sys.version_info[:2])):
        return sys.executable
    found = subprocess.run([uv, "python", "find", "--no-python-downloads", minor], capture_output=True, text=True)
    if found.returncode == 0 and found.stdout.strip():
        return found.stdout.strip()
    log.warning("the model was logged with Python %s, which this machine does not have; its environment uses "
                "Python %s (install Python %s to match)", wanted, ".".join(map(str, sys.version_info[:3])), minor)
    return sys.executable


def _run(cmd: list[str], what: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise ModelLoadError(f"{what} failed (exit {done.returncode}):\n{tail}")


def create_env(model_uri: str, cache_dir: str | None = None, flavor: str | None = None,
               resolves_again: bool = True) -> Path:
    """The model's environment (a virtualenv directory), made on first use and reused after.
    resolves_again: the commands run in it get the URI, not the local copy (a job file names its model):
    registry and remote URIs then need MLflow there too."""
    model_dir, _ = resolve_pinned(model_uri, cache_dir)
    remote = resolves_again and ("://" in str(model_uri) or str(model_uri).startswith(("models:/", "runs:/")))
    plan = install_plan(model_dir, flavor, extras=("serve", "run", *(("mlflow",) if remote else ())))
    uv = uv_binary()
    python = _interpreter(uv, plan.python)
    with tempfile.TemporaryDirectory(prefix="arrowscore-env-") as tmp:
        wheel = build_wheel(tmp)
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        # what the environment holds: the requirements with the wheel's and the -r files' contents in place
        # of their paths
        files = "".join(f"{name} {hashlib.sha256(src.read_bytes()).hexdigest()}\n" for src, name in plan.files)
        spec = (plan.requirements_txt(f"file:///arrowscore-{digest}.whl", "/files") + files
                + f"python {python} {plan.python}\n")
        key = hashlib.sha256(spec.encode()).hexdigest()[:16]
        root = envs_dir(cache_dir)
        target = root / f"{plan.flavor}-{key}"
        if (target / "bin" / "python").exists():
            _used(target)
            return target
        root.mkdir(parents=True, exist_ok=True)
        with open(root / f"{target.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # a second command waits here, then finds it made
            if (target / "bin" / "python").exists():
                return target
            for stale in root.glob(f".{target.name}-*"):  # left by a build that was killed (we hold its lock)
                shutil.rmtree(stale, ignore_errors=True)
            used = subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                                  capture_output=True, text=True).stdout.strip()
            log.info("creating the model's environment %s (%s; Python %s, the model was logged with %s); later "
                     "commands reuse it", target, ", ".join(plan.extras), used, plan.python)
            building = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
            try:
                _run([uv, "venv", "--quiet", "--relocatable", "--no-python-downloads", "--python", python,
                      str(building / "venv")], "creating the virtualenv with uv")
                (Path(tmp) / plan.FILES_DIR).mkdir()
                for source, name in plan.files:
                    shutil.copyfile(source, Path(tmp) / plan.FILES_DIR / name)
                requirements = Path(tmp) / "requirements.txt"
                requirements.write_text(plan.requirements_txt(str(wheel), tmp))
                _run([uv, "pip", "install", "--quiet", "--python", str(building / "venv" / "bin" / "python"),
                      "-r", str(requirements)], f"installing the model's requirements ({model_dir}/requirements.txt)")
                (building / "venv" / _SPEC).write_text(spec)
                (building / "venv").rename(target)
            finally:
                shutil.rmtree(building, ignore_errors=True)
    return target


_SPEC = "arrowscore-requirements.txt"  # what an environment holds; its mtime: when it was last used


def _used(target: Path) -> None:
    try:
        os.utime(target / _SPEC)
    except OSError:  # read-only cache: the time is a hint for prune only
        pass


def env_entries(cache_dir: str | os.PathLike | None = None) -> list:
    """The model environments (``CacheEntry``, uri: "environment <name>"), least recently used first."""
    from ..model.cache import CacheEntry

    root = envs_dir(cache_dir)
    out = []
    for path in root.iterdir() if root.is_dir() else []:
        spec = path / _SPEC
        if not path.name.startswith(".") and spec.is_file():
            size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
            out.append(CacheEntry(str(path), f"environment {path.name}", size, spec.stat().st_mtime))
    return sorted(out, key=lambda e: e.last_used)


def prune_envs(cache_dir: str | os.PathLike | None = None, older_than_days: float | None = None) -> list:
    """Remove the environments not used for ``older_than_days`` (all when None), each renamed out of sight
    first; returns them."""
    import time
    import uuid

    removed = []
    for entry in env_entries(cache_dir):
        if older_than_days is not None and time.time() - entry.last_used < older_than_days * 86400:
            continue
        path = Path(entry.path)
        doomed = path.with_name(f".prune-{uuid.uuid4().hex[:8]}-{path.name}")
        try:
            os.rename(path, doomed)
        except OSError:
            continue
        shutil.rmtree(doomed, ignore_errors=True)
        removed.append(entry)
    return removed


def env_python(model_uri: str, cache_dir: str | None = None, flavor: str | None = None,
               resolves_again: bool = True) -> str:
    """The Python executable of the model's environment."""
    if not model_uri:
        raise ConfigError("--env-manager uv needs the model's URI")
    return str(create_env(model_uri, cache_dir, flavor, resolves_again) / "bin" / "python")
