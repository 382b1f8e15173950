"""Where the account rows and published balances live on disk, and how a restart reads them.

Two stores, with one rule between them (issue #15: a restart reads the matrix at disk speed,
and LevelDB stays the truth for anything the files do not cover):

* **checkpoint files** (:mod:`pegx.ledger.arrays`) in the ledger's directory, named by the
  state record's ``files`` entry: ``rows``, a base file of every account's row followed by
  zero or more delta files of rows changed since, in the order they were written; ``views``,
  one file of every account's {liquid, reserve};
* **LevelDB keys** (``R``/``B`` in pegx.ledger.schema) of rows and balances written by
  checkpoints *after* the newest file: whenever a checkpoint writes a file it takes in every
  row (balance) that has a key and deletes those keys in its own batch, so a key is always
  newer than every file.

A restart therefore reads the base, then each delta, then the keys, each overriding the one
before. :class:`Disk` keeps what is where (names with keys, the files) and decides, per
checkpoint, between keys (a few rows: one small LevelDB batch), a delta file (many rows) and a
new base (the deltas and keys would cover half the accounts). A format-2 ledger has only keys;
its first checkpoint here writes a base if there are many.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from pegx import peg
from pegx.ledger import arrays, schema
from pegx.ledger.state import State

log = logging.getLogger(__name__)

# rows changed since the last checkpoint above which it writes a file: 400 rows are 3.8 MB,
# about what LevelDB takes in one write without a long log to replay when it reopens
FILE_ROWS = 400
VIEW_FACTOR = 16  # balances are 16 bytes: a file only above VIEW_FACTOR * file_rows of them
KEY_FACTOR = 4  # keys kept in LevelDB before a file takes them in: KEY_FACTOR * the threshold
MAX_DELTAS = 32  # delta files after a base before the next base
CHUNK_ROWS = 4096  # rows copied per hold of the ledger lock while a rows file is written


@dataclass
class FileJob:
    """A checkpoint file to write: ``names`` at row ``index`` of the matrix (rows) or the
    copied balances ``data`` (views)."""

    kind: str  # "rows" or "view"
    name: str
    base: bool
    names: list[str]
    index: np.ndarray
    data: np.ndarray | None = None

    def entry(self, seq: int) -> dict:
        return {"file": self.name, "seq": seq, "rows": len(self.names)}


@dataclass
class Layout:
    """What a checkpoint does with rows and balances: key puts and deletes for its batch, the
    files it writes first, the ``files`` entry of its state record, files it makes obsolete."""

    puts: list[tuple[bytes, bytes]] = field(default_factory=list)
    deletes: list[bytes] = field(default_factory=list)
    jobs: list[FileJob] = field(default_factory=list)
    files: dict = field(default_factory=dict)
    obsolete: list[str] = field(default_factory=list)
    db_rows: set[str] = field(default_factory=set)  # names with R / B keys after it
    db_views: set[str] = field(default_factory=set)


class Disk:
    """What of the rows and balances is in which file or key (module docstring)."""

    def __init__(self, file_rows: int = FILE_ROWS):
        self.file_rows = file_rows
        self.files: dict = {}  # the state record's "files" entry as on disk
        self.db_rows: set[str] = set()
        self.db_views: set[str] = set()

    # ---------------------------------------------------------------- restart
    def load(self, store, state_record: dict | None, st: State, capacity: int) -> None:
        """Read every row and balance into ``st`` (a fresh State): files, then keys."""
        self.files = dict((state_record or {}).get("files") or {})
        rows = self.files.get("rows", [])
        _reserve(st, capacity)
        if rows:
            meta = arrays.info(store.file_path(rows[0]["file"]))
            _reserve(st, max(capacity, meta.rows + meta.rows // 2 + 1024))
            for name in meta.names:
                st.add_account(name, dirty=False)
            arrays.read_into(store.file_path(rows[0]["file"]), meta,
                             st.matrix[:meta.rows])
            for delta in rows[1:]:
                self._read_rows(store.file_path(delta["file"]), st)
        for k, v in store.scan(schema.ACCOUNT):
            name = schema.unpack_account(k)
            i = _row(st, name)  # (first: it may grow the matrix)
            st.matrix[i] = np.frombuffer(v, dtype="<i8")
            self.db_rows.add(name)
        views = self.files.get("views")
        if views:
            meta, data = arrays.read(store.file_path(views["file"]))
            n = len(meta.names)
            if st.names[:n] == meta.names:
                st.view[:n] = data
            else:
                idx = [_row(st, name) for name in meta.names]
                st.view[idx] = data
        for k, v in store.scan(schema.BALANCE):
            name = schema.unpack_balance(k)
            i = _row(st, name)
            st.view[i] = np.frombuffer(v, dtype="<i8")
            self.db_views.add(name)

    @staticmethod
    def _read_rows(path, st: State) -> None:
        meta, data = arrays.read(path)  # a delta holds at most half the rows
        idx = [_row(st, name) for name in meta.names]
        st.matrix[idx] = data

    # ---------------------------------------------------------------- checkpoints
    def layout(self, st: State, dirty_rows: set[str], dirty_views: set[str],
               gen: int) -> Layout:
        """Where this checkpoint puts the rows and balances that changed (call under the
        ledger lock, before the dirty sets are cleared); ``gen`` names its files."""
        out = Layout(files=_copy(self.files), db_rows=set(self.db_rows),
                     db_views=set(self.db_views))
        n = len(st.names)
        self._rows(st, dirty_rows, n, gen, out)
        self._views(st, dirty_views, n, gen, out)
        if out.jobs:
            out.files["gen"] = gen
        return out

    def _bounded(self, dirty: set[str], held: set[str], limit: int) -> bool:
        return len(dirty) <= limit and len(held | dirty) <= KEY_FACTOR * limit

    def _rows(self, st: State, dirty: set[str], n: int, gen: int, out: Layout) -> None:
        if not dirty and len(self.db_rows) <= KEY_FACTOR * self.file_rows:
            return  # (many keys and nothing dirty: a ledger of format 2, just upgraded)
        if self._bounded(dirty, self.db_rows, self.file_rows):
            for name in dirty:
                out.puts.append((schema.pack_account(name),
                                 st.matrix[st.index[name]].astype("<i8").tobytes()))
            out.db_rows |= dirty
            return
        rows = out.files.get("rows", [])
        changed = self.db_rows | dirty
        in_deltas = sum(f["rows"] for f in rows[1:])
        base = (not rows or len(rows) > MAX_DELTAS
                or 2 * (in_deltas + len(changed)) >= n)
        if base:
            names, index = list(st.names), np.arange(n)
            out.obsolete += [f["file"] for f in rows]
        else:
            names = sorted(changed)
            index = np.array([st.index[name] for name in names], dtype=np.int64)
        job = FileJob("rows", f"rows-{gen:08d}.pxm", base, names, index)
        out.jobs.append(job)
        out.deletes += [schema.pack_account(name) for name in self.db_rows]
        out.db_rows = set()
        out.files["rows"] = ([] if base else list(rows)) + [job.entry(0)]  # seq: set_seq

    def _views(self, st: State, dirty: set[str], n: int, gen: int, out: Layout) -> None:
        limit = VIEW_FACTOR * self.file_rows
        if not dirty and len(self.db_views) <= KEY_FACTOR * limit:
            return
        if self._bounded(dirty, self.db_views, limit):
            for name in dirty:
                out.puts.append((schema.pack_balance(name),
                                 st.view[st.index[name]].astype("<i8").tobytes()))
            out.db_views |= dirty
            return
        old = out.files.get("views")
        if old:
            out.obsolete.append(old["file"])
        job = FileJob("view", f"view-{gen:08d}.pxm", True, list(st.names), np.arange(n),
                      st.view[:n].copy())
        out.jobs.append(job)
        out.deletes += [schema.pack_balance(name) for name in self.db_views]
        out.db_views = set()
        out.files["views"] = job.entry(0)

    def done(self, layout: Layout) -> None:
        """The checkpoint of ``layout`` is on disk."""
        self.files = layout.files
        self.db_rows, self.db_views = layout.db_rows, layout.db_views


def set_seq(layout: Layout, seq: int) -> None:
    """Stamp the files a layout writes with the seq of their checkpoint."""
    written = {job.name for job in layout.jobs}
    for entry in [*layout.files.get("rows", []), layout.files.get("views") or {}]:
        if entry.get("file") in written:
            entry["seq"] = seq


def chunks(job: FileJob, led) -> Iterator[np.ndarray]:
    """The rows of a rows file as they were at its checkpoint: copied CHUNK_ROWS at a time
    under the ledger lock, with the rows changed since (saved in ``state.cow`` before their
    first change) put back as they were. A generator: the lock is free between chunks."""
    st = led._state
    for at in range(0, len(job.index), CHUNK_ROWS):
        idx = job.index[at:at + CHUNK_ROWS]
        with led._lock:
            if job.base:
                data = st.matrix[at:at + len(idx)].copy()
            else:
                data = st.matrix[idx]
            cow = st.cow or {}
            if cow:
                for j, i in enumerate(idx.tolist()):
                    row = cow.get(i)
                    if row is not None:
                        data[j] = row
        yield data


def _copy(files: dict) -> dict:
    out = dict(files)
    if "rows" in out:
        out["rows"] = [dict(f) for f in out["rows"]]
    if out.get("views"):
        out["views"] = dict(out["views"])
    return out


def _row(st: State, name: str) -> int:
    i = st.index.get(name)
    return st.add_account(name, dirty=False) if i is None else i


def _reserve(st: State, rows: int) -> None:
    """Room for ``rows`` accounts (pages are only touched as rows are written)."""
    if st.matrix.shape[0] < rows:
        n = len(st.names)
        m = np.zeros((rows, peg.PEG_SIZE), dtype=np.int64)
        v = np.zeros((rows, 2), dtype=np.int64)
        m[:n], v[:n] = st.matrix[:n], st.view[:n]
        st.matrix, st.view = m, v
