"""All-or-nothing application of an op group in memory (Exchange.commit, issue 10 item 12).

A group's ops are checked one by one against the state the ops before them leave (a trade may
spend what a credit earlier in the group brought), so a later op can be refused after earlier
ones were applied. The savepoint keeps the first value of everything the group touches, and
``restore`` puts it all back: a refused group leaves memory exactly as it was, as the log (which
never saw the group) will rebuild it.

The state's apply functions call the ``save_*`` hooks at their mutation sites while a savepoint
is active (:attr:`pegx.ledger.state.State.undo`).
"""

from __future__ import annotations

import numpy as np

_MISSING = object()


class Savepoint:
    """The state an op group may change, as it was before the group."""

    def __init__(self, state):
        self.state = state  # a pegx.ledger.state.State
        self.n_names = len(state.names)  # accounts the group adds are dropped again
        self.rows: dict[int, np.ndarray] = {}
        self.views: dict[int, np.ndarray] = {}
        self.all_views: np.ndarray | None = None
        self.records: dict[tuple[str, str], object] = {}
        self.vectors: dict[tuple[str, str], object] = {}

    def save_row(self, i: int) -> None:
        """Before account ``i``'s ledger row or balance view changes."""
        if i not in self.rows:
            self.rows[i] = self.state.matrix[i].copy()
        if self.all_views is None and i not in self.views:
            self.views[i] = self.state.view[i].copy()

    def save_views(self) -> None:
        """Before every balance view changes (a recompute)."""
        if self.all_views is None:
            self.all_views = self.state.view[:len(self.state.names)].copy()

    def save_record(self, table: str, key: str) -> None:
        if (table, key) not in self.records:
            self.records[(table, key)] = self.state.tables.get(table, {}).get(key, _MISSING)

    def save_vector(self, table: str, key: str) -> None:
        if (table, key) not in self.vectors:
            self.vectors[(table, key)] = self.state.vectors.get((table, key), _MISSING)

    def restore(self) -> None:
        """Put back everything saved (apply functions replace records, never mutate them)."""
        ex = self.state
        if self.all_views is not None:
            ex.view[:len(self.all_views)] = self.all_views
        for i, v in self.views.items():  # saved before all_views: older, so they win
            ex.view[i] = v
        for i, row in self.rows.items():
            ex.matrix[i] = row
        for (table, key), value in self.records.items():
            if value is _MISSING:
                ex.tables.setdefault(table, {}).pop(key, None)
            else:
                ex.tables.setdefault(table, {})[key] = value
        for key, vec in self.vectors.items():
            if vec is _MISSING:
                ex.vectors.pop(key, None)
            else:
                ex.vectors[key] = vec
        n = len(ex.names)
        for name in ex.names[self.n_names:]:
            del ex.index[name]
            ex.dirty_rows.discard(name)
            ex.dirty_views.discard(name)
        del ex.names[self.n_names:]
        # rows past the last account must be zero: add_account reuses them as they are
        ex.matrix[self.n_names:n] = 0
        ex.view[self.n_names:n] = 0
