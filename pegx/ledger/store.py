"""The only module that imports LevelDB (DESIGN §3, STYLE §2).

LevelDB comes from ``plyvel`` on Python 3.11-3.12 and from its maintained fork ``plyvel-next``
(imported as ``plyvel_next``, same API) on 3.13 and later, where plyvel ships no wheels; the
choice matches the environment markers in pyproject.toml, so an install needs wheels only.

Durability is bound once here: every batch is written with ``transaction=True, sync=True``, so
a batch whose body raises writes nothing, and a batch that returns is on disk. One handle per
process and an ``fcntl.flock`` on ``<path>.lock`` keep a second process (or a second open in
this one) out: plyvel silently drops the first handle's lock after a failed second open.

Blocks are written without compression: most of the ledger's bytes are fraction vectors
(int64 steps), which snappy shrinks by only ~30 % while making their writes 4x and their
reads 5x slower (measured on 30,000 vectors: 31 vs 155 MB/s, 89 vs 17 us per read).
Blocks compressed by older releases are still read.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Self

if sys.version_info >= (3, 13):
    import plyvel_next as plyvel
else:
    import plyvel

from pegx.ledger import schema

log = logging.getLogger(__name__)

FORMAT_VERSION = 3  # what this code writes; pegx.ledger.migrate upgrades what it reads
# format 1: the history table of withdraw statuses (before one batch record); format 2: no
# per-supply input tables and no checkpoint files (every row and balance in LevelDB)
READABLE = (1, 2, 3)
FILE_GLOBS = ("rows-*.pxm", "view-*.pxm", "*.pxm.tmp")  # checkpoint files (pegx.ledger.arrays)

_open_paths: set[str] = set()
_open_guard = threading.Lock()


class StoreError(RuntimeError):
    """The ledger cannot be opened or written; the message says what to do."""


class LedgerLocked(StoreError):
    """Another process (or handle) holds the ledger."""


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file that guards the ledger at ``path``."""
    path = Path(path).resolve()
    return path.with_name(path.name + ".lock")


