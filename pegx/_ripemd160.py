"""RIPEMD-160 in pure Python, used only when hashlib lacks it.

OpenSSL 3 moved RIPEMD-160 into its "legacy" provider, so on some systems
``hashlib.new('ripemd160')`` raises ValueError. Addresses need it, so
``pegx.crypto`` falls back to this module then. It follows the algorithm's
specification (Dobbertin, Bosselaers, Preneel, 1996): two parallel lines of
five 16-step rounds over 512-bit little-endian blocks. Speed does not matter
here: it hashes 32-byte SHA-256 digests.
"""

from __future__ import annotations

import struct

_MASK = 0xFFFFFFFF

# Message word order. Round k of the left line reads words rho^k(i); the right
# line reads rho^k(pi(i)) with pi(i) = 9i + 5 mod 16 (specification, section 3).
_RHO = (7, 4, 13, 1, 10, 6, 15, 3, 12, 0, 9, 5, 2, 14, 11, 8)


def _orders() -> tuple[list[int], list[int]]:
    left: list[int] = []
    right: list[int] = []
    row_l = list(range(16))
    row_r = [(9 * i + 5) % 16 for i in range(16)]
    for _ in range(5):
        left += row_l
        right += row_r
        row_l = [_RHO[x] for x in row_l]
        row_r = [_RHO[x] for x in row_r]
    return left, right


_R_LEFT, _R_RIGHT = _orders()

# Left-rotation amounts per step (80 each), from the specification's tables.
_S_LEFT = (
    11, 14, 15, 12, 5, 8, 7, 9, 11, 13, 14, 15, 6, 7, 9, 8,
    7, 6, 8, 13, 11, 9, 7, 15, 7, 12, 15, 9, 11, 7, 13, 12,
    11, 13, 6, 7, 14, 9, 13, 15, 14, 8, 13, 6, 5, 12, 7, 5,
    11, 12, 14, 15, 14, 15, 9, 8, 9, 14, 5, 6, 8, 6, 5, 12,
    9, 15, 5, 11, 6, 8, 13, 12, 5, 12, 13, 14, 11, 8, 5, 6,
)  # fmt: skip
_S_RIGHT = (
    8, 9, 9, 11, 13, 15, 15, 5, 7, 7, 8, 11, 14, 14, 12, 6,
    9, 13, 15, 7, 12, 8, 9, 11, 7, 7, 12, 7, 6, 15, 13, 11,
    9, 7, 15, 11, 8, 6, 6, 14, 12, 13, 5, 14, 13, 13, 7, 5,
    15, 5, 8, 11, 14, 14, 6, 14, 6, 9, 12, 9, 12, 5, 15, 8,
    8, 5, 12, 9, 12, 5, 14, 6, 8, 13, 6, 5, 15, 13, 11, 11,
)  # fmt: skip

# Round constants: floor(2^30 * sqrt / cbrt of small primes), per the specification.
_K_LEFT = (0x00000000, 0x5A827999, 0x6ED9EBA1, 0x8F1BBCDC, 0xA953FD4E)
_K_RIGHT = (0x50A28BE6, 0x5C4DD124, 0x6D703EF3, 0x7A6D76E9, 0x00000000)


def _f(rnd: int, x: int, y: int, z: int) -> int:
    # The five boolean functions; the right line uses them in reverse order.
    if rnd == 0:
        return x ^ y ^ z
    if rnd == 1:
        return (x & y) | (~x & z)
    if rnd == 2:
        return (x | ~y) ^ z
    if rnd == 3:
        return (x & z) | (y & ~z)
    return x ^ (y | ~z)


def _rol(x: int, n: int) -> int:
    x &= _MASK
    return ((x << n) | (x >> (32 - n))) & _MASK


def _compress(h: list[int], block: bytes) -> None:
    words = struct.unpack("<16I", block)
    al, bl, cl, dl, el = h
    ar, br, cr, dr, er = h
    for j in range(80):
        rnd = j // 16
        t = _rol(al + _f(rnd, bl, cl, dl) + words[_R_LEFT[j]] + _K_LEFT[rnd], _S_LEFT[j]) + el
        al, el, dl, cl, bl = el, dl, _rol(cl, 10), bl, t & _MASK
        t = (
            _rol(ar + _f(4 - rnd, br, cr, dr) + words[_R_RIGHT[j]] + _K_RIGHT[rnd], _S_RIGHT[j])
            + er
        )
        ar, er, dr, cr, br = er, dr, _rol(cr, 10), br, t & _MASK
    t = (h[1] + cl + dr) & _MASK
    h[1] = (h[2] + dl + er) & _MASK
    h[2] = (h[3] + el + ar) & _MASK
    h[3] = (h[4] + al + br) & _MASK
    h[4] = (h[0] + bl + cr) & _MASK
    h[0] = t


def ripemd160(data: bytes) -> bytes:
    """The 20-byte RIPEMD-160 digest of ``data``."""
    h = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0]
    # MD4-style padding: 0x80, zeros to 56 mod 64, then the bit length (little-endian).
    padded = bytes(data) + b"\x80" + b"\x00" * ((55 - len(data)) % 64)
    padded += struct.pack("<Q", (8 * len(data)) & 0xFFFFFFFFFFFFFFFF)
    for off in range(0, len(padded), 64):
        _compress(h, padded[off : off + 64])
    return struct.pack("<5I", *h)
