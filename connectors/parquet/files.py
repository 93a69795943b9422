"""Where Parquet data lives: local paths, file:// and remote URIs (anything pyarrow.fs or fsspec opens)."""

from __future__ import annotations

import os
import posixpath

import pyarrow as pa
import pyarrow.fs as pafs

from engine.errors import ConfigError

__all__ = ["filesystem_for", "is_local", "hidden", "staging_name", "glob_root"]

GLOB = set("*?[")


def filesystem_for(path: str, filesystem: pafs.FileSystem | None = None) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path, file:// or a remote URI (s3://, gs://, hdfs://, ...)."""
    path = os.fspath(path)
    if filesystem is not None:
        return filesystem, path
    if "://" not in path or path.startswith("file://"):
        local = path[len("file://"):] if path.startswith("file://") else path
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(local))
    base, query = (path.split("?", 1) + [""])[:2]
    try:
        return pafs.FileSystem.from_uri(path)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as arrow_exc:
        try:
            import fsspec
        except ImportError:
            raise ConfigError(f"cannot open {path!r} ({arrow_exc}); for this scheme, pip install fsspec and its "
                              "filesystem package (e.g. gcsfs, adlfs)") from None
        protocol, _, rest = base.partition("://")
        try:
            handler = pafs.FSSpecHandler(fsspec.filesystem(protocol))
        except (ImportError, ValueError) as exc:
            raise ConfigError(f"cannot open {path!r}: {exc}") from None
        return pafs.PyFileSystem(handler), rest


def is_local(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, pafs.LocalFileSystem)


def glob_root(path: str) -> str | None:
    """The directory a glob's matches lie under (None: ``path`` is no glob)."""
    if not GLOB & set(path):
        return None
    return path[: min(path.index(c) for c in GLOB if c in path)].rsplit("/", 1)[0] or "/"


def hidden(path: str, base: str) -> bool:
    """Whether ``path`` lies in or is a hidden entry ('.' or '_' first) under ``base``."""
    base = base.rstrip("/")
    # listed paths start with their base: slicing is 10x cheaper than relpath, which a 10,000-file listing felt
    rel = path[len(base) + 1:] if path.startswith(base + "/") else posixpath.relpath(path, base)
    return any(seg.startswith((".", "_")) for seg in rel.split("/"))


def staging_name(name: str, tag) -> str:
    """The hidden sibling a job stages ``name`` in (clean_stale finds killed jobs' by this prefix)."""
    return f".{name}.arrowscore-{tag}"
