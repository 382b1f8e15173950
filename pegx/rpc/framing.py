"""Where an HTTP/1.1 request ends: the one rule the transport frames requests with and the
handler refuses requests with, so the two can never disagree on where a body ends (a refused
request's body must never be read as the next request: issue 10 item 8)."""

from __future__ import annotations

import email.message
import http.client
import io
import re

_DIGITS = re.compile(r"[0-9]{1,19}")  # int() would also take "+5", "1_0" and " 5 "
# the common head, read without the email parser (a third of a no-op call's cost): one
# Content-Length line of digits, no Transfer-Encoding; anything else takes the full parse
_LINE = re.IGNORECASE | re.MULTILINE
_LENGTH_LINE = re.compile(rb"^content-length:[ \t]*([0-9]{1,19})[ \t]*\r?$", _LINE)
_EXPECT_LINE = re.compile(rb"^expect:[ \t]*100-continue[ \t]*\r?$", _LINE)

COMPLETE, INCOMPLETE, TOO_LARGE = "complete", "incomplete", "too large"


def body_length(headers: email.message.Message, max_body: int) -> int | None | tuple[int, str]:
    """The body length a request announces: an int, None (no Content-Length), or the
    ``(status, reason)`` to refuse it with (its framing cannot be trusted)."""
    if headers.get("transfer-encoding") is not None:
        return 501, "Transfer-Encoding is not supported: send a Content-Length"
    values = {v.strip() for v in headers.get_all("content-length") or ()}
    if not values:
        return None
    if len(values) > 1:
        return 400, "conflicting Content-Length headers"
    value = values.pop()
    if not _DIGITS.fullmatch(value):
        return 400, "bad Content-Length"
    if int(value) > max_body:
        return 413, f"request body larger than {max_body:,d} bytes"
    return int(value)


def framing(head: bytes, max_body: int) -> tuple[int, bool, bool]:
    """For a complete request head: (body bytes that follow it, framing trusted, the client
    waits for ``100 Continue``). An untrusted framing reads no body: the handler refuses the
    request and the connection is closed after the answer.

    The handler checks that its own reading of the head consumes exactly the bytes framed
    here, and refuses (and closes) if not, so the quick path can never let a body through.
    """
    line_end = head.find(b"\n") + 1
    words = head[:line_end].split()
    version_11 = len(words) == 3 and words[2] == b"HTTP/1.1"
    fields = head[line_end:]
    low = fields.lower()
    if b"transfer-encoding" not in low and low.count(b"content-length") == 1:
        match = _LENGTH_LINE.search(fields)
        if match is not None and int(match[1]) <= max_body:
            expect = version_11 and b"expect" in low and _EXPECT_LINE.search(fields) is not None
            return int(match[1]), True, expect
    try:
        headers = http.client.parse_headers(io.BytesIO(head[line_end:]))
    except http.client.HTTPException:  # too many headers: the handler refuses it
        return 0, False, False
    length = body_length(headers, max_body)
    if not isinstance(length, int):
        return 0, False, False
    return length, True, version_11 and headers.get("expect", "").lower() == "100-continue"


class RequestParser:
    """Finds the end of one request in a connection's growing buffer, resuming where it
    stopped (a client trickling one byte at a time costs no rescan)."""

    def __init__(self, max_head: int, max_body: int):
        self.max_head, self.max_body = max_head, max_body
        self.reset()

    def reset(self) -> None:
        self.scan = self.lines = 0
        self.head_end: int | None = None
        self.need = 0
        self.framed = False
        self.expect = False

    def feed(self, buf: bytearray) -> str:
        """COMPLETE once ``buf`` holds a whole request (``need`` bytes), TOO_LARGE for a head
        over ``max_head``, else INCOMPLETE."""
        if self.head_end is None:
            end = self._find_head(buf)
            if end is None or end > self.max_head:
                return TOO_LARGE if len(buf) > self.max_head else INCOMPLETE
            self.head_end = end
            length, self.framed, self.expect = framing(bytes(buf[:end]), self.max_body)
            self.need = end + length
        return COMPLETE if len(buf) >= self.need else INCOMPLETE

    def _find_head(self, buf: bytearray) -> int | None:
        # as http.server reads a request: the request line, then header lines up to the
        # first empty one ("\r\n" or "\n"); a blank request line ends the head at once
        while True:
            nl = buf.find(b"\n", self.scan)
            if nl < 0:
                return None
            line = buf[self.scan:nl + 1]
            self.scan = nl + 1
            self.lines += 1
            if self.lines == 1:
                if not line.split():
                    return self.scan
            elif line in (b"\r\n", b"\n"):
                return self.scan


def canned(status: int, reason: str, text: str) -> bytes:
    """A complete plain-text answer that closes the connection."""
    body = f"{text}\n".encode()
    return (f"HTTP/1.1 {status} {reason}\r\nServer: pegx\r\nContent-Type: text/plain; "
            f"charset=utf-8\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode() + body
