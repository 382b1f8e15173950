"""A real LevelDB Store whose chosen write batch waits before it is written, until released.

Only the timing is controlled: the batch is built and written by LevelDB exactly as usual, it
just starts its (synced) write when the test says so. That is what a slow fsync looks like to
the rest of pegx, and it lets a test hold one thread inside a checkpoint or a group commit while
other threads run:

    store = HoldingStore(tmp_path / "ledger")
    store.hold_next(HoldingStore.state_write)   # the next checkpoint batch waits
    ...                                          # start the writer in a thread
    store.wait_held()                            # it is now inside its batch, unwritten
    store.release()
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

from pegx.ledger import schema
from pegx.ledger.store import Store

HOLD_SECONDS = 120  # a held batch never released within this fails its test


class _Recording:
    """The write batch, recording the keys put into it."""

    def __init__(self, wb):
        self._wb = wb
        self.keys: list[bytes] = []

    def put(self, key: bytes, value: bytes) -> None:
        self.keys.append(key)
        self._wb.put(key, value)

    def delete(self, key: bytes) -> None:
        self._wb.delete(key)


class HoldingStore(Store):
    """Store whose next batch matching ``hold_next``'s predicate waits for ``release()``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._match: Callable[[list[bytes]], bool] | None = None
        self._held = threading.Event()
        self._release = threading.Event()
        self._mu = threading.Lock()

    @staticmethod
    def state_write(keys: list[bytes]) -> bool:
        """A checkpoint batch (it writes the state record)."""
        return schema.STATE in keys

    @staticmethod
    def log_write(keys: list[bytes]) -> bool:
        """A group commit of op log records."""
        return any(k.startswith(schema.OPLOG) for k in keys)

    def hold_next(self, match: Callable[[list[bytes]], bool]) -> None:
        """Hold the next batch (from any thread) whose keys satisfy ``match``."""
        with self._mu:
            self._held.clear()
            self._release.clear()
            self._match = match

    def wait_held(self, timeout: float = 60) -> None:
        if not self._held.wait(timeout):
            raise AssertionError(f"no matching batch reached the store within {timeout} s")

    @property
    def held(self) -> bool:
        return self._held.is_set()

    def release(self) -> None:
        self._release.set()

    @contextlib.contextmanager
    def batch(self):
        with super().batch() as wb:
            rec = _Recording(wb)
            yield rec
            with self._mu:  # one batch takes the hold, even when two match at once
                hold = self._match is not None and self._match(rec.keys)
                if hold:
                    self._match = None
            if hold:
                self._held.set()
                if not self._release.wait(HOLD_SECONDS):
                    # raising here writes nothing (transaction=True): the test fails loudly
                    raise AssertionError(f"a held batch was not released in {HOLD_SECONDS} s")
