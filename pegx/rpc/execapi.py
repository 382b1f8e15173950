"""The signed ``API(command)`` call: run operator-signed Python code in the daemon.

``command`` is ``{'sig': <base64 DER signature>, 'exec': <Python source>}``. The
signature is an ECDSA secp256k1 signature over SHA-256 of ``txhash(exec)`` (the
hex string), made with the operator's private key, exactly as the original's
``highlevelcrypto.sign(txhash(code), privkey)`` followed by ``base64.b64encode``
(PegAPI.txt). Put a nonce line in the code (``nonce=17``) so that each command
hashes differently: a hash is accepted only once.

Differences from the original (ORIGINAL §5 item 14), on purpose:

* the replay record is written only *after* the signature verifies, so a forged
  request cannot burn the hash of a legitimate command;
* the replay record goes through the caller's ``record`` callback, which is
  expected to make it durable before returning, so a replay is refused after a
  restart too;
* the call is off unless the operator both enables it and installs a public key.

This module is storage-agnostic: it never touches the ledger itself.

Namespace contract. ``namespace()`` is called once per accepted command and
must return a *fresh* dict of the globals the code may use (for example
``api`` for the PegAPI object and ``engine`` for the exchange). ``run`` then
sets ``result = True`` in it and executes the code with that dict as its
globals; the code reports back by rebinding ``result``, whose value ``run``
returns (it must be something XML-RPC can marshal). If the code raises,
``run`` returns ``traceback.format_exc()`` as a string, as the original did.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import threading
import traceback
from collections.abc import Callable
from typing import Any

from pegx.crypto import parse_public_key, txhash, verify_message

__all__ = ["SENT_PREVIOUSLY", "SIGNATURE_FAILED", "ExecAPI"]

log = logging.getLogger(__name__)

# The original's exact return strings; exchange code may compare against them.
SIGNATURE_FAILED = "Signature failed"
SENT_PREVIOUSLY = "Command sent previously"


class ExecAPI:
    """Verifies and runs signed ``API`` commands; see the module docstring."""

    def __init__(
        self,
        public_key_hex: str | None,
        enabled: bool,
        seen: Callable[[str], bool],
        record: Callable[[str], None],
        namespace: Callable[[], dict],
        lock: threading.Lock | contextlib.AbstractContextManager | None = None,
    ) -> None:
        """Install the operator's public key (hex, see ``crypto.parse_public_key``).

        ``seen(h)`` says whether command hash ``h`` already ran; ``record(h)`` must
        store it durably before returning. ``lock``, if given, is held while the
        code runs. A malformed public key raises CryptoError here, at start-up,
        rather than silently leaving the call disabled.
        """
        # An empty key means "not installed", as in the original (RPC.public == "").
        self._key = parse_public_key(public_key_hex) if public_key_hex else None
        self._enabled = bool(enabled)
        self._seen = seen
        self._record = record
        self._namespace = namespace
        self._lock = lock if lock is not None else contextlib.nullcontext()
        # Makes seen-then-record atomic, so two concurrent copies of one command
        # cannot both pass the replay check.
        self._replay_lock = threading.Lock()

    @property
    def active(self) -> bool:
        """True when the call is enabled and a public key is installed."""
        return self._enabled and self._key is not None

    def _verified_hash(self, command: object) -> str | None:
        """The command's txhash if its signature verifies, else None (and log why)."""
        if not isinstance(command, dict):
            log.warning("API command refused: not a struct (%s)", type(command).__name__)
            return None
        sig, code = command.get("sig"), command.get("exec")
        if not isinstance(sig, str) or not isinstance(code, str):
            log.warning("API command refused: 'sig' and 'exec' must both be strings")
            return None
        h = txhash(code)
        try:
            der = base64.b64decode(sig, validate=True)
        except (binascii.Error, ValueError):
            log.warning("API command %s refused: 'sig' is not valid base64", h[:16])
            return None
        if not verify_message(h, der, self._key):
            log.warning("API command %s refused: bad signature", h[:16])
            return None
        return h

    def run(self, command: Any) -> object:
        """Verify, replay-check, record and run one command; return its result.

        Returns False when the call is not active, "Signature failed" for anything
        not correctly signed, "Command sent previously" for a replay, the
        traceback string if the code raised, else the code's ``result``. An error
        from ``record`` propagates and the code does not run.
        """
        if not self.active:
            return False
        h = self._verified_hash(command)
        if h is None:
            return SIGNATURE_FAILED
        # Only a verified command may touch the replay record (ORIGINAL §5 item 14).
        with self._replay_lock:
            if self._seen(h):
                log.warning("API command %s refused: sent previously", h[:16])
                return SENT_PREVIOUSLY
            # Durable before running: a crash mid-run must not allow a second run.
            self._record(h)
        log.info("API command %s accepted, running", h[:16])
        ns = self._namespace()
        ns["result"] = True
        try:
            compiled = compile(command["exec"], "<API command>", "exec")
            with self._lock:
                exec(compiled, ns)  # noqa: S102 - the point of this call: operator-signed code
        except (Exception, SystemExit):  # the original returns any error as text
            # SystemExit too: a signed exit() must not take the server thread down.
            log.warning("API command %s raised", h[:16], exc_info=True)
            return traceback.format_exc()
        return ns.get("result")
