"""Deployment: a container image for ``arrowscore serve``, and the model's own environment.

    arrowscore generate-dockerfile MODEL_URI -d DIR      the build context (dockerfile.py)
    arrowscore build-docker MODEL_URI -t NAME             ... built by docker, podman or buildah (builder.py)
    arrowscore env MODEL_URI                              a uv virtualenv with the model's requirements (env.py)
    arrowscore serve|score|predict|run ... --env-manager uv   the command, run inside that environment

What an image or environment installs is decided once, in ``packages.install_plan``: arrowscore (the
running code, as a wheel) with the extras the model's flavor needs, the model's pinned requirements,
and arrowscore's own dependencies at the versions running here.
"""

from .builder import build_docker
from .dockerfile import DockerOptions, generate_dockerfile
from .env import create_env, env_python
from .packages import install_plan

__all__ = ["DockerOptions", "generate_dockerfile", "build_docker", "create_env", "env_python", "install_plan"]
