"""The XML-RPC transport, exercised only with the stock client (xmlrpc.client, http.client)."""

from __future__ import annotations

import http.client
import logging
import socket
import threading
import xmlrpc.client
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from harness import fault_of, wait_until
from pegx.rpc.server import (
    FAULT_BAD_PARAMS,
    FAULT_BAD_RESULT,
    FAULT_INTERNAL,
    FAULT_INVALID_REQUEST,
    FAULT_NO_METHOD,
    FAULT_PARSE,
    FAULT_USER,
    MAX_REQUEST_BYTES,
    CallError,
    RPCServer,
)


def echo(value):
    """Return the argument unchanged."""
    return value


def add(a, b):
    return a + b


def trade(user1, amount, user2, style="liquid", showdeduction=1):
    return f"{user1}>{amount}>{user2}>{style}>{showdeduction}"


def bad_amount(amount):
    raise ValueError(f"bad amount {amount!r}")


def concat(x):
    return x + "a"  # TypeError inside the body for an int: must not look like an arity error


def boom():
    raise Exception("secret internal detail")  # noqa: TRY002 - the plain-Exception case


def busy():
    raise CallError("Server is busy", code=7)


def nothing():
    return None


def big():
    return 10**15


def big_negative():
    return -(10**15)


def too_big():
    return 2**64


def nested():
    return {"a": [10**15, {"b": -(2**63), "c": 2**63 - 1}], "t": (1, (2, 3)), "ok": True}


def numpy_values():
    return [np.int64(10**12), np.uint8(7), np.int32(-5), np.bool_(True)]


def int_keys():
    return {1: "one"}


def control_char():
    return "nul\x00"


FUNCS = {
    "echo": echo, "add": add, "Trade": trade, "bad_amount": bad_amount, "concat": concat,
    "boom": boom, "busy": busy, "nothing": nothing, "big": big, "big_negative": big_negative,
    "too_big": too_big, "nested": nested, "numpy_values": numpy_values, "int_keys": int_keys,
    "control_char": control_char,
    "devnet.mine": lambda n=1: n, "pegx.status": lambda: {"ok": True},
}


def start(host: str = "127.0.0.1") -> RPCServer:
    server = RPCServer(host, 0)
    server.register_many(FUNCS)
    server.register("helped", echo, help="explicit help text")
    server.serve_in_thread()
    return server


@pytest.fixture(scope="module")
def server() -> Iterator[RPCServer]:
    """One server for the tests that do not read its counters."""
    srv = start()
    yield srv
    srv.stop()


@pytest.fixture
def fresh() -> Iterator[RPCServer]:
    """A server of its own, for exact counter checks."""
    srv = start()
    yield srv
    srv.stop()


def proxy(server: RPCServer, path: str = "/RPC2") -> xmlrpc.client.ServerProxy:
    return xmlrpc.client.ServerProxy(f"http://127.0.0.1:{server.address[1]}{path}",
                                     allow_none=True)