def in_use(path: str | os.PathLike) -> bool:
    """Does a process (a running daemon, or a tool) hold the ledger at ``path``? A probe of its
    flock, released at once; False for a ledger never opened."""
    lock = lock_path(path)
    if not lock.exists():
        return False
    with open(lock, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


class Store:
    """A LevelDB ledger at ``path`` with synced atomic batches and a state record."""

    def __init__(self, path: str | os.PathLike, *, create: bool = True, read_only: bool = False):
        self.path = Path(path).resolve()
        self.read_only = read_only
        self._lockfile = None
        self._files_mu = threading.Lock()  # checkpoint files: a backup pins what it copies
        self._pinned: dict[str, int] = {}
        self._doomed: set[str] = set()  # obsolete files a backup still copies
        real = str(self.path)
        with _open_guard:
            if real in _open_paths:
                raise LedgerLocked(f"ledger {real} is already open in this process")
            if not read_only:
                self._take_lock(create)
            try:
                self.db = plyvel.DB(
                    real, create_if_missing=create and not read_only, paranoid_checks=True,
                    compression=None,  # see the module docstring
                )
            except plyvel.Error as exc:
                self._release_lock()
                raise StoreError(f"cannot open ledger {real}: {exc}") from exc
            _open_paths.add(real)
        try:
            self._check_format()
        except StoreError:
            self.close()
            raise

    # -- locking ------------------------------------------------------------------------------
    def _take_lock(self, create: bool) -> None:
        lock = lock_path(self.path)
        if create:
            lock.parent.mkdir(parents=True, exist_ok=True)
        try:
            fh = open(lock, "a+")  # noqa: SIM115 (held open: it carries the flock)
        except OSError as exc:
            raise StoreError(f"cannot create lock file {lock}: {exc}") from exc
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise LedgerLocked(
                f"ledger {self.path} is in use by another pegx process "
                f"(lock {lock}); stop it first (pegx stop) or use another --datadir"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._lockfile = fh

    def _release_lock(self) -> None:
        if self._lockfile is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lockfile, fcntl.LOCK_UN)
            self._lockfile.close()
            self._lockfile = None

    # -- state record ---------------------------------------------------------------------------
    def _check_format(self) -> None:
        state = self.state()
        if state is None:
            return
        version = state.get("format")
        if version not in READABLE:
            raise StoreError(
                f"ledger {self.path} has format version {version!r}; this pegx reads versions "
                f"{', '.join(map(str, READABLE))}. Run the pegx release that wrote it, or restore "
                f"a backup made by this version (pegx restore), and do not delete the ledger: it "
                f"holds balances."
            )

    def state(self) -> dict | None:
        """The state record (format, seq of the last checkpointed op), or None for a new ledger."""
        raw = self.db.get(schema.STATE)
        return None if raw is None else json.loads(raw)

    @staticmethod
    def state_value(seq: int, files: dict | None = None) -> bytes:
        """The encoded state record for a checkpoint containing every op up to ``seq``;
        ``files``: the checkpoint files it names (pegx.ledger.matrix)."""
        rec = {"format": FORMAT_VERSION, "seq": seq, "written": int(time.time())}
        if files:
            rec["files"] = files
        return json.dumps(rec).encode()

    # -- checkpoint files (beside LevelDB's own, in its directory: LevelDB leaves names it did
    # not make alone, and a copy of the directory is a copy of the whole ledger) ---------------
    def file_path(self, name: str) -> Path:
        """Where checkpoint file ``name`` lives."""
        return self.path / name

    @staticmethod
    def named_files(state: dict | None) -> list[str]:
        """The checkpoint files a state record names."""
        files = (state or {}).get("files") or {}
        return [f["file"] for f in files.get("rows", [])] + (
            [files["views"]["file"]] if files.get("views") else [])

    def remove_files(self, names: list[str]) -> None:
        """Delete obsolete checkpoint files (one a backup is copying: once it is done)."""
        with self._files_mu:
            for name in names:
                if self._pinned.get(name):
                    self._doomed.add(name)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        self.file_path(name).unlink()

    def stray_files(self) -> list[str]:
        """Checkpoint files in the directory that the state record does not name (left by a
        checkpoint a crash cut short, or by one whose deletion it cut short)."""
        keep = set(self.named_files(self.state()))
        return sorted({p.name for g in FILE_GLOBS for p in self.path.glob(g)} - keep)

    def _pin(self, names: list[str], up: int) -> None:
        with self._files_mu:
            for name in names:
                self._pinned[name] = self._pinned.get(name, 0) + up
                if not self._pinned[name]:
                    del self._pinned[name]
                    if name in self._doomed:
                        self._doomed.discard(name)
                        with contextlib.suppress(FileNotFoundError):
                            self.file_path(name).unlink()

    def scan_outside(self, prefix: bytes, skip: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) under ``prefix`` but those under ``skip`` (a longer prefix),
        in key order, without reading the skipped values."""
        yield from self.db.iterator(start=prefix, stop=skip)
        yield from self.db.iterator(start=_after(skip), stop=_after(prefix))

    # -- reads and writes -----------------------------------------------------------------------
    def get(self, key: bytes) -> bytes | None:
        """One value, or None."""
        return self.db.get(key)

    def scan(self, prefix: bytes, *, start: bytes | None = None,
             snapshot=None) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) under ``prefix`` (from key ``start`` on, if given), in key order."""
        src = snapshot if snapshot is not None else self.db
        if start is None:
            return src.iterator(prefix=prefix)
        # plyvel takes prefix or start/stop, not both: stop at the first key past the prefix
        stop = prefix[:-1] + bytes([prefix[-1] + 1])
        return src.iterator(start=max(start, prefix), stop=stop)

    @contextlib.contextmanager
    def batch(self):
        """An all-or-nothing, fsynced write batch: nothing is written if the body raises."""
        if self.read_only:
            raise StoreError("ledger opened read-only")
        with self.db.write_batch(transaction=True, sync=True) as wb:
            yield wb

    def snapshot(self):
        """A consistent read view (plyvel snapshot); release it with ``.close()``."""
        return self.db.snapshot()

    def approximate_size(self) -> int:
        """Bytes the ledger takes on disk."""
        return sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())

    def copy_to(self, dest: str | os.PathLike, progress=None) -> int:
        """Write a consistent copy of the ledger (from a snapshot) to a new LevelDB at ``dest``.

        ``progress(n_bytes)`` is called as records are copied. Returns the number of records.
        """
        dest = Path(dest)
        if dest.exists() and any(dest.iterdir()):
            raise StoreError(f"backup destination {dest} is not empty")
        with self._files_mu:  # the snapshot and the pin of the files it names: no deletion
            snap = self.db.snapshot()  # between them (remove_files takes the same lock)
            raw = snap.get(schema.STATE)
            files = self.named_files(None if raw is None else json.loads(raw))
            for name in files:
                self._pinned[name] = self._pinned.get(name, 0) + 1
        out = plyvel.DB(str(dest), create_if_missing=True, error_if_exists=False)
        try:
            count = _copy_records(snap, out, progress)
            self._link_files(files, dest, progress)
        except BaseException:
            out.close()
            shutil.rmtree(dest, ignore_errors=True)
            raise
        finally:
            snap.close()
            self._pin(files, -1)
        out.close()
        return count

    def _link_files(self, files: list[str], dest: Path, progress) -> None:
        """The checkpoint files a backup's snapshot names, into ``dest``."""
        for name in files:  # never changed once named: a link is a copy
            try:
                os.link(self.file_path(name), dest / name)
            except OSError:
                shutil.copyfile(self.file_path(name), dest / name)
            if progress:
                progress((dest / name).stat().st_size)

    def close(self) -> None:
        """Close the handle and release the lock. Safe to call twice."""
        db = getattr(self, "db", None)
        if db is not None and not db.closed:
            db.close()
        with _open_guard:
            _open_paths.discard(str(self.path))
        self._release_lock()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _after(prefix: bytes) -> bytes:
    """The first key after every key that starts with ``prefix``."""
    head = prefix.rstrip(b"\xff")
    return head[:-1] + bytes([head[-1] + 1]) if head else b""


def _copy_records(snap, out, progress) -> int:
    """Every record of snapshot ``snap`` into LevelDB ``out``, in batches of ~16 MB; returns
    how many (``progress(n_bytes)`` after each batch)."""
    count = size = 0
    wb = out.write_batch(transaction=True)
    for k, v in snap.iterator():
        wb.put(k, v)
        count += 1
        size += len(k) + len(v)
        if size > 16 << 20:
            wb.write()
            if progress:
                progress(size)
            wb = out.write_batch(transaction=True)
            size = 0
    wb.write()
    if progress:
        progress(size)
    return count
