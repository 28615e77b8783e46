"""The data folder: private to the service's user, and owned by one server at a time.

The folder holds the database (names and numbers encrypted, password hashes, the audit log),
its WAL and shared-memory files, usually the key, and the lock. ``make_private`` creates it
0700 and tightens what an older version or a careless copy left readable (files 0600); new
files are created 0600 (SQLite gives its -wal and -shm files the database file's mode).

``ServerLock`` is an exclusive ``flock`` on ``server.lock`` held for a server's whole life: a
second server on the same folder would keep its own rooms in memory and split every session
between the two. The kernel drops the lock when its holder dies, so a crash leaves nothing
stale; the file itself is never deleted (that would race with the next holder). The CLI's
room and user commands do not take it: they are meant to run beside the server.
"""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path
from typing import Self

from telehealth.schema import StoreError

DATABASE_NAME = "telehealth.sqlite3"  # and its -wal, -shm
LOCK_NAME = "server.lock"
FOLDER_MODE = 0o700
FILE_MODE = 0o600


class DataDirBusyError(StoreError):
    pass


def make_private(data_dir: Path) -> None:
    """Create ``data_dir`` 0700, or make it so, with the database's files and the lock 0600.

    Older versions created the database 0644. Not other files: a folder given by mistake may
    hold someone else's, and a key file found readable is refused, not quietly fixed (see
    telehealth.crypto): someone may have copied it.
    """
    data_dir.mkdir(parents=True, exist_ok=True, mode=FOLDER_MODE)
    _tighten(data_dir, FOLDER_MODE)
    for entry in data_dir.iterdir():
        ours = entry.name.startswith(DATABASE_NAME) or entry.name == LOCK_NAME
        if ours and entry.is_file() and not entry.is_symlink():
            _tighten(entry, FILE_MODE)


def create_private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 if it is missing, whatever the umask."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE))


def sync(path: Path) -> None:
    """fsync a file or a folder: a rename is durable once its folder is synced."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tighten(path: Path, mode: int) -> None:
    current = stat.S_IMODE(path.stat().st_mode)
    if current & ~mode:
        try:
            os.chmod(path, current & mode)
        except PermissionError:
            raise StoreError(
                f"{path} is readable by other users and belongs to another user, so telehealth "
                f"cannot make it private: chown it to the service's user, or chmod it {mode:o}"
            ) from None


class ServerLock:
    """Held by a running server on its data folder; ``acquire`` refuses if another holds it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._fd: int | None = None

    def acquire(self, advice: str = "stop it first, or give this server its own --data-dir") -> Self:
        make_private(self.data_dir)
        fd = os.open(self.data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirBusyError(
                f"another telehealth server is running on the data folder {self.data_dir}: {advice}"
            ) from None
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Self:
        return self if self._fd is not None else self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