def post(server: RPCServer, body: bytes, path: str = "/RPC2",
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.address[1], timeout=10)
    try:
        conn.request("POST", path, body, headers or {"Content-Type": "text/xml"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def call_body(name: str, *params) -> bytes:
    return xmlrpc.client.dumps(params, name, allow_none=True).encode()


def test_binds_a_real_port_and_both_paths_work(server):
    assert server.address[0] == "127.0.0.1" and server.address[1] > 0
    assert proxy(server, "/RPC2").add(2, 3) == 5
    assert proxy(server, "/").add(2, 3) == 5
    # the stock client's default path is /RPC2
    bare = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{server.address[1]}")
    assert bare.echo("x") == "x"


def test_other_paths_are_404(server):
    with pytest.raises(xmlrpc.client.ProtocolError) as info:
        proxy(server, "/foo").add(1, 2)
    assert info.value.errcode == 404


def test_none_round_trips(server):
    assert proxy(server).echo(None) is None
    assert proxy(server).nothing() is None
    assert proxy(server).echo([None, 1, "s"]) == [None, 1, "s"]


def test_big_ints_are_i8_and_read_back_as_int(server):
    c = proxy(server)
    assert c.big() == 10**15
    assert c.big_negative() == -(10**15)
    status, body = post(server, call_body("big"))
    assert status == 200
    assert b"<i8>1000000000000000</i8>" in body
    status, body = post(server, call_body("add", 2, 3))
    assert b"<int>5</int>" in body  # small ints stay plain <int>


def test_nested_big_ints_tuples_numpy_and_bool(server):
    c = proxy(server)
    assert c.nested() == {"a": [10**15, {"b": -(2**63), "c": 2**63 - 1}],
                          "t": [1, [2, 3]], "ok": True}
    values = c.numpy_values()
    assert values == [10**12, 7, -5, True]
    assert type(values[3]) is bool and type(values[0]) is int


def test_result_beyond_i8_is_a_clean_fault_and_server_goes_on(server):
    c = proxy(server)
    f = fault_of(c.too_big)
    assert f.faultCode == FAULT_BAD_RESULT
    assert "18446744073709551616" in f.faultString and "i8" in f.faultString
    f = fault_of(c.int_keys)
    assert f.faultCode == FAULT_BAD_RESULT and "key" in f.faultString
    f = fault_of(c.control_char)  # would be XML the client cannot parse
    assert f.faultCode == FAULT_BAD_RESULT and "XML" in f.faultString
    f = fault_of(lambda: c.echo("nul\x00"))  # a stock client sends it raw: bad XML
    assert f.faultCode == FAULT_PARSE
    assert c.add(1, 1) == 2


def test_stock_client_marshaller_is_untouched(server):
    assert proxy(server).big() == 10**15  # the server marshalled an <i8> in this process
    with pytest.raises(OverflowError):
        xmlrpc.client.dumps((2**40,))


def test_wrong_arity_is_a_clean_fault(server):
    c = proxy(server)
    f = fault_of(lambda: c.add(1))
    assert f.faultCode == FAULT_BAD_PARAMS
    assert f.faultString == "add() takes exactly 2 arguments (1 given)"
    f = fault_of(lambda: c.Trade("alice", 5))
    assert f.faultString == "Trade() takes 3 to 5 arguments (2 given)"
    f = fault_of(lambda: c.Trade("a", 1, "b", "liquid", 1, "extra"))
    assert f.faultString == "Trade() takes 3 to 5 arguments (6 given)"
    assert c.Trade("alice", 5, "bobby") == "alice>5>bobby>liquid>1"


def test_errors_inside_methods(server, caplog):
    c = proxy(server)
    f = fault_of(lambda: c.concat(5))  # a TypeError raised by the body, not by the arity
    assert f.faultCode == FAULT_USER and f.faultString.startswith("TypeError: ")
    f = fault_of(lambda: c.bad_amount("x"))
    assert (f.faultCode, f.faultString) == (FAULT_USER, "ValueError: bad amount 'x'")
    f = fault_of(c.busy)
    assert (f.faultCode, f.faultString) == (7, "Server is busy")
    with caplog.at_level(logging.ERROR, logger="pegx.rpc.server"):
        f = fault_of(c.boom)
    assert (f.faultCode, f.faultString) == (FAULT_INTERNAL, "internal error (see the daemon log)")
    assert "secret" not in f.faultString
    logged = [r for r in caplog.records if r.exc_info and "boom" in r.getMessage()]
    assert logged and "secret internal detail" in str(logged[0].exc_info[1])
    assert c.add(1, 2) == 3


def test_unknown_method(server):
    f = fault_of(proxy(server).nope)
    assert (f.faultCode, f.faultString) == (FAULT_NO_METHOD, "method 'nope' is not supported")


@pytest.mark.parametrize("body, code", [
    (b"<methodCall><methodName>add</methodName><params", FAULT_PARSE),
    (b"\x00\xff garbage", FAULT_PARSE),
    (b"<foo/>", FAULT_INVALID_REQUEST),
    (b"<methodCall><params><param><value><int>x</int></value></param></params></methodCall>",
     FAULT_INVALID_REQUEST),
    ((b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><methodCall>'
      b"<methodName>echo</methodName><params><param><value>&a;</value></param></params>"
      b"</methodCall>"), FAULT_INVALID_REQUEST),
])
def test_malformed_requests_get_a_fault_and_server_goes_on(server, body, code):
    status, raw = post(server, body)
    assert status == 200
    assert b"Traceback" not in raw and b"File \"" not in raw
    with pytest.raises(xmlrpc.client.Fault) as info:
        xmlrpc.client.loads(raw)
    assert info.value.faultCode == code
    assert proxy(server).add(2, 2) == 4


def test_http_level_refusals(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.address[1], timeout=10)
    try:
        conn.putrequest("POST", "/RPC2")
        conn.putheader("Content-Length", str(MAX_REQUEST_BYTES + 1))
        conn.endheaders()
        resp = conn.getresponse()
        assert resp.status == 413
        assert b"Traceback" not in resp.read()
    finally:
        conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", server.address[1], timeout=10)
    try:
        conn.putrequest("POST", "/RPC2", skip_accept_encoding=True)
        conn.endheaders()  # no Content-Length at all
        assert conn.getresponse().status == 411
    finally:
        conn.close()
    status, _ = post(server, call_body("add", 1, 2),
                     headers={"Content-Encoding": "br", "Content-Type": "text/xml"})
    assert status == 415
    assert proxy(server).add(1, 2) == 3


def test_gzip_request_and_response(server):
    transport = xmlrpc.client.Transport()
    transport.encode_threshold = 0  # stock client gzips every request body
    c = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{server.address[1]}/RPC2",
                                  transport=transport)
    assert c.add(1, 2) == 3
    long_text = "x" * 10_000  # the answer is above the threshold: gzipped back
    assert c.echo(long_text) == long_text


def test_keep_alive_reuses_one_connection(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.address[1], timeout=10)
    try:
        conn.request("POST", "/RPC2", call_body("add", 1, 2))
        first = conn.getresponse()
        assert xmlrpc.client.loads(first.read())[0] == (3,)
        sock = conn.sock
        assert sock is not None  # the server did not ask to close
        conn.request("POST", "/RPC2", call_body("add", 3, 4))
        assert xmlrpc.client.loads(conn.getresponse().read())[0] == (7,)
        assert conn.sock is sock
    finally:
        conn.close()


def test_introspection(server):
    c = proxy(server)
    names = c.system.listMethods()
    for name in ("echo", "Trade", "devnet.mine", "pegx.status", "system.multicall",
                 "system.listMethods", "system.methodHelp"):
        assert name in names
    assert c.system.methodHelp("echo") == "Return the argument unchanged."
    assert c.system.methodHelp("helped") == "explicit help text"
    assert c.system.methodHelp("add") == ""
    assert c.devnet.mine(3) == 3 and c.pegx.status() == {"ok": True}
    assert fault_of(lambda: c.system.methodHelp("nope")).faultCode == FAULT_NO_METHOD


def test_multicall_of_100_with_faults_in_place(server):
    c = proxy(server)
    calls = []
    for i in range(100):
        if i % 10 == 3:
            calls.append({"methodName": "add", "params": [i]})  # wrong arity
        elif i % 10 == 7:
            calls.append({"methodName": "boom", "params": []})
        else:
            calls.append({"methodName": "add", "params": [i, i]})
    results = c.system.multicall(calls)
    assert len(results) == 100
    for i, result in enumerate(results):
        if i % 10 == 3:
            assert result["faultCode"] == FAULT_BAD_PARAMS
        elif i % 10 == 7:
            assert result["faultCode"] == FAULT_INTERNAL
        else:
            assert result == [2 * i]
    odd = c.system.multicall([
        {"methodName": "system.multicall", "params": [[]]},
        {"methodName": "too_big", "params": []},
        "not a struct",
        {"methodName": "big", "params": []},
    ])
    assert odd[0]["faultCode"] == FAULT_INVALID_REQUEST and "nested" in odd[0]["faultString"]
    assert odd[1]["faultCode"] == FAULT_BAD_RESULT
    assert odd[2]["faultCode"] == FAULT_INVALID_REQUEST
    assert odd[3] == [10**15]
    # the stock MultiCall helper works too
    mc = xmlrpc.client.MultiCall(c)
    mc.add(1, 2)
    mc.echo("x")
    assert list(mc()) == [3, "x"]


def test_counters(fresh):
    server = fresh
    c = proxy(server)
    c.add(1, 2)
    fault_of(c.boom)
    c.system.multicall([{"methodName": "add", "params": [1, 2]},
                        {"methodName": "nope", "params": []}])
    post(server, b"<bad")
    assert server.calls_served == 4  # add, boom, and the two inside the multicall
    assert server.faults == 3  # boom, nope, the bad XML
    assert server.in_flight == 0


def test_concurrent_clients(fresh):
    server = fresh
    def client(k: int) -> list[int]:
        c = proxy(server)  # one keep-alive connection per thread
        return [c.add(k * 1000, i) for i in range(50)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = {k: pool.submit(client, k) for k in range(8)}
        for k, future in futures.items():
            assert future.result(timeout=60) == [k * 1000 + i for i in range(50)]
    assert server.calls_served == 400


def test_stop_lets_in_flight_calls_finish_and_refuses_new_ones():
    release = threading.Event()
    srv = RPCServer("127.0.0.1", 0)
    srv.register("slow", lambda: release.wait(30) and "done")
    srv.register("add", add)
    srv.serve_in_thread()
    port = srv.address[1]
    idle_client = proxy(srv)
    assert idle_client.add(1, 1) == 2  # leaves a kept-alive connection open
    answer: list[object] = []
    caller = threading.Thread(target=lambda: answer.append(proxy(srv).slow()))
    caller.start()
    wait_until(lambda: srv.in_flight == 1)
    srv.stop()
    assert srv.wait_idle(0) is False
    release.set()
    caller.join()
    assert answer == ["done"]
    assert srv.wait_idle(10) is True
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
    with pytest.raises((OSError, xmlrpc.client.ProtocolError)):
        idle_client.add(1, 1)  # the idle keep-alive connection was closed by stop()
    srv.stop()  # idempotent


def test_stop_without_serving_does_not_hang():
    srv = RPCServer("127.0.0.1", 0)
    srv.stop()
    assert srv.wait_idle(0) is True


def test_port_in_use_is_a_clear_error(server):
    with pytest.raises(OSError) as info:
        RPCServer("127.0.0.1", server.address[1])
    assert f"127.0.0.1:{server.address[1]}" in str(info.value)


def test_registration_rules(server):
    with pytest.raises(ValueError):
        server.register("echo", echo)
    with pytest.raises(ValueError):
        server.register("system.evil", echo)
    with pytest.raises(ValueError):
        server.register("", echo)


def test_non_loopback_host_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="pegx.rpc.server"):
        srv = start("0.0.0.0")
    try:
        assert any("not loopback" in r.getMessage() for r in caplog.records)
        assert proxy(srv).add(20, 22) == 42
    finally:
        srv.stop()


def test_loopback_host_does_not_warn(caplog):
    with caplog.at_level(logging.WARNING, logger="pegx.rpc.server"):
        srv = RPCServer("127.0.0.1", 0)
    srv.stop()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
