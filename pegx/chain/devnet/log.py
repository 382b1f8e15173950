"""The devnet's durable action log: one JSON object per line, each line fsynced.

The devnet chain is a pure function of its parameters and the ordered list of actions applied
to it (mine, send, vote, broadcast, ...), so persisting the actions is enough: a restart
replays them and reaches exactly the same chain. A record is acknowledged only after its line
is on disk. A crash mid-write leaves at most one torn last line; it was never acknowledged, so
loading drops it (and truncates it away). A damaged line anywhere else is corruption and
refuses to load.

The first record is a header holding the chain parameters, so a reopen with different
parameters cannot silently build a different chain on the same history.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

FORMAT = "pegx-devnet"
VERSION = 1
LOG_NAME = "actions.jsonl"


class DevnetLogError(RuntimeError):
    """The log cannot be used: locked by another process, corrupt, or of another version."""


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (so a rename or a new file in it is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ActionLog:
    """Append-only JSON-lines log under ``directory``, locked for this process while open."""

    def __init__(self, directory: str | os.PathLike, header: dict,
                 defaults: dict | None = None) -> None:
        # defaults: header values a log written before that key existed stands for
        self._defaults = defaults or {}
        self.directory = Path(directory)
        fresh = not self.directory.exists()
        self.directory.mkdir(parents=True, exist_ok=True)
        if fresh:
            fsync_path(self.directory.parent)
        self.path = self.directory / LOG_NAME
        self._file = open(self.path, "a+b")  # noqa: SIM115 - held open for the life of the log
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise DevnetLogError(
                f"devnet data {self.directory} is in use by another pegx process"
            ) from None
        try:
            self.records = self._load()
            if not self.records:
                self.append({"a": "header", "format": FORMAT, "version": VERSION, **header})
                self.records = []
                fsync_path(self.directory)
            else:
                self._check_header(self.records.pop(0), header)
        except Exception:
            self._file.close()
            raise

    def _load(self) -> list[dict]:
        self._file.seek(0)
        data = self._file.read()
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
            self._file.truncate(good_end)
            os.fsync(self._file.fileno())
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
        """Write one record and fsync it; it is durable when this returns."""
        line = json.dumps(record, separators=(",", ":"), sort_keys=True).encode() + b"\n"
        self._file.write(line)
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        """Release the lock and the file."""
        if not self._file.closed:
            self._file.close()
