"""The operator's commands: api-key, exec, backup, restore, verify-backup, audit, recover.

``register(main)`` attaches them to the ``pegx`` click group (cli.py calls it at import).
Commands that need the ledger go through the running daemon when one serves the datadir (it
holds the only LevelDB handle) and open the datadir directly when none does.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import click

from pegx import crypto
from pegx.admin import audit, backup, offline, recover
from pegx.admin.offline import ToolError
from pegx.chain.devnet import files as devnet_files
from pegx.chain.devnet.log import DevnetLogError
from pegx.cli.client import Client, client_options, fail
from pegx.config import ConfigError, load
from pegx.ledger.audit import MAX_LISTED
from pegx.ledger.store import LedgerLocked, Store, StoreError
from pegx.ledger.store import in_use as ledger_in_use
from pegx.rpc.execapi import SENT_PREVIOUSLY, SIGNATURE_FAILED

PUBLIC_KEY_FILE = "api_public_key"  # the name pegx.app reads at start-up
TRACEBACK = "Traceback (most recent call last)"

datadir_option = click.option("--datadir", help="The datadir [default: $PEGX_DATADIR or "
                              "~/.pegx].")


def _config(datadir: str | None):
    try:
        return load({"datadir": datadir})
    except ConfigError as exc:
        fail(str(exc))


def _route(client: Client):
    """("rpc", client) when a daemon serves the datadir, else ("local", cfg).

    With --datadir, the datadir is opened directly unless its ledger is in use, in which case
    the daemon the client options find (the datadir's pegx.toml gives its port) must be the
    one serving it. Without --datadir, that daemon is used if it answers, else the datadir
    ($PEGX_DATADIR or ~/.pegx) is opened.
    """
    cfg = client.config()
    if client.datadir is None:
        return ("rpc", client) if client.answers() else ("local", cfg)
    if not ledger_in_use(cfg.ledger_path):
        return "local", cfg
    if not client.answers():
        fail(f"the ledger in {cfg.path} is in use, but no pegx daemon answers at {client.url} "
             f"(pass the daemon's --url or --port)")
    served = Path(client.call("pegx.status", client.password, strict=True)["datadir"]).resolve()
    if served != cfg.path.resolve():
        fail(f"the daemon at {client.url} serves {served}, not {cfg.path}; pass its --url or "
             f"--port")
    return "rpc", client


# ------------------------------------------------------------------------------- api keys
@click.group("api-key", short_help="Manage the key that enables the signed exec call.")
def api_key() -> None:
    """Manage the public key that enables the signed API(command) exec call.

    Exec needs access to the machine: the key lives in the datadir and exec runs only when the
    daemon starts with --allow-exec (or allow_exec = true in pegx.toml). Changes take effect at
    the next start.
    """


@api_key.command("generate", short_help="Make a new key pair (private key mode 0600).")
@click.option("--out", "out", default="pegx-api.key", show_default=True,
              type=click.Path(dir_okay=False), help="Where to write the private key (0600).")
@click.option("--print-private", is_flag=True, help="Also print the private key (hex).")
def key_generate(out: str, print_private: bool) -> None:
    """Make a new key pair: the private key goes to --out with mode 0600, never overwritten."""
    priv = crypto.new_private_key()
    pub = crypto.public_key(priv, compressed=False).hex()
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        fail(f"{out} exists; refusing to overwrite a key")
    with os.fdopen(fd, "w") as fh:
        # line 1 the private key, line 2 its public key (the original's key files had the
        # public key on the second line)
        fh.write(f"{priv.hex()}\n{pub}\n")
    click.echo(f"public key:  {pub}")
    click.echo(f"private key: written to {out} (mode 0600)")
    if print_private:
        click.echo(f"private key: {priv.hex()}")
    click.echo(f"enable exec: pegx api-key install {pub} --datadir DIR, then start the daemon "
               f"with --allow-exec")


@api_key.command("install", short_help="Install PUBHEX as the exec public key.")
@click.argument("pubhex")
@datadir_option
def key_install(pubhex: str, datadir: str | None) -> None:
    """Install PUBHEX (04... uncompressed or 02/03... compressed) as the exec public key."""
    try:
        crypto.parse_public_key(pubhex)
    except crypto.CryptoError as exc:
        fail(str(exc))
    cfg = _config(datadir)
    cfg.path.mkdir(mode=0o700, parents=True, exist_ok=True)  # as `pegx serve` makes it
    path = cfg.path / PUBLIC_KEY_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(pubhex.strip().lower() + "\n")
    os.replace(tmp, path)
    click.echo(f"installed {path}; it takes effect at the next start, and exec runs only with "
               f"--allow-exec (or allow_exec = true in pegx.toml)")


@api_key.command("show")
@datadir_option
def key_show(datadir: str | None) -> None:
    """Print the installed exec public key (exit 1 if none)."""
    path = _config(datadir).path / PUBLIC_KEY_FILE
    if not path.is_file() or not path.read_text().strip():
        fail(f"no exec public key installed in {path.parent}")
    click.echo(path.read_text().strip())


@api_key.command("remove")
@datadir_option
def key_remove(datadir: str | None) -> None:
    """Remove the exec public key (exec stays off from the next start)."""
    path = _config(datadir).path / PUBLIC_KEY_FILE
    if not path.exists():
        fail(f"no exec public key installed in {path.parent}")
    path.unlink()
    click.echo(f"removed {path}; exec is disabled from the next start")


def _private_key(path: str) -> bytes:
    """The private key from a key file: the first line, 64 hex digits or a WIF."""
    lines = [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    try:
        if len(text) == 64:
            return bytes.fromhex(text)
        return crypto.wif_to_private_key(text)[0]
    except (ValueError, crypto.CryptoError) as exc:
        fail(f"{path}: not a private key (64 hex digits or WIF): {exc}")


def sign_command(code: str, priv: bytes) -> dict:
    """The API(command) struct for ``code``: base64 DER signature over txhash(code)."""
    sig = crypto.sign_message(crypto.txhash(code), priv)
    return {"sig": base64.b64encode(sig).decode("ascii"), "exec": code}


@click.command("exec", short_help="Sign CODE and run it with the API(command) call.")
@client_options(password=False)
@click.option("--key", "key_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The private key file (from `pegx api-key generate`).")
@click.option("--file", "code_file", type=click.File("r"), help="Read the code from a file.")
@click.option("--nonce", type=int, help="Nonce for the added first line [default: time in ns].")
@click.argument("code", required=False)
def exec_cmd(client: Client, key_file: str, code_file, nonce: int | None,
             code: str | None) -> None:
    """Sign CODE (or --file) with a nonce line, send it to API(command), print the result.

    The code reports back by setting `result`; it sees `api`, `ledger`, `chain` and `cycle`.
    """
    if (code is None) == (code_file is None):
        fail("give the code either as an argument or with --file")
    body = code if code is not None else code_file.read()
    nonce = time.time_ns() if nonce is None else nonce
    command = sign_command(f"nonce={nonce}\n{body}", _private_key(key_file))
    result = client.call("API", command)  # API answers strings: its results, not refusals
    if result is False:
        fail("exec is disabled on this daemon (pegx api-key install, then --allow-exec)")
    if result in (SIGNATURE_FAILED, SENT_PREVIOUSLY):
        fail(result)
    if isinstance(result, str) and result.startswith(TRACEBACK):
        click.echo(result, err=True)
        sys.exit(1)
    click.echo(json.dumps(result, indent=2, sort_keys=True, default=str))


# ------------------------------------------------------------------------------- backups
@click.command("backup", short_help="Write a consistent copy of the ledger to DEST.")
@click.argument("dest", type=click.Path(file_okay=False))
@client_options
def backup_cmd(dest: str, client: Client) -> None:
    """Write a consistent copy of the ledger (and devnet chain) to DEST, even while serving."""
    dest = str(Path(dest).resolve())
    how, target = _route(client)
    if how == "rpc":
        job = target.call("pegx.backup", dest, target.password, strict=True)
        with click.progressbar(length=max(job["total"], 1), label="backup") as bar:
            shown = 0
            while True:
                job = target.call("pegx.backup_progress", job["id"], target.password,
                                  strict=True)
                done = min(job["copied"], bar.length)
                bar.update(done - shown)
                shown = done
                if job["done"]:
                    bar.update(bar.length - shown)
                    break
                time.sleep(0.1)
        if job["error"]:
            fail(job["error"])
        manifest = job["result"]
    else:
        try:
            with (Store(target.ledger_path, create=False) as store,
                  click.progressbar(length=max(store.approximate_size(), 1),
                                    label="backup") as bar):
                manifest = backup.backup(store, target.path, dest,
                                        lambda n: bar.update(min(n, bar.length)))
        except (StoreError, ToolError, OSError) as exc:
            fail(str(exc))
    click.echo(f"backup written to {dest}: {manifest['ledger_records']:,d} ledger records, "
               f"{manifest['ledger_bytes']:,d} bytes"
               + (f", devnet {manifest['devnet']['lines']:,d} actions"
                  if manifest.get("devnet") else ""))


@click.command("restore")
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@datadir_option
def restore_cmd(src: str, datadir: str | None) -> None:
    """Restore the backup SRC into an empty datadir."""
    cfg = _config(datadir)
    try:
        backup.restore(src, cfg.path)
    except (ToolError, OSError) as exc:
        fail(str(exc))
    click.echo(f"restored {src} into {cfg.path}; check it with `pegx audit --datadir "
               f"{cfg.path}`, then start it with `pegx serve --datadir {cfg.path}`")


@click.command("verify-backup", short_help="Open a backup read-only and audit it.")
@click.argument("dest", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the state and audit as JSON.")
def verify_backup_cmd(dest: str, as_json: bool) -> None:
    """Open the backup DEST read-only, print its state and audit it (against its devnet copy)."""
    try:
        manifest = backup.read_manifest(Path(dest))
        with tempfile.TemporaryDirectory(prefix="pegx-verify-") as tmp:
            chain = None
            if devnet_files.copy_tree(Path(dest), Path(tmp)):  # audit against a copy of its chain
                chain = offline.open_devnet(Path(tmp))
            try:
                with offline.opened(Path(dest), read_only=True) as ledger:
                    state = offline.ledger_state(ledger)
                    report = audit.audit(ledger, chain)
            finally:
                if chain is not None:
                    chain.close()
    except (StoreError, ToolError, OSError, ValueError) as exc:
        fail(f"{dest}: {exc}")
    if as_json:
        click.echo(json.dumps({"manifest": manifest, "state": state, "audit": report},
                              indent=2, sort_keys=True))
    else:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(manifest["created"]))
        click.echo(f"backup of {manifest['source']} taken {when}")
        for k, v in state.items():
            click.echo(f"  {k:<18} {v:,d}" if isinstance(v, int) else f"  {k:<18} {v}")
        _print_audit(report)
    sys.exit(0 if report["ok"] else 1)


# ------------------------------------------------------------------------------- audit
def _fmt(v) -> str:
    return f"{v:,d}" if isinstance(v, int) else str(v)


def _print_audit(report: dict) -> None:
    cols = report["columns"]
    click.echo("  ".join([cols[0].rjust(6)] + [c.rjust(16) for c in cols[1:]]))
    for step, *amounts in report["steps"][:MAX_LISTED]:
        click.echo("  ".join([str(step).rjust(6)]
                             + [_fmt(v).rjust(16) for v in amounts]))
    if len(report["steps"]) > MAX_LISTED:
        click.echo(f"... {len(report['steps']) - MAX_LISTED:,d} more steps differ")
    totals = report["totals"]
    click.echo("  ".join(["total".rjust(6)] + [_fmt(totals[c]).rjust(16) for c in cols[1:]]))
    s = report["summary"]
    click.echo(f"{s['accounts']:,d} users, {s['inputs']:,d} inputs ({s['in_flight']:,d} in "
               f"flight), {s['withdraws_pending']:,d} pending withdraws, supply {s['supply']}, "
               f"cycle {s['cycle']}, op {s['op_seq']:,d}; liquid assigned "
               f"{s['liquid_assigned']:,d} of {s['exchange_liquid']:,d} sat")
    for note in report["notes"]:
        click.echo(f"note: {note}")
    for alarm in report.get("reorganisations", []):
        for line in alarm["changed"]:
            click.echo(f"reorganisation at {alarm['fork'] + 1:,d}: {line}")
    if report["ok"]:
        click.echo("audit OK: every step balances and every invariant holds")
        return
    click.echo(f"audit FAILED: {len(report['problems'])} problem(s)")
    for text in report["problems"]:
        click.echo(f"  - {text}")


@click.command("audit", short_help="Check the ledger against the chain; exit 1 on a problem.")
@client_options
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
def audit_cmd(client: Client, as_json: bool) -> None:
    """Check conservation and every ledger invariant against the chain; exit 1 on any problem."""
    how, target = _route(client)
    if how == "rpc":
        report = target.call("pegx.audit", target.password, strict=True)
    else:
        try:
            chain = offline.open_chain(target)
            try:
                with offline.opened(target.path) as ledger:
                    report = audit.audit(ledger, chain)
            finally:
                if chain is not None:
                    chain.close()
        except LedgerLocked as exc:
            fail(f"{exc} (or run `pegx audit --url` against that daemon)")
        except (StoreError, DevnetLogError, ToolError, OSError) as exc:
            fail(str(exc))
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        _print_audit(report)
    sys.exit(0 if report["ok"] else 1)


# ------------------------------------------------------------------------------- recover
@click.command("recover", short_help="Rebuild a lost ledger from a CSV of balances.")
@click.argument("csv_file", metavar="CSV", type=click.Path(exists=True, dir_okay=False))
@datadir_option
@click.option("--dry-run", is_flag=True, help="Show the plan, change nothing.")
def recover_cmd(csv_file: str, datadir: str | None, dry_run: bool) -> None:
    """Rebuild a lost ledger from CSV (user,liquid,reserve[,deposits]) and the chain's wallet.

    Every user gets exactly their recorded liquid and reserve back (PegAPI.txt's recovery:
    the exchange's other funds go to the pool, known deposits go back to their users, then the
    pool settles the differences). Run with the daemon stopped; the datadir's ledger must be
    empty or absent. Exchange settings (accounts, fee account, commission) must be set again.
    """
    cfg = _config(datadir)
    try:
        targets, owners = recover.read_balances_csv(csv_file)
        chain = offline.open_chain(cfg)
        if chain is None:
            fail(f"no chain data in {cfg.path} to rebuild the ledger from")
        try:
            plan = recover.recover(cfg.path, chain, targets, owners, dry_run=dry_run)
        finally:
            chain.close()
    except (StoreError, DevnetLogError, ToolError, OSError) as exc:
        fail(str(exc))
    click.echo(f"chain height {plan['height']:,d}, cycle {plan['cycle']}, supply "
               f"{plan['supply']}: {plan['outputs']:,d} wallet outputs to register")
    for key in plan["deposits_missing"]:
        click.echo(f"note: deposit {key} is not an unspent wallet output (spent or unknown)")
    pair = "{:>17,d} / {:<17,d}".format
    click.echo(f"{'user':<20} {'from deposits: liquid / reserve':^37} "
               f"{'recorded: liquid / reserve':^37} move liquid / reserve")
    for row in plan["users"]:
        f, t, m = row["from_deposits"], row["target"], row["moves"]
        click.echo(f"{row['user']:<20} {pair(*f)} {pair(*t)} {m[0]:+,d} / {m[1]:+,d}")
    pool = plan["pool_after"]
    click.echo(f"{plan['trades']:,d} trades; the pool keeps {pool['liquid']:,d} liquid and "
               f"{pool['reserve']:,d} reserve sat")
    if dry_run:
        click.echo("dry run: nothing was written")
    else:
        click.echo(f"ledger rebuilt in {cfg.ledger_path} ({plan['ops']:,d} operations, one "
                   f"atomic record); every user holds their recorded balance")


def register(main: click.Group) -> None:
    """Attach the operator's commands to the ``pegx`` group."""
    main.add_command(api_key)
    for cmd in (exec_cmd, backup_cmd, restore_cmd, verify_backup_cmd, audit_cmd, recover_cmd):
        main.add_command(cmd)
