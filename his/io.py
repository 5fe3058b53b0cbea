"""Files and directories: atomic writes (a temporary name in the same directory, renamed into place), one
writer per output directory (`exclusive_dir`), and InputError, the one-line failure of a path that cannot be
used.

A write that fails (a full disk, a quota) raises OSError naming the file it was writing, and leaves neither
the temporary file nor any change to the file of that name: what was there before stays."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

LOCK_NAME = ".lock"
# atomic_path's temporary names: .NAME.PID.tmp
TEMPORARY = re.compile(r"^\..+\.\d+\.tmp$")


class InputError(Exception):
    """A file or directory a command was given that cannot be used (missing, corrupt, locked, unwritable); the
    message is one line naming it and the reason."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed to `path`, on error removed. An OSError
    that names no file (a write into a full disk) is raised again naming `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        if e.filename is None or e.filename == str(tmp):
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> None:
    """`data` as the file `path`, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """torch.save(obj) as the file `path`, atomically. Serialised in memory first: torch.save into a full disk
    fails with a RuntimeError that names neither the file nor the reason."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getbuffer())


def os_error_line(e: OSError) -> str:
    """An OSError as `FILE: reason`, one line."""
    reason = e.strerror or (str(e).splitlines() or [type(e).__name__])[0]
    return f"{e.filename}: {reason}" if e.filename else reason


def make_dir(path: str | os.PathLike) -> Path:
    """`path` created (with its parents) and checked writable, else InputError naming it: found before any work,
    not after it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{path}: cannot create the directory ({e.strerror or e})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputError(f"{path}: the directory is not writable")
    return path


def holder_info(what: str) -> dict[str, Any]:
    """Who this process is, as a lock (or a launcher's record) names it: what, host, pid, start time, command."""
    return {"what": what, "host": socket.gethostname(), "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv)}


def describe_holder(holder: dict[str, Any]) -> str:
    """'his.train (pid 42 on n1, started 2026-...: python -m his.train ...)' from holder_info's dict."""
    try:
        return f"{holder['what']} (pid {holder['pid']} on {holder['host']}, started {holder['started']}: " \
               f"{holder['command']})"
    except (KeyError, TypeError):
        return "another process (it has not said who yet)"


def _describe_holder(lock: Path) -> str:
    try:
        return describe_holder(json.loads(lock.read_text()))
    except (OSError, ValueError):
        return "another process (it has not said who yet)"


def remove_temporaries(directory: Path) -> list[Path]:
    """Delete atomic_path's temporary files (.NAME.PID.tmp) directly in `directory`: left by a killed writer.
    Call only while holding the directory's lock, so no live writer's file goes."""
    removed = []
    if directory.is_dir():
        for p in directory.iterdir():
            if TEMPORARY.match(p.name) and p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def _lock(lock: Path, path: Path, what: str) -> int:
    """An open descriptor of `lock`, exclusively flock-ed, holding our holder info; InputError if it cannot be."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise InputError(f"{path} is in use by {_describe_holder(lock)}; one writer per directory "
                                 f"(lock {lock})") from None
            raise InputError(f"{path}: this filesystem does not support file locks (flock: {e.strerror or e}); "
                             "mount it with flock, or set HIS_LOCK=off to run unguarded") from None
        try:  # the holder before us may have removed the file between our open and our lock: lock the new one
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            try:
                os.ftruncate(fd, 0)
                os.write(fd, (json.dumps(holder_info(what)) + "\n").encode())
            except OSError as e:  # a full disk: say which file
                os.close(fd)
                raise OSError(e.errno, e.strerror, str(lock)) from None
            return fd
        os.close(fd)


@contextlib.contextmanager
def exclusive_dir(path: str | os.PathLike, what: str, temp_dirs: Sequence[str] = ("",)) -> Iterator[Path]:
    """Hold `path` (created if needed) as its one writer, `what` (a command or stage name): an exclusive flock
    on PATH/.lock, which names the holder (what, host, pid, start time, command) and is removed on release.
    A second writer gets InputError naming the holder. Once held, the temporary files a killed writer left in
    PATH/`temp_dirs` (relative; "" is PATH itself) are removed.

    The kernel drops the lock when its holder dies (a requeued job on the same directory goes on). Not
    re-entrant: a process holding PATH that asks again is refused too. HIS_LOCK=off skips locking, for
    filesystems without flock. A directory made here and left empty (the run failed before writing) is
    removed again.
    """
    created = not Path(path).exists()
    path = make_dir(path)
    lock = path / LOCK_NAME
    fd = None
    try:
        if os.environ.get("HIS_LOCK", "") != "off":
            fd = _lock(lock, path, what)
        for sub in temp_dirs:
            remove_temporaries(path / sub)
        yield path
    finally:
        if fd is not None:
            lock.unlink(missing_ok=True)  # while still held: a waiting opener then sees a new file (checked above)
            os.close(fd)
        if created:
            with contextlib.suppress(OSError):  # not empty: the run wrote something, which stays
                path.rmdir()
