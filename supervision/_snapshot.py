"""Durable state: one msgpack snapshot per file, replaced atomically.

An actor loads its state in ``on_start`` and saves it before it answers, so a restart
and a cold start run the same code::

    store = SnapshotStore("/var/lib/app/names.state", version=1)
    state = store.load() or {"available": [], "checked_out": {}}
    state["available"].append("Furiosa")
    store.save(state)  # durable when it returns

On disk a snapshot is one msgpack map ``{"format": "supervision.snapshot", "version": 1,
"data": ...}``. ``save`` writes a temporary file beside the target, fsyncs it, renames it
over the target and fsyncs the directory, so a reader sees the old or the new snapshot,
never a torn one, whatever moment the writer is killed. A file that is corrupt, or has
another format or version, is moved aside to ``<path>.corrupt-<UTC timestamp>`` and logged
at ERROR; ``load`` then returns None, so an actor never crash-loops on its state.

Symlinks: a symlink (or anything but a regular file) at ``path`` is refused by both
``load`` and ``save`` with `SnapshotError`; nothing is read or written through it, and it
is not moved aside either, since the store only renames or removes what it could have
written itself. Fix the path and restart.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import stat
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import msgpack
from loguru import logger

__all__ = ["SnapshotError", "SnapshotStore", "make_private_directory", "quarantine_file"]

FORMAT = "supervision.snapshot"

_FILE_MODE = 0o600
_DIRECTORY_MODE = 0o700
_OPEN_FLAGS = os.O_CLOEXEC | os.O_NOFOLLOW


class SnapshotError(OSError):
    """The snapshot path cannot be used safely: a symlink or not a regular file.

    ``filename`` is the offending path. Corrupt contents are not an error: `SnapshotStore.load`
    moves them aside and returns None.
    """


def _utc_timestamp() -> str:
    """The quarantine suffix: real wall-clock UTC, e.g. ``20240131T235959.123456Z``."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


