"""Checkpoint files of the ledger's two big arrays: account rows and published balances.

A file holds named int64 rows of one width (1200 steps for rows, 2 for the {liquid, reserve}
balances) as the state was at one op seq, in a layout a restart reads at disk speed:

    header (HEADER, little-endian): magic, kind, width, generation, seq, rows, names bytes,
        crc32 of the names
    names: utf-8, NUL-separated, in row order
    zero padding to a multiple of ALIGN
    data: rows x width little-endian int64, C order (one read lands in the matrix)
    trailer: the per-column sums of the data (int64, wrapping) and END

The per-column sums are the checksum: any changed value changes its column's sum, and
checking them costs one vectorised pass (a crc32 of 1 GB takes ~0.8 s here, the sums ~0.15 s).

A file is written to ``<name>.tmp``, fsynced, renamed to its name and its directory fsynced;
only then may a state record name it (pegx.ledger.checkpoint), so a crash at any step leaves
either no file or a complete one that nothing names yet. Files are never changed once named.
Nothing here knows LevelDB or the ledger's state: this is bytes on disk.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = b"PEGXARR1"
END = b"PEGXEND1"
HEADER = struct.Struct("<8s4sIQQQQI")
ALIGN = 4096
KINDS = (b"rows", b"view")

# Called with the name of each step of a write ("<kind>.written", ".synced", ".renamed",
# ".dir") right after it: the crash tests stop a writer there (a test sets it; None otherwise).
Fault = Callable[[str], None]


class ArrayFileError(RuntimeError):
    """A checkpoint file is missing, torn or does not match its checksum."""


@dataclass(frozen=True)
class Info:
    """What a file's header says (``offset``: where its data starts)."""

    kind: str
    width: int
    gen: int
    seq: int
    rows: int
    names: list[str]
    offset: int


def fsync_dir(path: Path) -> None:
    """fsync a directory, so a file created or renamed in it is durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write(path: Path, kind: str, *, gen: int, seq: int, names: list[str], width: int,
          chunks: Iterable[np.ndarray], fault: Fault | None = None) -> int:
    """Write a file of ``names`` rows from ``chunks`` (arrays of ``width`` columns, in row
    order, len(names) rows in all), durably, as described in the module docstring. Returns
    the bytes written."""
    blob = "\0".join(names).encode("utf-8")
    head = HEADER.pack(MAGIC, kind.encode("ascii"), width, gen, seq, len(names), len(blob),
                       zlib.crc32(blob))
    pad = -(len(head) + len(blob)) % ALIGN
    sums = np.zeros(width, dtype=np.int64)
    rows = 0
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(head + blob + b"\0" * pad)
        for chunk in chunks:
            chunk = np.ascontiguousarray(chunk, dtype="<i8")
            if chunk.ndim != 2 or chunk.shape[1] != width:
                raise ValueError(f"a {kind} chunk of shape {chunk.shape}, not (n, {width})")
            fh.write(memoryview(chunk).cast("B"))
            sums += chunk.sum(axis=0)  # wraps like the reader's sums
            rows += chunk.shape[0]
        if rows != len(names):
            raise ValueError(f"{kind} file: {rows:,d} rows written for {len(names):,d} names")
        fh.write(sums.astype("<i8").tobytes() + END)
        fh.flush()
        _step(fault, f"{kind}.written")
        os.fsync(fh.fileno())
        size = fh.tell()
    _step(fault, f"{kind}.synced")
    os.replace(tmp, path)
    _step(fault, f"{kind}.renamed")
    fsync_dir(path.parent)
    _step(fault, f"{kind}.dir")
    return size


def _step(fault: Fault | None, name: str) -> None:
    if fault is not None:
        fault(name)


def info(path: Path) -> Info:
    """The header and names of the file at ``path`` (ArrayFileError if unreadable)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(HEADER.size)
            if len(raw) != HEADER.size:
                raise ArrayFileError(f"{path}: shorter than its header")
            magic, kind, width, gen, seq, rows, nbytes, crc = HEADER.unpack(raw)
            if magic != MAGIC or kind not in KINDS:
                raise ArrayFileError(f"{path}: not a pegx checkpoint file")
            blob = fh.read(nbytes)
    except OSError as exc:
        raise ArrayFileError(f"cannot read checkpoint file {path}: {exc}") from exc
    if len(blob) != nbytes or zlib.crc32(blob) != crc:
        raise ArrayFileError(f"{path}: its account names do not match their checksum")
    names = blob.decode("utf-8").split("\0") if rows else []
    if len(names) != rows:
        raise ArrayFileError(f"{path}: {len(names):,d} names for {rows:,d} rows")
    offset = HEADER.size + nbytes
    return Info(kind.decode(), width, gen, seq, rows, names, offset + (-offset % ALIGN))


def read_into(path: Path, meta: Info, out: np.ndarray) -> None:
    """Read the file's data into ``out`` (a C-contiguous int64 array of meta.rows x
    meta.width) with one sequential read, then check it against the trailer's sums."""
    if out.shape != (meta.rows, meta.width) or not out.flags.c_contiguous:
        raise ValueError(f"read_into needs a contiguous {meta.rows} x {meta.width} array")
    want = meta.rows * meta.width * 8
    try:
        with open(path, "rb", buffering=0) as fh:
            fh.seek(meta.offset)
            view = memoryview(out.reshape(-1)).cast("B") if want else memoryview(b"")
            got = 0
            while got < want:
                n = fh.readinto(view[got:])
                if not n:
                    break
                got += n
            tail = fh.read(meta.width * 8 + len(END))
    except OSError as exc:
        raise ArrayFileError(f"cannot read checkpoint file {path}: {exc}") from exc
    if got != want or len(tail) != meta.width * 8 + len(END) or tail[-len(END):] != END:
        raise ArrayFileError(f"{path}: torn (its data or trailer is short)")
    sums = np.frombuffer(tail[:-len(END)], dtype="<i8")
    if not np.array_equal(out.sum(axis=0), sums):
        raise ArrayFileError(f"{path}: its data does not match its per-column checksum "
                             f"(the file is damaged: restore the ledger from a backup)")


def read(path: Path, meta: Info | None = None) -> tuple[Info, np.ndarray]:
    """The whole file: (its header, a new rows x width array)."""
    meta = info(path) if meta is None else meta
    out = np.empty((meta.rows, meta.width), dtype=np.int64)
    read_into(path, meta, out)
    return meta, out
