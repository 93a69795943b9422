"""The deployment subcommands (``generate-dockerfile``, ``build-docker``, ``env``, ``ping``) and
``--env-manager``, which runs ``predict``, ``score``, ``serve`` or ``run`` inside the model's environment."""

from __future__ import annotations

import os
import shlex
import sys

from .cliflags import model_arg, pairs

__all__ = ["add_parsers", "add_env_manager", "in_model_env"]

ENV_MANAGERS = ("local", "uv")
IN_MODEL_ENV = "ARROWSCORE_IN_MODEL_ENV"  # set for the command run inside the model's environment: it runs there
PING_HELP = ("GET /ping on the port `serve` listens on, read from the same variables (SAGEMAKER_BIND_TO_PORT, "
             "AIP_HTTP_PORT, ARROWSCORE_PORT; 8080), not from serve's flags: exit 0 on 200, else 1 with the reason")


def _docker_options(args):
    from .deploy import DockerOptions

    return DockerOptions(base_image=args.base_image, pip_packages=tuple(args.pip_package or ()), port=args.port,
                         flavor=args.flavor, model_requirements=args.model_requirements)


def _generate(args) -> int:
    from .deploy import generate_dockerfile

    path = generate_dockerfile(args.model_uri, args.output_directory, _docker_options(args), args.cache_dir)
    print(f"wrote {path}/Dockerfile; build it with: docker build -t NAME {shlex.quote(str(path))}")
    return 0


def _build(args) -> int:
    from .deploy import build_docker

    tag = build_docker(args.model_uri, args.tag, _docker_options(args), args.cache_dir, args.builder,
                       pairs(args.build_arg or [], "--build-arg"))
    print(f"built {tag}; run it with: docker run -p {args.port}:{args.port} {tag}")
    return 0


def _env(args) -> int:
    from .deploy import create_env

    path = create_env(args.model_uri, args.cache_dir, args.flavor)
    print(path / "bin" / "python" if args.python else path)
    return 0


def ping_main(argv: list[str]) -> int:
    """``arrowscore ping``: 0 when the server answers /ping, else 1 with the reason on stderr (never 2,
    which Docker's HEALTHCHECK reserves)."""
    import argparse

    p = argparse.ArgumentParser(prog="arrowscore ping", description=PING_HELP)
    p.add_argument("--timeout-s", type=float, default=4.0, help="how long to wait for the answer (default 4)")
    args = p.parse_args(argv)
    from .errors import EngineError
    from .server import ping

    try:
        if not args.timeout_s > 0:
            raise EngineError(f"--timeout-s must be above 0, got {args.timeout_s}")
        failure = ping(timeout_s=args.timeout_s)
    except EngineError as exc:
        failure = str(exc)
    if failure:
        print(f"arrowscore ping: {failure}", file=sys.stderr)
        return 1
    return 0


def _image_flags(p) -> None:
    model_arg(p)
    p.add_argument("--flavor", help="load with this flavor instead of the native one (decides the extras installed)")
    p.add_argument("--cache-dir", default=os.environ.get("ARROWSCORE_CACHE_DIR"),
                   help="where downloaded models are cached (env ARROWSCORE_CACHE_DIR)")
    p.add_argument("--base-image", help="the image to build on (default: python:<the model's Python>-slim)")
    p.add_argument("--pip-package", action="append", metavar="REQ",
                   help="another package to install, as a requirement line (NAME==VERSION); repeatable")
    p.add_argument("--port", type=int, default=8080, help="the port the image serves on (default 8080)")
    p.add_argument("--model-requirements", choices=("install", "constrain"), default="install",
                   help="install: every line of the model's requirements.txt, as MLflow does (default); constrain: "
                        "they only pin the versions of what the flavor installs (MLflow infers them from the "
                        "logging process, which can bring test or notebook packages along)")