class SnapshotStore:
    """Loads and atomically replaces one actor's state file.

    ``version`` is the schema of ``data``: a file written with another version is treated
    like a corrupt one (moved aside, ``load`` returns None), so bump it when the shape
    changes and the actor starts fresh instead of misreading old state.

    One store object is for one thread at a time (an actor's own thread). Several stores
    on the same path, in this or other processes, never corrupt the file or each other's
    temporary files; the last ``save`` wins.
    """

    def __init__(self, path: str | os.PathLike[str], *, version: int) -> None:
        if not isinstance(version, int) or isinstance(version, bool):
            raise TypeError(f"snapshot version must be an int, not {version!r}")
        self.path: Path = Path(path).absolute()
        if not self.path.name:
            raise ValueError(f"snapshot path names no file: {os.fspath(path)!r}")
        self.version: int = version
        # Temporaries sit beside the target and start with its name, so a cleanup finds
        # exactly this store's leftovers and the rename never crosses a filesystem.
        self._temporary_prefix = f"{self.path.name}.tmp-"

    def __repr__(self) -> str:
        return f"SnapshotStore({str(self.path)!r}, version={self.version})"

    def load(self) -> Any | None:
        """The data of the last snapshot saved, or None if there is none or it was unusable.

        Raises `SnapshotError` if ``path`` is a symlink or not a regular file.
        """
        self._remove_stale_temporaries()
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | _OPEN_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EMLINK):  # EMLINK: O_NOFOLLOW on BSDs
                raise self._symlink_error() from exc
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise self._not_regular_error()
            with open(fd, "rb", closefd=False) as file:
                content = file.read()
        finally:
            os.close(fd)
        try:
            return self._decode(content)
        except ValueError as exc:
            self._quarantine(reason=str(exc))
            return None

    def save(self, obj: Any) -> None:
        """Replace the snapshot with ``obj``, durably, before returning.

        Raises TypeError if msgpack cannot store ``obj`` (or could not load it back, e.g. a
        tuple used as a map key); the old snapshot is then untouched. Raises `SnapshotError`
        if ``path`` is a symlink or not a regular file.
        """
        content = self._encode(obj)
        self._make_directory(self.path.parent)
        directory_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self._check_target(directory_fd)
            self._remove_stale_temporaries(directory_fd)
            self._replace(directory_fd, content)
            # fsync the directory, or the rename may not survive a power cut.
            os.fsync(directory_fd)
        finally:
            os.close(directory_fd)

    # -- encoding -------------------------------------------------------------------------

    def _encode(self, obj: Any) -> bytes:
        envelope = {"format": FORMAT, "version": self.version, "data": obj}
        try:
            content: bytes = msgpack.packb(envelope, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as exc:
            raise TypeError(f"cannot save snapshot {self.path}: msgpack cannot pack it ({exc})") from exc
        # A value msgpack packs but cannot unpack (a tuple as a map key) would be saved
        # fine and then quarantined by the next load: refuse it now, while the caller can
        # still react and the old snapshot is intact.
        try:
            self._decode(content)
        except ValueError as exc:
            raise TypeError(f"cannot save snapshot {self.path}: it would not load back ({exc})") from exc
        return content

    def _decode(self, content: bytes) -> Any:
        """The ``data`` of a snapshot file's bytes; ValueError saying why they are unusable."""
        if not content:
            raise ValueError("empty file")
        try:
            envelope = msgpack.unpackb(content, raw=False, strict_map_key=False)
        except Exception as exc:  # msgpack raises ValueError, TypeError and others
            raise ValueError(f"not msgpack: {exc or type(exc).__name__}") from exc
        if not isinstance(envelope, dict):
            raise ValueError(f"not a msgpack map but {type(envelope).__name__}")
        if envelope.get("format") != FORMAT:
            raise ValueError(f"format {envelope.get('format')!r}, expected {FORMAT!r}")
        version = envelope.get("version")
        if type(version) is not int or version != self.version:
            raise ValueError(f"version {version!r}, expected {self.version}")
        if "data" not in envelope:
            raise ValueError("no 'data' key")
        return envelope["data"]

    # -- files ----------------------------------------------------------------------------

    def _replace(self, directory_fd: int, content: bytes) -> None:
        name, fd = self._create_temporary(directory_fd)
        try:
            with open(fd, "wb", closefd=False) as file:
                file.write(content)
                file.flush()
            os.fsync(fd)
            os.rename(name, self.path.name, src_dir_fd=directory_fd, dst_dir_fd=directory_fd)
        except BaseException:
            _unlink_quietly(name, directory_fd)
            raise
        finally:
            os.close(fd)  # only now release the lock: the rename is done

    def _create_temporary(self, directory_fd: int) -> tuple[str, int]:
        """A new locked temporary file: (name, fd). The lock marks it as being written."""
        while True:
            name = f"{self._temporary_prefix}{os.getpid()}-{secrets.token_hex(8)}"
            fd = os.open(
                name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS,
                _FILE_MODE,
                dir_fd=directory_fd,
            )
            os.fchmod(fd, _FILE_MODE)  # the umask may have taken bits we want exact
            fcntl.flock(fd, fcntl.LOCK_EX)
            # Another store's cleanup may have locked and removed the file between our
            # create and our lock; then the name is gone and we start over.
            try:
                is_ours = os.stat(name, dir_fd=directory_fd, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                is_ours = False
            if is_ours:
                return name, fd
            os.close(fd)

    def _remove_stale_temporaries(self, directory_fd: int | None = None) -> None:
        """Remove temporaries no live writer holds: the kernel drops a killed writer's lock."""
        owns_fd = directory_fd is None
        if directory_fd is None:
            try:
                directory_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except FileNotFoundError:
                return
        try:
            for name in os.listdir(directory_fd):
                if name.startswith(self._temporary_prefix):
                    self._remove_if_stale(name, directory_fd)
        finally:
            if owns_fd:
                os.close(directory_fd)

    def _remove_if_stale(self, name: str, directory_fd: int) -> None:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | _OPEN_FLAGS, dir_fd=directory_fd)
        except OSError:
            return  # gone already, or not a file we could have written: leave it
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # a live writer is still at it
            # Unlinking by name is safe even if the writer renamed it away meanwhile.
            if _unlink_quietly(name, directory_fd):
                logger.bind(snapshot=str(self.path)).info(
                    "removed stale temporary snapshot {} left by a killed writer", self.path.parent / name
                )
        finally:
            os.close(fd)

    def _quarantine(self, reason: str) -> None:
        quarantine_file(self.path, f"corrupt snapshot ({reason}); starting without it")

    def _check_target(self, directory_fd: int) -> None:
        try:
            mode = os.stat(self.path.name, dir_fd=directory_fd, follow_symlinks=False).st_mode
        except FileNotFoundError:
            return
        if stat.S_ISLNK(mode):
            raise self._symlink_error()
        if not stat.S_ISREG(mode):
            raise self._not_regular_error()

    def _symlink_error(self) -> SnapshotError:
        return SnapshotError(errno.ELOOP, "snapshot path is a symlink; refusing to follow it", str(self.path))

    def _not_regular_error(self) -> SnapshotError:
        return SnapshotError(errno.EINVAL, "snapshot path is not a regular file", str(self.path))

    @staticmethod
    def _make_directory(directory: Path) -> None:
        make_private_directory(directory)


def _unlink_quietly(name: str, directory_fd: int) -> bool:
    """Remove ``name``; False if it was already gone."""
    try:
        os.unlink(name, dir_fd=directory_fd)
    except FileNotFoundError:
        return False
    return True


def make_private_directory(directory: str | os.PathLike[str]) -> None:
    """Create ``directory`` and its missing parents, each 0700 whatever the umask.

    ``os.makedirs(mode=0o700)`` applies the mode to the last level only; the parents
    would get the umask's permissions. Existing directories are left as they are.
    """
    directory = Path(directory)
    if directory.is_dir():
        return
    missing: list[Path] = []
    while not directory.exists() and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        try:
            os.mkdir(path, _DIRECTORY_MODE)
        except FileExistsError:
            continue  # created meanwhile by someone else: not ours to chmod
        os.chmod(path, _DIRECTORY_MODE)  # the umask may have taken bits


def quarantine_file(path: str | os.PathLike[str], reason: str) -> Path:
    """Move `path` aside to ``<path>.corrupt-<UTC time>`` (``-1``, ``-2``... if taken), log ERROR.

    For any state file found unusable, so an actor never crash-loops on it. Returns where
    the file went.
    """
    path = Path(path)
    base = f"{path}.corrupt-{_utc_timestamp()}"
    attempt = 0
    while True:
        target = base if attempt == 0 else f"{base}-{attempt}"
        # link + unlink never replaces an existing quarantined file (rename would).
        try:
            os.link(path, target, follow_symlinks=False)
        except FileExistsError:
            attempt += 1
            continue
        break
    os.unlink(path)
    logger.bind(snapshot=str(path), moved_to=target).error("{}: {}; moved it to {}", path, reason, target)
    return Path(target)
