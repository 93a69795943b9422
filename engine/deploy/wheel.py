"""A wheel of the arrowscore that is running, so an image or environment gets exactly this code.

Built from the installed packages' source files and the installed distribution's metadata, so it
works from an editable checkout and from an installed wheel alike. The bytes depend only on the
files (fixed timestamps, sorted entries), so the same code gives the same wheel and the same hash.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import zipfile
from importlib import metadata
from pathlib import Path

from ..errors import MissingDependency

__all__ = ["build_wheel", "installed", "PACKAGES"]

PACKAGES = ("engine", "flavors", "connectors")
_EPOCH = (1980, 1, 1, 0, 0, 0)


def _files() -> list[tuple[str, bytes]]:
    out = []
    for name in PACKAGES:
        root = Path(importlib.import_module(name).__file__).parent
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo"):
                out.append((f"{name}/{path.relative_to(root).as_posix()}", path.read_bytes()))
    return out


def _record_line(arcname: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{arcname},sha256={digest},{len(data)}"


def installed():
    """The installed arrowscore distribution: a dist-info (from pip or uv) over an egg-info that a
    setuptools build may have left in a checkout on ``sys.path``."""
    found = list(metadata.distributions(name="arrowscore"))
    if not found:
        raise MissingDependency("arrowscore is not installed as a distribution (only imported from a checkout); "
                                "pip install -e . first")
    return next((d for d in found if d.read_text("METADATA")), found[0])


def build_wheel(directory: str | Path) -> Path:
    """Write ``arrowscore-<version>-py3-none-any.whl`` into ``directory``; returns its path."""
    dist = installed()
    version = dist.version
    info = f"arrowscore-{version}.dist-info"
    files = _files()
    files += [
        (f"{info}/METADATA", (dist.read_text("METADATA") or dist.read_text("PKG-INFO") or "").encode()),
        (f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: arrowscore\nRoot-Is-Purelib: true\nTag: py3-none-any\n"),
        (f"{info}/entry_points.txt", (dist.read_text("entry_points.txt") or "").encode()),
        (f"{info}/top_level.txt", "\n".join(PACKAGES).encode() + b"\n"),
    ]
    record = "\n".join(_record_line(a, d) for a, d in files) + f"\n{info}/RECORD,,\n"
    files.append((f"{info}/RECORD", record.encode()))
    path = Path(directory) / f"arrowscore-{version}-py3-none-any.whl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for arcname, data in files:
            entry = zipfile.ZipInfo(arcname, _EPOCH)
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(entry, data)
    return path
