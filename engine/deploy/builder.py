"""``arrowscore build-docker``: the generated context built by the image builder this machine has.

docker (when its daemon answers), podman, or buildah, in that order or as ``--builder`` says.
podman and buildah build in Docker's image format, which keeps the HEALTHCHECK (OCI's drops it).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..errors import ConfigError, EngineError, MissingDependency
from .dockerfile import DockerOptions, generate_dockerfile

__all__ = ["BUILDERS", "find_builder", "build_command", "build_docker"]

BUILDERS = ("docker", "podman", "buildah")
# [registry[:port]/]name[/name...][:tag], names lowercase (Docker's reference grammar, without digests)
_TAG = re.compile(r"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
                  r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$")


def _docker_answers(path: str) -> bool:
    try:
        return subprocess.run([path, "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def find_builder(wanted: str | None = None) -> tuple[str, str]:
    """(name, executable) of the builder to use; MissingDependency naming them all when none can build."""
    if wanted is not None and wanted not in BUILDERS:
        raise ConfigError(f"--builder {wanted!r} is not one of {', '.join(BUILDERS)}")
    seen = []
    for name in [wanted] if wanted else BUILDERS:
        path = shutil.which(name)
        if path is None:
            seen.append(f"{name}: not installed")
        elif name == "docker" and not _docker_answers(path):
            seen.append("docker: installed, but no daemon answers (`docker info` fails)")
        else:
            return name, path
    raise MissingDependency(f"no image builder can build here ({'; '.join(seen)}); install docker (with its daemon "
                            "running), podman or buildah, or run `arrowscore generate-dockerfile` and build the "
                            "directory elsewhere")


def build_command(name: str, path: str, context: Path, tag: str, build_args: dict[str, str]) -> list[str]:
    args = [a for k, v in build_args.items() for a in ("--build-arg", f"{k}={v}")]
    if name == "buildah":
        return [path, "bud", "--format", "docker", "-t", tag, *args, str(context)]
    fmt = ["--format", "docker"] if name == "podman" else []
    return [path, "build", *fmt, "-t", tag, *args, str(context)]


def build_docker(model_uri: str, tag: str, options: DockerOptions | None = None, cache_dir: str | None = None,
                 builder: str | None = None, build_args: dict[str, str] | None = None) -> str:
    """Build the image for ``model_uri`` as ``tag``; the builder's output goes to this process's."""
    if not _TAG.match(tag or ""):
        raise ConfigError(f"image name {tag!r} is not valid; pass -t NAME[:TAG] (lowercase name parts, e.g. "
                          "registry.example.com/fraud:3)")
    name, path = find_builder(builder)
    with tempfile.TemporaryDirectory(prefix="arrowscore-image-") as tmp:
        context = generate_dockerfile(model_uri, Path(tmp) / "context", options, cache_dir)
        done = subprocess.run(build_command(name, path, context, tag, build_args or {}))
    if done.returncode != 0:
        raise EngineError(f"{name} could not build {tag!r} (exit {done.returncode}; its output is above). If the base "
                          "image could not be pulled, pass --base-image (or --build-arg BASE_IMAGE=...) naming one "
                          "your registry has; `arrowscore generate-dockerfile` writes the same context to look at")
    return tag
