"""Online and offline backups of a datadir, and restoring one (PegAPI.txt, DESIGN §3).

Everything here works on the real parts (a :class:`pegx.ledger.store.Store`, the datadir's
files) and is used two ways: inside the daemon through ``pegx.backup`` (it holds the only
LevelDB handle), or on a stopped daemon's datadir by ``pegx backup``.

Backup layout (``DEST/``): ``ledger/`` (a LevelDB copied from a snapshot), the devnet chain's
action log where the datadir has it (:mod:`pegx.chain.devnet.files`; cut after its last
complete line), the datadir's ``pegx.toml`` and ``api_public_key`` when present, and ``backup.json``, written last: a backup without it is
incomplete. The devnet log is copied *after* the ledger snapshot on purpose: a chain that is a
little ahead of the ledger is what a restart after a crash looks like, and the cycle thread
catches up; a ledger ahead of its chain would hold inputs the chain never saw. A backup copies
the ledger's records as they are, whatever its format version: the pegx that opens a restored
ledger of an older format upgrades it (:mod:`pegx.ledger.migrate`).
"""

from __future__ import annotations

import copy
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

from pegx.admin.offline import LEDGER_DIR, ToolError
from pegx.chain.devnet import files as devnet_files
from pegx.chain.devnet.log import fsync_path
from pegx.ledger.store import Store

log = logging.getLogger(__name__)

BACKUP_FORMAT = "pegx-backup"
BACKUP_VERSION = 1
MANIFEST = "backup.json"
CONFIG_FILES = ("pegx.toml", "api_public_key")


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
        devnet = devnet_files.copy_log(datadir, dest)  # same place as in the datadir
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
        devnet_files.copy_tree(src, tmp)
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
