"""One job at a time on a path it writes: the output directory, the dead-letter file.

A job holds the path's lock from before it touches anything there until its commit or abort; only the
holder removes staging left beside the path, so a live job's staging is never taken for a killed one's.

- Local disks: ``flock`` on a hidden sibling ``.<name>.arrowscore.lock`` holding the owner (job, host,
  pid, start). The kernel drops the lock when its process dies, however it dies, so a lock is never
  stale and a killed job's staging is recognised at once.
- Object stores (no lock primitive in pyarrow.fs): an owner file ``<path>/_temporary/<job>/_owner.json``
  rewritten every HEARTBEAT_S seconds. A job writes its owner file, then lists the others: any other
  owner that beat within STALE_S makes it back off (two jobs starting together may both back off, never
  both go on); an owner silent for longer is a dead job, whose staging is removed.

>>> import tempfile
>>> out = tempfile.mkdtemp() + "/out"
>>> first, second = PathLock(out, job="a"), PathLock(out, job="b")
>>> first.acquire()
>>> try:
...     second.acquire()
... except Exception as exc:
...     print("in use by job a (pid" in str(exc))
True
>>> first.release(); second.acquire(); second.release()
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import posixpath
import shutil
import socket
import threading
import time

import pyarrow.fs as pafs

from engine.errors import ConnectorError

from .files import filesystem_for, is_local, staging_name

log = logging.getLogger("arrowscore.lock")

__all__ = ["PathLock", "HEARTBEAT_S", "STALE_S"]

HEARTBEAT_S = 30.0
STALE_S = 300.0
OWNER = "_owner.json"


def _owner(job: str) -> dict:
    return {"job": job, "host": socket.gethostname(), "pid": os.getpid(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _describe(owner: dict | None) -> str:
    if not owner:
        return "another job"
    return f"job {owner.get('job')} (pid {owner.get('pid')} on {owner.get('host')}, since {owner.get('started')})"


class PathLock:
    """Held by one job while it writes ``uri`` (a directory or a file); see the module doc."""

    def __init__(self, uri: str, filesystem: pafs.FileSystem | None = None, job: str = "", what: str = "output"):
        self.uri, self.job, self.what = os.fspath(uri), job, what
        self.fs, self.path = filesystem_for(self.uri, filesystem)
        self.path = self.path.rstrip("/")
        if is_local(self.fs):  # a symlink names the same output: one lock
            self.path = os.path.realpath(self.path)
        self._fd: int | None = None
        self._file: str | None = None
        self._beat: threading.Event | None = None
        self._beating: threading.Thread | None = None

    @property
    def local(self) -> bool:
        return is_local(self.fs)

    def acquire(self) -> None:
        """Take the lock, or raise ConnectorError naming the job that holds it."""
        if self.local:
            self._acquire_local()
        else:
            self._acquire_remote()

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.unlink(self._file)  # while still holding it: the next job creates a fresh one
            except FileNotFoundError:
                pass
            os.close(self._fd)
            self._fd = None
        if self._beat is not None:
            self._beat.set()
            self._beating.join(timeout=60)  # a beat in flight must not rewrite the owner after it is gone
            self._beat = self._beating = None
            try:
                self.fs.delete_file(self._file)
            except OSError:
                pass

    def clean_stale(self) -> list[str]:
        """Remove what killed jobs staged beside a local path (only the lock's holder may: any staging
        there is a dead job's); an output a killed job had moved aside to swap in its own comes back
        when nothing took its place. Returns what was removed or restored."""
        if self._fd is None:
            raise RuntimeError("clean_stale needs the lock held")
        parent, name = os.path.split(self.path)
        prefix = staging_name(name, "")
        done = []
        for entry in sorted(e for e in os.listdir(parent) if e.startswith(prefix)):
            stale = os.path.join(parent, entry)
            if entry.startswith(prefix + "old-") and not os.path.lexists(self.path):
                os.rename(stale, self.path)
                log.warning("restored %s, which a killed job had moved aside", self.path)
            elif os.path.isdir(stale) and not os.path.islink(stale):
                shutil.rmtree(stale, ignore_errors=True)
            else:
                os.unlink(stale)
            done.append(stale)
        return done

    def __enter__(self) -> "PathLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _busy(self, owner: dict | None) -> ConnectorError:
        return ConnectorError(f"{self.what} {self.uri!r} is in use by {_describe(owner)}; wait for that job to "
                              "finish, or write somewhere else")

    # ---- local disks: flock ------------------------------------------------------------------
    def _acquire_local(self) -> None:
        import fcntl

        parent, name = os.path.split(self.path)
        os.makedirs(parent, exist_ok=True)
        self._file = os.path.join(parent, f".{name}.arrowscore.lock")
        while True:
            fd = os.open(self._file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_json(lambda: os.pread(fd, 4096, 0))
                os.close(fd)
                raise self._busy(owner) from None
            try:  # the holder before us may have removed the file between our open and our flock
                current = os.stat(self._file).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_owner(self.job)).encode(), 0)
        self._fd = fd

    # ---- object stores: owner files with a heartbeat -----------------------------------------
    def _acquire_remote(self) -> None:
        base = f"{self.path}/_temporary"
        self._file = f"{base}/{self.job}/{OWNER}"
        self._write_owner()
        others = [i for i in self.fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
                  if i.type == pafs.FileType.Directory and posixpath.basename(i.path) != self.job]
        for info in others:
            owner = _read_json(lambda: self._read(f"{info.path}/{OWNER}"))
            if owner and time.time() - owner.get("beat", 0) < STALE_S:
                self.fs.delete_file(self._file)
                raise self._busy(owner)
        for info in others:  # dead jobs (or a version without owners): their staging goes
            try:
                self.fs.delete_dir(info.path)
            except OSError:
                pass
        self._beat = threading.Event()
        self._beating = threading.Thread(target=self._heartbeat, args=(self._beat,), name="arrowscore-lock",
                                         daemon=True)
        self._beating.start()

    def _read(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as stream:
            return stream.read()

    def _write_owner(self) -> None:
        with self.fs.open_output_stream(self._file) as out:
            out.write(json.dumps({**_owner(self.job), "beat": time.time()}).encode())

    def _heartbeat(self, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                self._write_owner()
            except OSError:  # a missed beat; the next one may pass
                pass


def _read_json(read) -> dict | None:
    try:
        return json.loads(read() or b"null")
    except (OSError, ValueError):
        return None
