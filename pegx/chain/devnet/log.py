"""The devnet's durable action log: one JSON object per line, each line fsynced.

The devnet chain is a pure function of its parameters and the ordered list of actions applied
to it (mine, send, vote, broadcast, ...), so persisting the actions is enough: a restart
replays them and reaches exactly the same chain. A record is acknowledged only after its line
is on disk. A crash mid-write leaves at most one torn last line; it was never acknowledged, so
loading drops it (and truncates it away). A damaged line anywhere else is corruption and
refuses to load. An append that fails while running (disk full, I/O error) is cut away at once
and raised, so an action that answered an error can never come back at the next start.

The first record is a header holding the chain parameters, so a reopen with different
parameters cannot silently build a different chain on the same history.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path

FORMAT = "pegx-devnet"
VERSION = 1
LOG_NAME = "actions.jsonl"

log = logging.getLogger(__name__)


class DevnetLogError(RuntimeError):
    """The log cannot be used: locked by another process, corrupt, or of another version."""


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (so a rename or a new file in it is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def encode(record: dict) -> bytes:
    """A record as its log line (the bytes a replay and a standby read back)."""
    return json.dumps(record, separators=(",", ":"), sort_keys=True).encode() + b"\n"


class ActionLog:
    """Append-only JSON-lines log under ``directory``, locked for this process while open.

    Appends go straight to the file descriptor (no buffer that could keep a failed line and
    write it with the next one) and end with an fsync. An append that fails (no space, I/O
    error) cuts the file back to the end of the last good line before it raises, so a record
    that was refused can never reappear; if even that cut fails the log refuses every later
    append (``broken``) rather than write after a torn line.
    """

    def __init__(self, directory: str | os.PathLike, header: dict,
                 created: dict | None = None, defaults: dict | None = None) -> None:
        """Open (or create) the log; ``header`` must match a stored header, ``created`` is
        written into the header of a new log only (the devnet's random id), ``defaults`` are
        the header values a log written before that key existed stands for."""
        self._defaults = defaults or {}
        self.directory = Path(directory)
        fresh = not self.directory.exists()
        self.directory.mkdir(parents=True, exist_ok=True)
        if fresh:
            fsync_path(self.directory.parent)
        self.path = self.directory / LOG_NAME
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        self.broken: str | None = None
        # called with the new end offset after every durable append (pegx.replication ships
        # the new lines to a standby); set by the owner, None when nothing listens
        self.on_append = None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.close()
            raise DevnetLogError(
                f"devnet data {self.directory} is in use by another pegx process"
            ) from None
        try:
            self.records = self._load()
            if not self.records:
                self.header = {"a": "header", "format": FORMAT, "version": VERSION,
                               **header, **(created or {})}
                self.append(self.header)
                self.records = []
                fsync_path(self.directory)
            else:
                self.header = self.records.pop(0)
                self._check_header(self.header, header)
        except Exception:
            self.close()
            raise

    def _load(self) -> list[dict]:
        chunks, offset = [], 0
        while chunk := os.pread(self._fd, 1 << 20, offset):
            chunks.append(chunk)
            offset += len(chunk)
        data = b"".join(chunks)
        records: list[dict] = []
        good_end = 0
        lines = data.split(b"\n")
        for n, line in enumerate(lines):
            last = n == len(lines) - 1
            if last:
                break  # text after the final newline: empty, or a torn unacknowledged write
            try:
                records.append(json.loads(line))
            except ValueError:
                if n == len(lines) - 2 and not lines[-1]:
                    break  # the final complete-looking line is damaged: also torn
                raise DevnetLogError(f"devnet log {self.path} is corrupt at line {n + 1}") from None
            good_end += len(line) + 1
        if good_end != len(data):
            # drop the torn tail so the next append starts on a clean line
            os.ftruncate(self._fd, good_end)
            os.fsync(self._fd)
        self._end = good_end  # where the last good line ends: a failed append cuts back here
        return records

    def _check_header(self, rec: dict, header: dict) -> None:
        if rec.get("a") != "header" or rec.get("format") != FORMAT:
            raise DevnetLogError(f"{self.path} is not a pegx devnet log")
        if rec.get("version") != VERSION:
            raise DevnetLogError(
                f"{self.path} has devnet log version {rec.get('version')}, this pegx reads "
                f"version {VERSION}: move the devnet directory away to start a fresh chain"
            )
        for key, value in header.items():
            got = rec.get(key, self._defaults.get(key))
            if got != value:
                raise DevnetLogError(
                    f"devnet at {self.directory} was created with {key}={got!r}, not "
                    f"{value!r}: use the same setting or move the directory away"
                )

    def append(self, record: dict) -> None:
        """Write one record and fsync it; it is durable when this returns.

        On any failure the file is cut back to the last good line, so nothing of the record
        stays behind, and the OSError is raised: the caller must treat the action as not done.
        """
        if self._fd is None:
            raise DevnetLogError(f"devnet log {self.path} is closed")
        if self.broken is not None:
            raise DevnetLogError(f"devnet log {self.path} refuses appends: {self.broken}")
        self.append_lines(encode(record))

    def append_lines(self, data: bytes) -> None:
        """Write encoded lines as they are (a standby copies its primary's bytes) and fsync
        them once; durable when this returns, cut back on failure as :meth:`append` is."""
        if self._fd is None:
            raise DevnetLogError(f"devnet log {self.path} is closed")
        if self.broken is not None:
            raise DevnetLogError(f"devnet log {self.path} refuses appends: {self.broken}")
        line = data
        try:
            view = memoryview(line)
            while view:  # os.write may write less than asked (a disk filling up mid-line)
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
        except OSError as exc:
            self._cut_back(exc)
            raise
        self._end += len(line)
        if self.on_append is not None:
            self.on_append(self._end)

    @property
    def end(self) -> int:
        """The offset just past the last durable line."""
        return self._end

    def _cut_back(self, exc: OSError) -> None:
        """Remove what a failed append left after the last good line."""
        try:
            os.ftruncate(self._fd, self._end)
            os.fsync(self._fd)
        except OSError as cut:
            self.broken = (f"an append failed ({exc}) and its partial line could not be "
                           f"removed ({cut}); restart pegx once the disk is fixed")
            log.critical("devnet log %s: %s", self.path, self.broken)
        else:
            log.error("devnet log %s: append failed (%s); cut back to %s bytes, the action "
                      "was not done", self.path, exc, f"{self._end:,d}")

    def close(self) -> None:
        """Release the lock and the file."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
