"""Prometheus metrics and the status page on ``--metrics-port`` (issue #16 items 5 and 7).

Each daemon has its own :class:`prometheus_client.CollectorRegistry` (never the global one),
so several daemons in one process (tests) keep their figures apart. Two kinds of metric:

* measured where things happen, at almost no cost: every XML-RPC call adds one counter
  increment and one histogram observe (children cached per label pair, so no label lookup and
  no lock held but the metric's own for a few instructions); the op log's synced writes,
  checkpoints and recomputes observe their seconds;
* read at scrape time from the daemon's state (the same report ``pegx.status`` gives), by
  :class:`StateCollector`: heights, ages, cycle, supply, withdraws, ledger size, problems.

The HTTP server is the stdlib's, one thread per request, bound to the XML-RPC host (loopback
by default; a non-loopback host is warned about, as for the XML-RPC port). It answers GET
``/metrics`` (the text format), ``/`` (the status page, :mod:`pegx.ops.page`) and nothing else.
It takes no password: it shows totals and counts, never a user name, address or key.
README lists every metric.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from xmlrpc.client import Fault

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from pegx.exchange.pipeline import STAGES
from pegx.ops.health import KINDS

log = logging.getLogger(__name__)

UNKNOWN_METHOD = "unknown"  # the one label value of every name that is not published
CALL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                5.0, 10.0)
FSYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                 1.0)
SLOW_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def call_result(outcome: Any, speaks_refusals: bool) -> str:
    """ok / refused / fault of one call's outcome.

    A Fault is ``fault``. The API answers "no" in-band, as the original does: ``False``, a
    message string, or a ``(message, '')`` pair (Withdraw, GenerateDepositAddress); those are
    ``refused`` for the methods that speak that way (``speaks_refusals``: the API calls and
    ``pegx.*``), whose successes are never a bare string or False. Anything else is ``ok``.
    """
    if isinstance(outcome, Fault):
        return "fault"
    if not speaks_refusals:
        return "ok"
    if outcome is False or isinstance(outcome, str):
        return "refused"
    if isinstance(outcome, (tuple, list)) and len(outcome) == 2 and outcome[1] == "":
        return "refused"
    return "ok"


class Metrics:
    """The registry and the metrics measured in place (see the module docstring)."""

    def __init__(self) -> None:
        # no *_created series: a start time per label pair doubles the text for nothing
        # Prometheus uses here (a process-wide switch of prometheus-client)
        disable_created_metrics()
        self.registry = CollectorRegistry()
        r = self.registry
        self.calls = Counter("pegx_calls", "XML-RPC method calls answered, by method and "
                             "result (ok, refused: the API's in-band no, fault)",
                             ["method", "result"], registry=r)
        self.call_seconds = Histogram("pegx_call_seconds", "Seconds an XML-RPC method call "
                                      "took to run (not counting the HTTP transfer)",
                                      ["method"], buckets=CALL_BUCKETS, registry=r)
        self.fsync = Histogram("pegx_oplog_fsync_seconds", "Seconds each synced op-log write "
                               "(one group commit) took", buckets=FSYNC_BUCKETS, registry=r)
        self.checkpoint = Histogram("pegx_checkpoint_seconds", "Seconds each ledger "
                                    "checkpoint write took", buckets=SLOW_BUCKETS, registry=r)
        self.recompute = Histogram("pegx_recompute_seconds", "Seconds each recompute of every "
                                   "balance at a new supply took", buckets=SLOW_BUCKETS,
                                   registry=r)
        self._known: frozenset[str] = frozenset()
        self._refusing: frozenset[str] = frozenset()
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._children_mu = threading.Lock()

    def set_methods(self, names: Iterable[str], refusing: Iterable[str]) -> None:
        """The published method names (labels are bounded to these) and those that answer
        refusals in-band (see :func:`call_result`)."""
        self._known = frozenset(names)
        self._refusing = frozenset(refusing)

    def on_call(self, name: str, outcome: Any, seconds: float) -> None:
        """RPCServer.on_call: count and time one call (a dict lookup, an inc, an observe)."""
        method = name if name in self._known else UNKNOWN_METHOD
        result = call_result(outcome, method in self._refusing)
        key = (method, result)
        pair = self._children.get(key)
        if pair is None:  # the first call of this pair: make its children once
            with self._children_mu:
                pair = self._children.get(key)
                if pair is None:
                    pair = (self.calls.labels(method, result), self.call_seconds.labels(method))
                    self._children[key] = pair
        pair[0].inc()
        pair[1].observe(seconds)

    def text(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)


def _gauge(name: str, doc: str, value: float, labels: dict | None = None) -> GaugeMetricFamily:
    if labels is None:
        return GaugeMetricFamily(name, doc, value=value)
    g = GaugeMetricFamily(name, doc, labels=list(labels))
    g.add_metric(list(labels.values()), value)
    return g


class StateCollector(Collector):
    """Gauges read from the daemon's state report at scrape time.

    ``state()`` is the pegx.status report; ``node_errors()`` the node RPC errors so far.
    """

    def __init__(self, state: Callable[[], dict], node_errors: Callable[[], int]) -> None:
        self._state = state
        self._node_errors = node_errors

    def describe(self) -> list:
        return []  # nothing to check at registration: the state may not be ready yet

    def collect(self):
        try:
            st = self._state()
        except Exception:  # a scrape must answer: say the daemon is not well
            log.exception("metrics: the state report failed")
            yield _gauge("pegx_up", "1 when no problem holds (pegx status --check passes)", 0)
            return
        problems = {p["kind"] for p in st["problems"]}
        yield _gauge("pegx_up", "1 when no problem holds (pegx status --check passes), else 0",
                     0 if problems else 1)
        g = GaugeMetricFamily("pegx_problem", "1 for each problem that holds now (pegx status "
                              "lists them first)", labels=["kind"])
        for kind in KINDS:
            g.add_metric([kind], 1 if kind in problems else 0)
        yield g
        yield _gauge("pegx_chain_height", "Height of the last block the exchange processed "
                     "(-1 before the first pass)", st["height"])
        yield _gauge("pegx_node_height", "Height of the node's best block (-1: the node did not "
                     "answer the last probe)", st["node"]["height"])
        yield _gauge("pegx_chain_tip_age_seconds", "Seconds since the best block (-1 unknown)",
                     st["tip_age"])
        yield _gauge("pegx_cycle", "Peg cycle the exchange has published (GetCycle)",
                     st["cycle"])
        yield _gauge("pegx_supply_index", "Supply index (peg step 0..1198) of the balances",
                     st["supply"])
        ex = GaugeMetricFamily("pegx_exchange_sat", "The exchange's totals at the last "
                               "recompute, in satoshi", labels=["part"])
        for part in ("liquid", "reserve", "frozen", "subpremium"):
            ex.add_metric([part], st["exchange"].get(part, 0))
        yield ex
        stages = st["pipeline"]["stages"]
        w = GaugeMetricFamily("pegx_withdraws", "Withdraws per stage: in flight (pending, "
                              "batched, processing) and finished (complete, failed, expired)",
                              labels=["status"])
        for stage in STAGES:
            w.add_metric([stage], stages[stage]["count"])
        yield w
        yield _gauge("pegx_oldest_pending_withdraw_seconds", "Seconds the oldest withdraw not "
                     "batched yet has waited since it was accepted (0: none)",
                     max(0, stages["pending"]["oldest_age"]))
        errors = CounterMetricFamily("pegx_node_rpc_errors", "Node JSON-RPC requests that "
                                     "failed (unreachable, timed out, or an error reply)")
        errors.add_metric([], self._node_errors())
        yield errors
        yield _gauge("pegx_ledger_bytes", "Approximate size of the LevelDB ledger on disk",
                     st["ledger_bytes"])
        yield _gauge("pegx_accounts", "Accounts in the ledger (users and internal)", st["users"])
        yield _gauge("pegx_op_seq", "Sequence number of the last logged ledger operation",
                     st["op_seq"])
        yield from _replication(st.get("replication") or {})


def _replication(rep: dict):
    """Replication gauges (pegx.replication), when it is configured."""
    if rep.get("state", "off") == "off":
        return
    role = GaugeMetricFamily("pegx_replication_role", "1 for this daemon's replication role "
                             "(primary, standby, fenced: superseded)", labels=["role"])
    for name in ("primary", "standby", "fenced"):
        role.add_metric([name], 1 if rep.get("role") == name else 0)
    yield role
    yield _gauge("pegx_replication_epoch", "Epoch of the ledger's history this daemon holds",
                 rep.get("epoch", 0))
    yield _gauge("pegx_replication_connected", "1 while the standby is attached (primary) or "
                 "the primary is followed (standby)", 1 if rep.get("connected") else 0)
    yield _gauge("pegx_replication_lag_records", "Op-log records the standby lacks",
                 rep.get("lag_records", 0))
    yield _gauge("pegx_replication_lag_seconds", "Seconds since the standby last held every "
                 "record (0: it holds them all)", rep.get("lag_seconds", 0.0))
    yield _gauge("pegx_replication_degraded", "1 while a --sync-standby primary acknowledges "
                 "without its standby (--standby-fallback async)", 1 if rep.get("degraded") else 0)
    yield _gauge("pegx_replication_blocked", "1 while a strict --sync-standby primary cannot "
                 "acknowledge state changes (no standby holds them)",
                 1 if rep.get("blocked") else 0)


class MetricsServer:
    """GET /metrics and / on ``host:port`` in a thread of its own."""

    def __init__(self, host: str, port: int, metrics: Metrics, page: Callable[[], str]):
        """Bind (not serve yet); OSError naming the address if it is taken."""
        handler = _handler(metrics, page)
        try:
            self._httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {host}:{port} for metrics: "
                          f"{exc.strerror}") from exc
        self._httpd.daemon_threads = True
        self.address: tuple[str, int] = self._httpd.server_address[:2]
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics",
                                        kwargs={"poll_interval": 0.2}, daemon=True)
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics, status page on http://%s:%d/",
                 *self.address, *self.address)

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread = None
        self._httpd.server_close()


def _handler(metrics: Metrics, page: Callable[[], str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "pegx"
        sys_version = ""

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, metrics.text(), CONTENT_TYPE_LATEST)
            elif path == "/":
                try:
                    body = page().encode()
                except Exception:  # never a traceback to the browser
                    log.exception("status page failed")
                    self._send(500, b"status page failed (see the daemon log)\n", "text/plain")
                    return
                self._send(200, body, "text/html; charset=utf-8")
            else:
                self._send(404, b"not found: try /metrics or /\n", "text/plain")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("metrics %s: %s", self.client_address[0], format % args)

    return Handler
