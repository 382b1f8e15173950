"""The operator's toolkit: online and offline backup, restore, verify, audit and recovery.

Everything here works on the real parts (a :class:`pegx.ledger.store.Store`, an
:class:`pegx.ledger.engine.Exchange`, a :class:`pegx.chain.base.Chain`) and is used two ways: inside
the daemon through ``pegx.*`` calls (it holds the only LevelDB handle), or on a stopped daemon's
datadir by ``pegx`` commands that open it directly.

Backup layout (``DEST/``): ``ledger/`` (a LevelDB copied from a snapshot), ``devnet/actions.jsonl``
(the devnet chain's action log, cut after its last complete line), the datadir's ``pegx.toml``
and ``api_public_key`` when present, and ``backup.json``, written last: a backup without it is
incomplete. The devnet log is copied *after* the ledger snapshot on purpose: a chain that is a
little ahead of the ledger is what a restart after a crash looks like, and the cycle thread
catches up; a ledger ahead of its chain would hold inputs the chain never saw.

Recovery (PegAPI.txt, last paragraph) rebuilds a lost ledger from the chain's wallet outputs
and the operator's record of each user's liquid and reserve balance and deposit txids, as one
atomic ledger record; see :func:`recover`.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pegx import peg
from pegx.chain.base import ChainError
from pegx.chain.devnet.log import LOG_NAME, fsync_path
from pegx.exchange import chainguard
from pegx.ledger import engine
from pegx.ledger.engine import HOUSE, POOL, WITHDRAWS, Exchange
from pegx.ledger.store import Store

log = logging.getLogger(__name__)

BACKUP_FORMAT = "pegx-backup"
BACKUP_VERSION = 1
MANIFEST = "backup.json"
LEDGER_DIR = "ledger"
DEVNET_DIR = "devnet"
CONFIG_FILES = ("pegx.toml", "api_public_key")
IN_FLIGHT = ("sent", "cancelling")  # withdraw batch states whose transaction may be on chain
MAX_LISTED = 20  # problems of one kind listed before "... and N more"
# where the engine keeps the per-step drift: registered inputs - accounts, from on-chain spends
# that split fractions in the chain's proportions rather than the ledger's
DRIFT = ("meta", "drift")
COLUMNS = ("step", "users", "pool", "withdraws", "exchange", "inputs", "drift", "difference")


class ToolError(ValueError):
    """An operator tool cannot proceed; the message says why and what to do."""


# ------------------------------------------------------------------------------- files
def _fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (and root itself)."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            fsync_path(Path(dirpath) / name)
        fsync_path(Path(dirpath))


def _write_json_atomic(path: Path, value: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    fsync_path(tmp)
    tmp.replace(path)
    fsync_path(path.parent)


def _is_empty_dir(path: Path) -> bool:
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


def _clear_dir(path: Path) -> None:
    """Remove what a failed backup or restore put into ``path`` (which was empty before)."""
    for child in path.iterdir():
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink()


def copy_devnet_log(src_dir: Path, dest_dir: Path) -> dict:
    """Copy the devnet action log, cut after its last complete line (a torn tail of an append in
    progress was never acknowledged; the devnet drops it on load too). Returns {bytes, lines}."""
    data = (src_dir / LOG_NAME).read_bytes()
    data = data[: data.rfind(b"\n") + 1]
    dest_dir.mkdir(parents=True, exist_ok=True)
    (dest_dir / LOG_NAME).write_bytes(data)
    return {"bytes": len(data), "lines": data.count(b"\n")}


def backup(store: Store, datadir: Path, dest: str | os.PathLike,
           progress: Callable[[int], None] | None = None) -> dict:
    """Write a consistent backup of ``store`` (the ledger of ``datadir``) to ``dest``.

    Safe while the daemon serves: the ledger is read from one LevelDB snapshot. ``progress(n)``
    is called with the bytes copied since the last call. Returns the manifest.
    """
    dest = Path(dest).resolve()
    datadir = Path(datadir).resolve()
    if not _is_empty_dir(dest):
        raise ToolError(f"backup destination {dest} exists and is not empty")
    if dest == datadir or dest.is_relative_to(datadir / LEDGER_DIR):
        raise ToolError(f"backup destination {dest} is inside the ledger it backs up")
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.monotonic()
        records = store.copy_to(dest / LEDGER_DIR, progress)
        devnet = None
        src_log = devnet_log(datadir)
        if src_log is not None:  # same place in the backup as in the datadir
            devnet = copy_devnet_log(src_log.parent,
                                     dest / src_log.parent.relative_to(datadir))
        for name in CONFIG_FILES:
            if (datadir / name).is_file():
                shutil.copy2(datadir / name, dest / name)
        with Store(dest / LEDGER_DIR, create=False, read_only=True) as copy_:
            state = copy_.state()
            size = copy_.approximate_size()
        _fsync_tree(dest)
        manifest = {"format": BACKUP_FORMAT, "version": BACKUP_VERSION,
                    "created": int(time.time()), "source": str(datadir),
                    "ledger_records": records, "ledger_bytes": size, "ledger_state": state,
                    "devnet": devnet, "seconds": round(time.monotonic() - t0, 3)}
        _write_json_atomic(dest / MANIFEST, manifest)
    except BaseException:
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        else:
            _clear_dir(dest)
        raise
    log.info("backup of %s written to %s: %s ledger records", datadir, dest, f"{records:,d}")
    return manifest


class BackupJobs:
    """Online backups run inside the daemon, one at a time, in a thread the CLI polls."""

    def __init__(self, store: Store, datadir: Path):
        self.store = store
        self.datadir = Path(datadir)
        self._mu = threading.Lock()
        self._jobs: dict[str, dict] = {}
        self._running: str | None = None
        self._threads: list[threading.Thread] = []

    def start(self, dest: str) -> dict:
        """Start a backup to ``dest`` (an absolute path on the daemon's machine); returns
        {id, dest, total} where total is the ledger's approximate size in bytes."""
        if not isinstance(dest, str) or not os.path.isabs(dest):
            raise ToolError("the backup destination must be an absolute path")
        if not _is_empty_dir(Path(dest)):
            raise ToolError(f"backup destination {dest} exists and is not empty")
        with self._mu:
            if self._running is not None:
                raise ToolError(f"backup {self._running} is still running")
            job_id = uuid.uuid4().hex[:12]
            job = {"id": job_id, "dest": dest, "copied": 0,
                   "total": self.store.approximate_size(), "done": False, "error": "",
                   "result": None}
            self._jobs[job_id] = job
            self._running = job_id
        thread = threading.Thread(target=self._run, args=(job,), name=f"backup-{job_id}",
                                  daemon=True)
        self._threads.append(thread)
        thread.start()
        return {k: job[k] for k in ("id", "dest", "total")}

    def _run(self, job: dict) -> None:
        def progress(n: int) -> None:
            with self._mu:
                job["copied"] += n

        try:
            result = backup(self.store, self.datadir, job["dest"], progress)
        except Exception as exc:  # reported to the polling client, and logged
            log.exception("backup to %s failed", job["dest"])
            result, error = None, f"{type(exc).__name__}: {exc}"
        else:
            error = ""
        with self._mu:
            job.update(done=True, error=error, result=result)
            self._running = None

    def wait(self, timeout: float) -> None:
        """Let a running backup finish (the daemon calls this before closing the ledger)."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def progress(self, job_id: str) -> dict:
        """{id, dest, copied, total, done, error, result} of a backup job."""
        with self._mu:
            job = self._jobs.get(job_id)
            if job is None:
                raise ToolError(f"no backup job {job_id!r}")
            return copy.deepcopy(job)


def read_manifest(src: Path) -> dict:
    """The manifest of a complete backup at ``src``; ToolError otherwise."""
    path = Path(src) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ToolError(f"{src} is not a complete pegx backup (no {MANIFEST})") from None
    except (OSError, ValueError) as exc:
        raise ToolError(f"cannot read {path}: {exc}") from exc
    if manifest.get("format") != BACKUP_FORMAT or manifest.get("version") != BACKUP_VERSION:
        raise ToolError(f"{path}: not a pegx backup of version {BACKUP_VERSION}")
    return manifest


RESTORING = ".restore-"  # <parent>/.<datadir name>.restore-XXXX: a restore being built


def restore(src: str | os.PathLike, datadir: str | os.PathLike) -> dict:
    """Copy the backup at ``src`` into ``datadir``, which must be empty or not exist.

    The copy is built in a temporary directory beside ``datadir`` and renamed into place only
    when complete and fsynced, so a restore cut short (killed, disk full, power lost) leaves
    ``datadir`` as it was: never a ledger without its chain. What such a restore left beside
    it is removed by the next one.
    """
    src, datadir = Path(src).resolve(), Path(datadir).resolve()
    manifest = read_manifest(src)
    if not _is_empty_dir(datadir):
        raise ToolError(f"datadir {datadir} is not empty: restore only into an empty datadir "
                        f"(never over a ledger, which holds balances)")
    parent = datadir.parent
    parent.mkdir(parents=True, exist_ok=True)
    for stale in parent.glob(f".{datadir.name}{RESTORING}*"):
        log.warning("removing %s, left by a restore that was cut short", stale)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{datadir.name}{RESTORING}", dir=parent))
    try:
        if datadir.is_dir():  # keep the mode the operator gave the (empty) datadir
            tmp.chmod(datadir.stat().st_mode & 0o7777)
        shutil.copytree(src / LEDGER_DIR, tmp / LEDGER_DIR)
        if (src / DEVNET_DIR).is_dir():
            shutil.copytree(src / DEVNET_DIR, tmp / DEVNET_DIR)
        for name in CONFIG_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, tmp / name)
        _fsync_tree(tmp)
        try:
            os.rename(tmp, datadir)  # replaces an empty directory in one step
        except OSError as exc:
            raise ToolError(f"cannot move the restored copy {tmp} into place as {datadir}: "
                            f"{exc} (a mount point cannot be replaced: restore into a "
                            f"directory inside it)") from exc
        fsync_path(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("backup %s restored into %s", src, datadir)
    return manifest


# ------------------------------------------------------------------------------- opening offline
def devnet_log(datadir: Path) -> Path | None:
    """The devnet action log of ``datadir`` (``<datadir>/devnet/actions.jsonl``), or None."""
    path = Path(datadir) / DEVNET_DIR / LOG_NAME
    return path if path.is_file() else None


def open_devnet(datadir: Path):
    """The devnet chain of ``datadir`` with the parameters of its log header (no block timer),
    or None if it has none. Locks the log: the daemon must not be running on it."""
    path = devnet_log(datadir)
    if path is None:
        return None
    with open(path, "rb") as fh:
        header = json.loads(fh.readline() or b"{}")
    if header.get("a") != "header":
        raise ToolError(f"{path} has no devnet header")
    from pegx import crypto
    from pegx.chain.devnet import Devnet

    return Devnet(path.parent.parent, block_seconds=0,
                  network=crypto.network(header.get("network", "main")),
                  **{k: header[k] for k in ("seed", "initial_supply", "walk_seed")})


def open_chain(cfg):
    """The chain of a stopped daemon's datadir (devnet: its own log), or None for a devnet
    datadir without chain data."""
    if cfg.chain == "devnet":
        return open_devnet(cfg.path)
    from pegx.chain.bitbayd import Bitbayd

    return Bitbayd(cfg.node_url, timeout=cfg.node_timeout, deadline=cfg.node_deadline,
                   retry=True, network=cfg.net)


@contextlib.contextmanager
def opened(datadir: Path, *, read_only: bool = False):
    """An Exchange on ``datadir``'s ledger without writing anything; closes the store only (no
    checkpoint). Takes the ledger lock unless ``read_only``, so a running daemon is refused."""
    path = Path(datadir) / LEDGER_DIR
    if not path.is_dir():
        raise ToolError(f"no ledger at {path}")
    store = Store(path, create=False, read_only=read_only)
    try:
        yield Exchange(store)
    finally:
        store.close()


# ------------------------------------------------------------------------------- audit
def _limited(items: list[str]) -> list[str]:
    if len(items) <= MAX_LISTED:
        return items
    return items[:MAX_LISTED] + [f"... and {len(items) - MAX_LISTED:,d} more like this"]


_LOW = (1 << 32) - 1
_CHUNK = 4096  # rows per pass: bounded temporaries however large the ledger is


def _exact_sum(a: np.ndarray, axis: int) -> np.ndarray:
    """Exact int64 sums as Python ints: high and low 32-bit halves are summed separately, so
    no total overflows (even of a corrupted row) for up to 2^31 terms."""
    hi = (a >> 32).sum(axis=axis)
    lo = (a & _LOW).sum(axis=axis)
    return hi.astype(object) * (1 << 32) + lo.astype(object)


def _scan_accounts(ledger: Exchange) -> dict:
    """Column sums, row totals and negative steps of every account row; call under the lock.

    Works in chunks of rows instead of copying the matrix (users x 1200 int64 can be GBs).
    """
    n = len(ledger.names)
    cols = np.zeros(peg.PEG_SIZE, dtype=object)
    totals = np.zeros(n, dtype=object)
    negative = []
    for start in range(0, n, _CHUNK):
        chunk = ledger.matrix[start:min(n, start + _CHUNK)]
        cols = cols + _exact_sum(chunk, 0)
        totals[start:start + len(chunk)] = _exact_sum(chunk, 1)
        for r in np.flatnonzero((chunk < 0).any(axis=1)):
            neg = np.flatnonzero(chunk[r] < 0)
            negative.append((start + int(r), int(neg[0]), int(chunk[r, neg[0]]), neg.size))
    special = {name: ledger.matrix[ledger.index[name]].astype(object)
               for name in (POOL, WITHDRAWS, HOUSE) if name in ledger.index}
    return {"names": list(ledger.names), "view": ledger.view[:n].copy(), "cols": cols,
            "totals": totals, "negative": negative, "special": special}


def audit(ledger: Exchange, chain=None) -> dict:
    """Check the conservation law and every engine invariant; return a report.

    Report: ``ok``; ``problems`` (each names the step, account or input at fault); ``notes``;
    ``columns`` and ``steps`` (per-step rows, only for steps with a difference); ``totals``
    (the same columns summed over all steps); ``summary``. Invariants: per step Σ accounts +
    drift == Σ registered inputs; no negative step or balance; liquid + reserve == row total;
    Σ liquid <= the exchange's liquid; the withdraws row == Σ pending withdraw vectors; every
    input is unspent on chain or in flight; claims registered <=> input registered.
    The ledger lock is held while the rows are summed (calls wait, ~1 s per 100,000 accounts);
    the chain is asked afterwards, without it.
    """
    with ledger.lock:  # one consistent view
        scan = _scan_accounts(ledger)
        tables = copy.deepcopy(ledger.tables)
        vectors = {k: v.copy() for k, v in ledger.vectors.items()
                   if k[0] in ("inputs", "withdraws") or k == DRIFT}
        seq = ledger.seq
    problems: dict[str, list[str]] = {}
    notes: list[str] = []

    def problem(kind: str, text: str) -> None:
        problems.setdefault(kind, []).append(text)

    inputs, claims, meta = tables["inputs"], tables["claims"], tables["meta"]
    engine_meta = meta.get("engine", {"supply": 0, "cycle": 0, "totals": {"liquid": 0}})
    names, view = scan["names"], scan["view"]
    zero = np.zeros(peg.PEG_SIZE, dtype=object)
    pool, wds, house = (scan["special"].get(a, zero) for a in (POOL, WITHDRAWS, HOUSE))
    users = scan["cols"] - pool - wds - house
    users_count = len([a for a in names if a not in (POOL, WITHDRAWS, HOUSE)])
    ins = zero.copy()
    for key, rec in inputs.items():
        vec = vectors.get(("inputs", key))
        if vec is None or vec.shape != (peg.PEG_SIZE,):
            problem("input", f"input {key}: its fraction vector is missing or malformed")
            continue
        if (vec < 0).any() or int(vec.sum()) != int(rec.get("value", -1)):
            problem("input", f"input {key}: fractions sum to {int(vec.sum()):,d}, "
                             f"value is {rec.get('value')!r}")
        ins = ins + vec.astype(object)
    drift = vectors[DRIFT].astype(object) if DRIFT in vectors else zero.copy()
    diff = users + pool + wds + house + drift - ins
    rows = np.stack([users, pool, wds, house, ins, drift, diff])
    differing = [int(i) for i in np.flatnonzero(diff != 0)]
    steps = [[i, *(int(x) for x in rows[:, i])] for i in differing]
    for i in differing:
        d = int(diff[i])
        problem("conservation", f"step {i}: accounts hold {abs(d):,d} sat "
                                f"{'more' if d > 0 else 'less'} than the registered inputs")
    # accounts: no negatives, liquid + reserve == row total
    for i, step, value, count in scan["negative"]:
        problem("negative", f"account {names[i]!r}: step {step} is {value:,d} sat "
                            f"({count} negative steps)")
    see = f" (see step {', '.join(map(str, differing[:5]))})" if differing else ""
    for i in np.flatnonzero((view < 0).any(axis=1)):
        problem("negative", f"account {names[i]!r}: negative balance (liquid "
                            f"{int(view[i, 0]):,d}, reserve {int(view[i, 1]):,d})")
    published = view[:, 0].astype(object) + view[:, 1].astype(object)
    for i in np.flatnonzero(published != scan["totals"]):
        problem("balance", f"account {names[i]!r}: liquid + reserve = {int(published[i]):,d} "
                           f"sat but its steps sum to {int(scan['totals'][i]):,d} sat{see}")
    assigned = int(_exact_sum(view[:, 0], 0))
    ex_liquid = int(engine_meta.get("totals", {}).get("liquid", 0))
    if assigned > ex_liquid:
        problem("liquid", f"accounts hold {assigned:,d} sat liquid, more than the exchange's "
                          f"liquid {ex_liquid:,d} sat")
    # pending withdraws: the withdraws row is exactly the sum of their deduction vectors
    pending = zero.copy()
    for wid in tables["withdraws"]:
        vec = vectors.get(("withdraws", wid))
        if vec is None:
            problem("withdraw", f"withdraw {wid}: its deduction vector is missing")
        else:
            pending = pending + vec.astype(object)
    for i in np.flatnonzero(pending != wds)[:1]:
        problem("withdraw", f"step {i}: the withdraws account holds {int(wds[i]):,d} sat, the "
                            f"pending withdraws {int(pending[i]):,d} sat")
    # claims <=> inputs (a registered claim whose input left the set was spent on chain)
    for key, rec in inputs.items():
        owner = rec.get("owner")
        if owner and owner != HOUSE:
            claim = claims.get(key) or {}
            if claim.get("name") != owner or not claim.get("registered"):
                problem("claim", f"input {key} credited to {owner!r} has no registered claim")
    for key, claim in claims.items():
        if not claim.get("registered") and key in inputs:
            problem("claim", f"input {key} is registered but its claim is not")
    in_flight = _in_flight(tables["batches"])
    if chain is None:
        notes.append("no chain: inputs and claims were not checked against it")
    else:
        try:
            _check_chain(ledger, chain, inputs, claims, in_flight, problem, notes)
        except ChainError as exc:
            problem("chain", f"cannot check inputs against the chain: {exc}")
    totals = dict(zip(COLUMNS[1:], (int(x) for x in rows.sum(axis=1)), strict=True))
    summary = {"accounts": users_count, "inputs": len(inputs),
               "in_flight": len(in_flight & set(inputs)),
               "withdraws_pending": len(tables["withdraws"]), "claims": len(claims),
               "supply": int(engine_meta.get("supply", 0)),
               "cycle": int(engine_meta.get("cycle", 0) or 0), "op_seq": seq,
               "liquid_assigned": assigned, "exchange_liquid": ex_liquid,
               "drift": DRIFT in vectors}
    listed = [t for kind in problems.values() for t in _limited(kind)]
    # reorganisations that replaced blocks taken as final, each with what it changed (what is
    # still wrong after them shows up among the problems, e.g. an input not on chain)
    reorgs = list((meta.get("follow") or {}).get("alarms", []))
    for alarm in reorgs:
        notes.append(f"reorganisation past the final depth ({alarm['final_depth']}): blocks "
                     f"{alarm['fork'] + 1:,d}..{alarm['old_height']:,d} replaced; "
                     f"{len(alarm['changed'])} items changed")
    return {"ok": not problems, "problems": listed, "notes": notes, "columns": list(COLUMNS),
            "steps": steps, "totals": totals, "summary": summary, "reorganisations": reorgs}


def _in_flight(batches: dict) -> set[str]:
    """Inputs spent by exchange transactions not settled yet (withdraw batches being sent or
    cancelled): they may be spent on chain while still registered."""
    return {k for b in batches.values()
            if isinstance(b, dict) and b.get("state", "sent") in IN_FLIGHT
            for k in b.get("ins", [])}


def _check_chain(ledger: Exchange, chain, inputs: dict, claims: dict, in_flight: set,
                 problem: Callable[[str, str], None], notes: list[str]) -> None:
    rec = ledger.record(chainguard.TABLE, chainguard.KEY)
    if rec is None:
        notes.append("the ledger records no chain yet (the next start adopts the chain)")
    else:  # the start-up check's verdict: another chain, behind, another history
        found, warnings = chainguard.compare(rec, chain)
        for text in found:
            problem("chain", text)
        notes.extend(warnings)
    gone = [k for k in inputs if k not in in_flight and not chain.is_unspent(k)]
    if gone:  # the desk may have batched them since our view: look again before blaming
        fresh_inputs = ledger.records("inputs")
        fresh_flight = _in_flight(ledger.records("batches"))
        gone = [k for k in gone if k in fresh_inputs and k not in fresh_flight]
    for key in gone:
        problem("chain", f"input {key} is registered but spent or unknown on chain "
                         f"and not in flight")
    for key, claim in claims.items():
        if claim.get("registered") and key not in inputs and chain.is_unspent(key):
            problem("claim", f"claim {key} ({claim.get('name')!r}) is registered, the output "
                             f"is unspent on chain, but the input is not in the ledger")


# ------------------------------------------------------------------------------- recovery
def read_balances_csv(path: str | os.PathLike) -> tuple[dict[str, tuple[int, int]],
                                                         dict[str, str]]:
    """Read ``user,liquid,reserve[,deposits]`` (a header row is required; amounts in satoshi;
    deposits = "txid:vout" outpoints separated by spaces or ';'). Returns (targets, owner of
    each deposit)."""
    targets: dict[str, tuple[int, int]] = {}
    owners: dict[str, str] = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"user", "liquid", "reserve"} - set(reader.fieldnames or ())
        if missing:
            raise ToolError(f"{path}: missing column(s) {', '.join(sorted(missing))} "
                            f"(want user,liquid,reserve[,deposits])")
        for line, row in enumerate(reader, start=2):
            user = (row["user"] or "").strip()
            try:
                engine.check_name(user)
                liquid, reserve = int(row["liquid"]), int(row["reserve"])
            except (engine.EngineError, TypeError, ValueError) as exc:
                raise ToolError(f"{path} line {line}: {exc}") from None
            if liquid < 0 or reserve < 0 or user in targets:
                raise ToolError(f"{path} line {line}: negative amount or repeated user {user!r}")
            targets[user] = (liquid, reserve)
            for dep in (row.get("deposits") or "").replace(";", " ").split():
                if owners.setdefault(dep, user) != user:
                    raise ToolError(f"{path} line {line}: deposit {dep} listed for two users")
    return targets, owners


def _base_ops(chain, owners: dict[str, str], now: int) -> tuple[list[dict], dict]:
    """Register every confirmed wallet output (known deposits to their users, the rest to the
    exchange's own account) and recompute at the chain's supply."""
    tip = chain.tip()
    utxos = sorted(chain.list_unspent(min_conf=1), key=lambda u: u.key)
    ops, recs, vecs = [], {}, {}
    for address in sorted({u.address for u in utxos}):
        ops.append(Exchange.put_op("addresses", address, {"imported": 1}))
    for u in utxos:
        owner = owners.get(u.key, HOUSE)
        ops.append(Exchange.put_op("claims", u.key, {"name": owner}))  # the credit registers it
        ops.append(Exchange.credit_op(u.key, u.value, u.fractions, owner=owner,
                                      address=u.address, frozen_until=u.frozen_until,
                                      height=u.height))
        recs[u.key] = {"frozen_until": u.frozen_until}
        vecs[("inputs", u.key)] = np.asarray(u.fractions, dtype=np.int64)
    totals = engine.input_totals(recs, vecs, tip.supply, now)
    ops.append({"op": "recompute", "supply": tip.supply, "totals": totals, "cycle": tip.cycle})
    # rebuilt from this chain at this tip: the ledger belongs to it from now on
    ops.append(Exchange.put_op(chainguard.TABLE, chainguard.KEY, chainguard.record_for(chain, tip)))
    found = {u.key for u in utxos}
    info = {"height": tip.height, "cycle": tip.cycle, "supply": tip.supply,
            "outputs": len(utxos), "exchange_totals": totals,
            "deposits_missing": sorted(k for k in owners if k not in found)}
    return ops, info


def _trade(u1: str, u2: str, amount: int, style: str) -> dict:
    return {"op": "trade", "u1": u1, "u2": u2, "amount": int(amount), "style": style}


def _plan_trades(scratch: Exchange, targets: dict[str, tuple[int, int]]) -> tuple[list, list]:
    """Pool-based redistribution: the exchange's own funds go to the pool, users holding more
    than their record give the excess to the pool (debits first), then the pool pays every
    user what is missing, in the right style."""
    debits, credits, rows = [], [], []
    house = scratch.balance(HOUSE)
    for s, style in enumerate(peg.STYLES):
        have = house["liquid" if s == 0 else "reserve"]
        if have:
            debits.append(_trade(HOUSE, POOL, have, style))
    pool = [house["liquid"], house["reserve"]]
    for user in sorted(set(targets) | (set(scratch.names) - {POOL, WITHDRAWS, HOUSE})):
        bal = scratch.balance(user) or {"liquid": 0, "reserve": 0}
        got = [bal["liquid"], bal["reserve"]]
        want = list(targets.get(user, (0, 0)))
        for s, style in enumerate(peg.STYLES):
            d = want[s] - got[s]
            if d < 0:
                debits.append(_trade(user, POOL, -d, style))
            elif d > 0:
                credits.append(_trade(POOL, user, d, style))
            pool[s] -= d
        rows.append({"user": user, "from_deposits": got, "target": want,
                     "moves": [want[0] - got[0], want[1] - got[1]]})
    for s, style in enumerate(peg.STYLES):
        if pool[s] < 0:
            raise ToolError(f"the exchange holds {-pool[s]:,d} sat too little {style} to give "
                            f"every user their recorded balance; check the CSV against the "
                            f"chain (supply moved since it was written?)")
    return debits + credits, rows


def recover(datadir: Path, chain, targets: dict[str, tuple[int, int]], owners: dict[str, str],
            *, dry_run: bool = True, now: int | None = None) -> dict:
    """Rebuild a lost ledger in ``datadir`` (PegAPI.txt's recovery procedure) so that every user
    has exactly their recorded liquid and reserve balance; returns the plan.

    Every confirmed wallet output is registered: known deposits (``owners``) to their users,
    the rest to the exchange's own account, whose balance then goes to the pool; then users
    with more than their record give the excess to the pool and the pool pays out what users
    miss, by style. The plan is first applied to a scratch ledger and checked there; unless
    ``dry_run``, the same operations are then committed to the real (empty) ledger as one
    atomic record. Balances stay exact until the next recompute rederives them from the steps.
    """
    now = int(time.time()) if now is None else now
    ops, info = _base_ops(chain, owners, now)
    with tempfile.TemporaryDirectory(prefix="pegx-recover-") as tmp:
        scratch = Exchange(Store(Path(tmp) / LEDGER_DIR))
        try:
            scratch.commit(ops)
            trades, rows = _plan_trades(scratch, targets)
            scratch.commit(trades)
            _check_targets(scratch, targets)
            pool = scratch.balance(POOL)
            digest = scratch.digest()
        finally:
            scratch.close()
    plan = {**info, "users": rows, "trades": len(trades), "pool_after": pool,
            "dry_run": dry_run, "ops": len(ops) + len(trades)}
    if dry_run:
        return plan
    ledger_path = Path(datadir) / LEDGER_DIR
    store = Store(ledger_path)
    try:
        ledger = Exchange(store)
    except BaseException:
        store.close()
        raise
    try:
        if ledger.tables["inputs"] or ledger.tables["claims"] or ledger.matrix.any():
            raise ToolError(f"ledger {ledger_path} is not empty: recover rebuilds a lost ledger; "
                            f"move the old one away first (and keep it)")
        ledger.commit(ops + trades)
        _check_targets(ledger, targets)
        if ledger.digest() != digest:
            raise ToolError("the rebuilt ledger differs from the checked plan")  # cannot happen
    finally:
        ledger.close()
    log.info("ledger rebuilt in %s: %d users, %d inputs", datadir, len(rows), info["outputs"])
    return plan


def _check_targets(ledger: Exchange, targets: dict[str, tuple[int, int]]) -> None:
    for user, (liquid, reserve) in targets.items():
        bal = ledger.balance(user) or {"liquid": 0, "reserve": 0}
        if (bal["liquid"], bal["reserve"]) != (liquid, reserve):
            raise ToolError(f"{user}: the plan gives liquid {bal['liquid']:,d} / reserve "
                            f"{bal['reserve']:,d} sat, the record says {liquid:,d} / "
                            f"{reserve:,d}")


def ledger_state(ledger: Exchange) -> dict:
    """What verify-backup prints about a ledger."""
    state = ledger.store.state() or {}
    return {"format": state.get("format", "none (never checkpointed)"),
            "checkpoint_seq": ledger.ckpt_seq,
            "op_seq": ledger.seq, "replayed": ledger.replayed,
            "accounts": len([n for n in ledger.names if n not in (POOL, WITHDRAWS, HOUSE)]),
            "inputs": len(ledger.tables["inputs"]),
            "withdraws_pending": len(ledger.tables["withdraws"]), "supply": ledger.supply,
            "cycle": int(ledger.meta.get("cycle", 0) or 0),
            "exchange": ledger.exchange_balance(), "digest": ledger.digest()}
