"""The replication key: 32 random bytes in a file only its owner can read, on both machines.

The file holds the key as 64 hex digits (what ``pegx replication-key generate`` writes) or as
base64 (44 characters); surrounding whitespace is ignored. A key file that the group or others
can read is refused, as ssh refuses such a private key: whoever reads it can feed a standby
records or fence a primary. The key never goes over the wire (pegx.replication.wire proves
knowledge of it with HMAC-SHA256 challenges).
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from pathlib import Path

KEY_BYTES = 32


class KeyError_(ValueError):
    """The key file is missing, unreadable, too open or does not hold a 32-byte key."""


def generate(path: str | os.PathLike) -> None:
    """Write a new random key to ``path`` (mode 0600, hex); never overwrites a file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyError_(f"{path} exists; refusing to overwrite a key") from None
    except OSError as exc:
        raise KeyError_(f"cannot create {path}: {exc}") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(os.urandom(KEY_BYTES).hex() + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read(path: str | os.PathLike) -> bytes:
    """The 32-byte key in ``path``; KeyError_ with what to do otherwise."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except OSError as exc:
        raise KeyError_(f"cannot read the replication key file {path}: {exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyError_(f"the replication key file {path} is readable by others (mode "
                        f"{stat.S_IMODE(mode):04o}): chmod 600 {path}")
    key = None
    if len(text) == 2 * KEY_BYTES:
        try:
            key = bytes.fromhex(text)
        except ValueError:
            key = None
    if key is None:
        try:
            key = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            key = None
    if key is None or len(key) != KEY_BYTES:
        raise KeyError_(f"{path} does not hold a {KEY_BYTES}-byte key (64 hex digits or "
                        f"base64); make one with `pegx replication-key generate {path}`")
    return key
