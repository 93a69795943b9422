"""The model cache on disk: one directory per downloaded model content, and a small record beside it.

    <cache_dir>/<key>/            the model's files, as MLflow downloaded them (never changed after)
    <cache_dir>/<key>.json        {"uri": the URI first resolved to it, "key": its content key}; its
                                  mtime is when the entry was last used

The default place is ``$XDG_CACHE_HOME/arrowscore/models`` (``~/.cache/arrowscore/models`` without
it): the platform's convention, read here as Ray and Spark read their own variables; the CLI adds
``--cache-dir`` / ``ARROWSCORE_CACHE_DIR``.

>>> import tempfile
>>> entries(tempfile.mkdtemp())
[]
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

__all__ = ["default_cache_dir", "CacheEntry", "entries", "prune", "record_use"]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "arrowscore" / "models"


@dataclass(frozen=True)
class CacheEntry:
    """One cached model: where it is, the URI it was downloaded for, its size and when it was last used."""

    path: str
    uri: str | None
    bytes: int
    last_used: float  # seconds since the epoch


def record_use(target: Path, uri: str | None = None, key: str | None = None) -> None:
    """Mark ``target`` as used now; the first time, write what it was downloaded for."""
    record = target.with_name(target.name + ".json")
    try:
        if uri is not None and not record.exists():
            record.write_text(json.dumps({"uri": uri, "key": key}))
        os.utime(record)
    except OSError:  # a read-only cache still serves models; it only forgets when they were used
        pass


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def entries(cache_dir: str | os.PathLike | None = None) -> list[CacheEntry]:
    """The cached models, least recently used first."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    if not root.is_dir():
        return []
    out = []
    for path in root.iterdir():
        if path.name.startswith(".") or not (path / "MLmodel").is_file():
            continue  # a download in progress, or not an entry
        record = path.with_name(path.name + ".json")
        uri, used = None, path.stat().st_mtime
        if record.is_file():
            try:
                uri = json.loads(record.read_text()).get("uri")
            except ValueError:
                pass
            used = record.stat().st_mtime
        out.append(CacheEntry(str(path), uri, _size(path), used))
    return sorted(out, key=lambda e: e.last_used)


def prune(cache_dir: str | os.PathLike | None = None, older_than_days: float | None = None) -> list[CacheEntry]:
    """Remove the entries not used for ``older_than_days`` (every entry when None); returns them. An entry
    is renamed out of sight first, so a process resolving it meanwhile finds it whole or not at all."""
    now = time.time()
    removed = []
    for entry in entries(cache_dir):
        if older_than_days is not None and now - entry.last_used < older_than_days * 86400:
            continue
        path = Path(entry.path)
        doomed = path.with_name(f".prune-{uuid.uuid4().hex[:8]}-{path.name}")
        try:
            os.rename(path, doomed)
        except OSError:  # gone already, or another prune took it
            continue
        shutil.rmtree(doomed, ignore_errors=True)
        path.with_name(path.name + ".json").unlink(missing_ok=True)
        removed.append(entry)
    return removed
