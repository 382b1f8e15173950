"""Client load for the benchmarks (scripts/bench.py, scripts/tradepath.py): ``clients``
threads, each with its own stock keep-alive ServerProxy, make ``per`` calls each."""

from __future__ import annotations

import threading
import time
import xmlrpc.client
from collections.abc import Callable


def calls_per_second(url: str, clients: int, per: int,
                     call: Callable[[xmlrpc.client.ServerProxy, int, int], object]) -> float:
    """Calls/s over all clients; ``call(proxy, k, j)`` makes client k's j-th call."""
    def work(k: int) -> None:
        proxy = xmlrpc.client.ServerProxy(url)
        for j in range(per):
            call(proxy, k, j)
    threads = [threading.Thread(target=work, args=(k,)) for k in range(clients)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return per * clients / (time.perf_counter() - t)