def add_parsers(sub) -> None:
    p = sub.add_parser("generate-dockerfile", help="write a build context (Dockerfile, model, wheel) serving a model")
    _image_flags(p)
    p.add_argument("-d", "--output-directory", required=True, metavar="DIR", help="a new or empty directory")
    p.set_defaults(run=_generate)

    p = sub.add_parser("build-docker", help="build a container image serving a model (docker, podman or buildah)")
    _image_flags(p)
    p.add_argument("-t", "--tag", "-n", "--name", dest="tag", required=True, metavar="NAME[:TAG]",
                   help="the image's name (-n/--name as in mlflow models build-docker)")
    p.add_argument("--builder", choices=("docker", "podman", "buildah"),
                   help="the builder to use (default: docker if its daemon answers, else podman, else buildah)")
    p.add_argument("--build-arg", action="append", metavar="KEY=VALUE",
                   help="passed to the builder, e.g. BASE_IMAGE=registry.example.com/python:3.11-slim; repeatable")
    p.set_defaults(run=_build)

    p = sub.add_parser("env", help="create (or find) the model's own environment: a uv virtualenv with its requirements")
    model_arg(p)
    p.add_argument("--flavor", help="load with this flavor instead of the native one (decides the extras installed)")
    p.add_argument("--cache-dir", default=os.environ.get("ARROWSCORE_CACHE_DIR"),
                   help="where models and environments are cached (env ARROWSCORE_CACHE_DIR)")
    p.add_argument("--python", action="store_true", help="print the environment's python instead of its directory")
    p.set_defaults(run=_env)

    p = sub.add_parser("ping", help="exit 0 when the server this environment describes answers /ping (HEALTHCHECK)",
                       description=PING_HELP)
    p.add_argument("--timeout-s", type=float, default=4.0, help="how long to wait for the answer (default 4)")
    p.set_defaults(run=lambda args: ping_main(["--timeout-s", str(args.timeout_s)]))


def add_env_manager(p) -> None:
    p.add_argument("--env-manager", choices=ENV_MANAGERS, default="local",
                   help="local: this environment (default); uv: a virtualenv with the model's own requirements, "
                        "made once and cached (see `arrowscore env`)")


def _model_of(args) -> tuple[str, str | None]:
    from .errors import ConfigError

    if args.command == "run":
        from .scheduler.jobfile import load_job

        spec = load_job(args.job)
        if spec.runner != "local":
            raise ConfigError(f"--env-manager uv runs the job on this machine; runner {spec.runner!r} uses the "
                              "cluster's environment (Ray's runtime_env, Spark's PYSPARK_PYTHON)")
        return spec.model_path or spec.model, args.cache_dir or spec.options.cache_dir
    if args.command == "serve":
        from .server import model_specs, platform

        specs = model_specs(args.models, platform())
        if len(specs) != 1:
            raise ConfigError("--env-manager uv serves one model (its environment is that model's); start one "
                              "server per model")
        return specs[0][1], args.cache_dir
    if getattr(args, "runner", "local") not in (None, "local"):
        raise ConfigError(f"--env-manager uv runs on this machine; --runner {args.runner} uses the cluster's "
                          "environment (Ray's runtime_env, Spark's PYSPARK_PYTHON)")
    return args.model_uri, args.cache_dir


def _with_model(argv: list[str], uri: str, alone: str, path: str) -> list[str]:
    """argv with the model's URI given alone (a positional, ``-m URI``) as ``alone``, or after ``=``
    (``--model-uri=URI``, ``NAME=URI``) as ``path``."""
    out, done = [], False
    for a in argv:
        if not done and a == uri:
            a, done = alone, True
        elif not done and a.endswith(f"={uri}"):
            a, done = a[: -len(uri)] + path, True
        out.append(a)
    return out


def _without_env_manager(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--env-manager":
            skip = True
        elif not a.startswith("--env-manager="):
            out.append(a)
    return out


def in_model_env(args, argv: list[str]) -> int:
    """Run this command again inside the model's environment (replacing this process)."""
    from .deploy import env_python

    from .deploy.packages import resolve_pinned

    uri, cache_dir = _model_of(args)
    argv = _without_env_manager(argv)
    if args.command != "run":  # the command gets the local copy: resolved once, MLflow not needed inside
        path, _ = resolve_pinned(uri, cache_dir)
        alone = str(path)
        if args.command == "serve":  # keep the name the URI gave the model (its routes, metrics)
            from .server import model_specs, platform

            ((name, _),) = model_specs(args.models, platform())
            alone = f"{name}={path}"
        argv = _with_model(argv, uri, alone, str(path))
    python = env_python(uri, cache_dir, getattr(args, "flavor", None), resolves_again=args.command == "run")
    sys.stdout.flush()
    sys.stderr.flush()
    os.environ[IN_MODEL_ENV] = python
    os.execv(python, [python, "-m", "engine", *argv])
    return 1  # not reached
