"""Atomic file writes (temp file in the same folder, fsync, rename): a kill never leaves a
truncated file where a good one was expected; stale temp files of dead writers cleaned at the next
write; an exclusive lock file (:class:`FileLock`); regular files only (:func:`open_regular`).
Standard library only.

Temp names carry their writer: ``.<name>.<host>-<pid>-<random>.tmp`` (``<host>``: 8 hex digits of
a hash of the host name). A later write to the same path removes those whose writer was on this
host and no longer runs (:func:`clean_stale_temps`); a temp of a live process, of another host
(a shared filesystem) or in the old unnamed form is never touched.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

_TAG_RE = r"(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)-"
_FILE_TEMP = re.compile(_TAG_RE + r"[A-Za-z0-9_]+\.tmp")
_DIR_TEMP = re.compile(r"tmp-" + _TAG_RE + r"[0-9a-f]+")


def host_id() -> str:
    """8 hex digits naming this host (a hash of its name)."""
    return hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def writer_tag() -> str:
    """``<host>-<pid>``: who writes a temp file or folder (see the module doc)."""
    return f"{host_id()}-{os.getpid()}"


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (a process of another user counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def process_start_id(pid: int) -> str | None:
    """``<boot id>:<start time>`` of process ``pid`` (Linux /proc), else None: with the pid it names
    one process, where a pid alone may be a later process's after a reboot or a wrap-around."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after the command name, which may hold spaces
    return f"{boot}:{fields[19]}"  # field 22 of proc(5): start time in clock ticks since boot


def same_process_alive(pid: int, start_id: str | None) -> bool:
    """Whether the process recorded as ``pid`` (and ``start_id`` when known) still runs."""
    if not pid_alive(pid):
        return False
    now = process_start_id(pid) if start_id else None
    return now is None or now == start_id


def dead_writer(host: str, pid: str | int) -> bool:
    """True only when the writer ran on this host and no process ``pid`` exists any more."""
    return host == host_id() and int(pid) != os.getpid() and not pid_alive(int(pid))


def clean_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temp files (``.<name>.<host>-<pid>-<random>.tmp``) and temp folders
    (``.<name>.tmp-<host>-<pid>-<random>``) that dead writers of ``path`` left beside it.
    Returns what was removed. Never raises (a cleanup must not stop the write)."""
    path = Path(path)
    prefix = f".{path.name}."
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for e in entries:
        if not e.name.startswith(prefix):
            continue
        rest = e.name[len(prefix):]
        m = _FILE_TEMP.fullmatch(rest) or _DIR_TEMP.fullmatch(rest)
        if m is None or not dead_writer(m["host"], m["pid"]):
            continue
        try:
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path)
            else:
                os.unlink(e.path)
            removed.append(Path(e.path))
        except OSError:
            pass
    return removed


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{writer_tag()}-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        # mkstemp creates 0600 (and some writers recreate the file): give it the mode an
        # ordinary open() would, 0666 less the umask.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class GrowingFile:
    """A file written piece by piece by another library (a video writer) under a hidden name beside
    ``path`` with the same suffix (the writer picks the container by it), renamed onto ``path`` by
    :meth:`commit`, or removed by :meth:`discard`: ``path`` never holds a half-written file."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.partial = self.path.with_name(f".{self.path.stem}.{writer_tag()}.partial{self.path.suffix}")

    def commit(self) -> Path:
        with open(self.partial, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(self.partial, self.path)
        return self.path

    def discard(self) -> None:
        self.partial.unlink(missing_ok=True)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make the entries of folder ``path`` (files created or renamed in it) durable. A no-op
    where folders cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a folder; the rename still happened
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def open_regular(path: str | os.PathLike, max_bytes: int | None = None) -> IO[bytes]:
    """``open(path, "rb")`` for a regular file only: a FIFO, a device, a folder, a dangling
    symlink or a symlink loop raise ``OSError`` naming the file (opened with O_NONBLOCK, so a FIFO
    without writer never blocks, then checked with fstat: no window between check and open).
    ``max_bytes``: a larger file is refused the same way."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(exc.errno, f"{path}: symlink loop") from None
        if exc.errno == errno.ENOENT and os.path.islink(path):
            raise OSError(exc.errno, f"{path}: dangling symlink") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a folder" if stat.S_ISDIR(st.st_mode)
                    else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                    else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
            raise OSError(errno.EINVAL, f"{path}: not a regular file ({kind})")
        if max_bytes is not None and st.st_size > max_bytes:
            raise OSError(errno.EFBIG, f"{path}: {st.st_size} bytes, more than the {max_bytes} allowed")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class LockHeld(RuntimeError):
    """Another live process holds a :class:`FileLock`."""


class FileLock:
    """An exclusive lock on ``path`` for a ``with`` block; ``wait=False`` raises :class:`LockHeld`
    at once when another process holds it.

    Where ``fcntl`` exists it is an ``flock`` on the file: taken and released atomically by the
    kernel, released when the holder dies (never stale, whatever the file holds); the holder's pid
    is written into the file for the message only. Elsewhere the pid is written into a temp file
    that is then hard-linked to ``path`` (atomic: the lock file never exists without its pid), and
    a lock whose process is gone is taken over. The file is removed on release.
    """

    def __init__(self, path: str | os.PathLike, wait: bool = False, what: str = "another process"):
        self.path = Path(path)
        self.wait = wait
        self.what = what
        self._fd: int | None = None

    def _held_message(self, pid: int | None) -> str:
        who = f"{self.what} (pid {pid})" if pid else self.what
        return f"{who} holds the lock {self.path}"

    def __enter__(self) -> "FileLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:
            self._link_lock()
            return self
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                raise LockHeld(self._held_message(pid)) from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder removed (or replaced) this file on release: take the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def _link_lock(self) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.{writer_tag()}-", suffix=".tmp",
                                   dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(f"{os.getpid()}\n")
            for _ in range(100):
                try:
                    os.link(tmp, self.path)
                    return
                except FileExistsError:
                    try:
                        pid = int(self.path.read_text().strip())
                    except (OSError, ValueError):
                        pid = None  # cannot happen for a lock made here: linked whole
                    if pid is not None and pid_alive(pid):
                        if not self.wait:
                            raise LockHeld(self._held_message(pid)) from None
                        import time
                        time.sleep(0.2)
                        continue
                    self.path.unlink(missing_ok=True)  # its holder is gone
            raise LockHeld(self._held_message(None))
        finally:
            Path(tmp).unlink(missing_ok=True)

    def __exit__(self, *exc: Any) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
