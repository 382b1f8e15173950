"""The signed API(command) call end to end: `pegx api-key` + a daemon started with --allow-exec.

Signatures are made here with ``ecdsa`` from the documented steps (PegAPI.txt, ORIGINAL §1.3):
``sig = base64(DER ECDSA secp256k1 over SHA-256 of txhash(code))``, public key uncompressed hex,
and txhash computed here too (double SHA-256 of the UTF-8 code, byte-reversed, hex), so the
daemon is checked against the scheme, not against itself. "Nothing ran" is proved with a side
effect: every command would Trade to ``bobby``.
"""

import base64
import hashlib
import os
import stat

import ecdsa
import pytest
from ecdsa.util import sigencode_der

from harness import cli
from harness.daemon import Daemon

SIGNATURE_FAILED = "Signature failed"
SENT_PREVIOUSLY = "Command sent previously"


def txhash(code: str) -> str:
    """pybitcointools' txhash of a non-hex string, written out from its definition."""
    return hashlib.sha256(hashlib.sha256(code.encode()).digest()).digest()[::-1].hex()


def sign(code: str, sk: ecdsa.SigningKey) -> str:
    der = sk.sign_deterministic(txhash(code).encode(), hashfunc=hashlib.sha256,
                                sigencode=sigencode_der)
    return base64.b64encode(der).decode()


def trade_code(nonce: int, amount: int) -> str:
    return f"nonce={nonce}\nresult = api.Trade('alice', {amount}, 'bobby')"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """A key pair from `pegx api-key generate`, read back as an ecdsa key."""
    path = tmp_path_factory.mktemp("keys") / "api.key"
    code, out = cli("api-key", "generate", "--out", str(path))
    assert code == 0, out
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    priv_hex, pub_hex = path.read_text().split()
    sk = ecdsa.SigningKey.from_string(bytes.fromhex(priv_hex), curve=ecdsa.SECP256k1)
    assert pub_hex == "04" + sk.get_verifying_key().to_string().hex()
    assert pub_hex in out
    return path, sk, pub_hex


def bobby(x) -> int:
    """bobby's total balance (a restart's recompute may move liquid to reserve, not the sum)."""
    bal = x.GetBalance("bobby")
    return 0 if bal is False else bal["liquid"] + bal["reserve"]


def test_api_key_commands(tmp_path, keys):
    _, _, pub = keys
    d = str(tmp_path / "d")
    assert cli("api-key", "show", "--datadir", d)[0] == 1
    code, out = cli("api-key", "install", "04" + "00" * 64, "--datadir", d)
    assert code == 1 and "not a secp256k1 point" in out
    code, out = cli("api-key", "install", pub, "--datadir", d)
    assert code == 0 and "--allow-exec" in out
    assert cli("api-key", "show", "--datadir", d) == (0, pub + "\n")
    assert cli("api-key", "remove", "--datadir", d)[0] == 0
    assert cli("api-key", "show", "--datadir", d)[0] == 1
    code, out = cli("api-key", "generate", "--out", str(keys[0]))
    assert code == 1 and "refusing to overwrite" in out


def test_signed_exec_end_to_end(tmp_path, keys):
    key_file, sk, pub = keys
    datadir = tmp_path / "d"
    assert cli("api-key", "install", pub, "--datadir", str(datadir))[0] == 0
    other = ecdsa.SigningKey.generate(curve=ecdsa.SECP256k1)

    with Daemon(datadir, extra=["--allow-exec"]) as d:
        x = d.proxy()
        d.fund("alice", 10**10)
        assert x.pegx.status()["exec_enabled"] is True

        code = trade_code(1, 1000)
        good = {"sig": sign(code, sk), "exec": code}
        refused = [
            ({"sig": sign(code, other), "exec": code}, "a wrong key"),
            ({"sig": good["sig"], "exec": code.replace("1000", "9000")}, "a tampered code"),
            ({"sig": good["sig"][:-12], "exec": code}, "a truncated signature"),
            ({"sig": good["sig"][:-4] + "!!!!", "exec": code}, "a non-base64 signature"),
            ({"sig": "", "exec": code}, "an empty signature"),
            ({"exec": code}, "no signature"),
            ({"sig": good["sig"]}, "no code"),
            ({"sig": good["sig"], "exec": 7}, "code not a str"),
            ([good["sig"], code], "not a struct"),
        ]
        for command, why in refused:
            assert x.API(command) == SIGNATURE_FAILED, why
            assert bobby(x) == 0, f"{why}: the command ran"

        assert x.API(good) is True  # Trade's own result
        assert bobby(x) == 1000
        assert x.API(good) == SENT_PREVIOUSLY
        assert bobby(x) == 1000

        # the CLI signs with a nonce line and prints the result
        code_, out = cli("exec", "--url", d.url, "--key", str(key_file),
                         "b = ledger.balance('bobby')\nresult = b['liquid'] + b['reserve']")
        assert code_ == 0 and out.strip() == "1000", out
        code_, out = cli("exec", "--url", d.url, "--key", str(key_file), "--nonce", "5",
                         "result = 1 // 0")
        assert code_ == 1 and "ZeroDivisionError" in out
        code_, out = cli("exec", "--url", d.url, "--key", str(key_file), "--nonce", "5",
                         "result = 1 // 0")
        assert code_ == 1 and SENT_PREVIOUSLY in out

    # exec off (no --allow-exec): a correctly signed new command does nothing
    fresh = trade_code(2, 2000)
    with Daemon(datadir) as d:
        x = d.proxy()
        assert x.pegx.status()["exec_enabled"] is False
        assert x.API({"sig": sign(fresh, sk), "exec": fresh}) is False
        assert bobby(x) == 1000

    # the replay record survives restarts; the new command was not burnt by the refusal
    with Daemon(datadir, extra=["--allow-exec"]) as d:
        x = d.proxy()
        assert x.API(good) == SENT_PREVIOUSLY
        assert bobby(x) == 1000
        assert x.API({"sig": sign(fresh, sk), "exec": fresh}) is True
        assert bobby(x) == 3000

    # --allow-exec without an installed key: still off
    assert cli("api-key", "remove", "--datadir", str(datadir))[0] == 0
    with Daemon(datadir, extra=["--allow-exec"]) as d:
        x = d.proxy()
        third = trade_code(3, 3000)
        assert x.API({"sig": sign(third, sk), "exec": third}) is False
        assert bobby(x) == 3000
