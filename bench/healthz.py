"""A client in a process of its own that GETs `/healthz` back to back until told to stop: the
longest it waited is the longest the API's event loop was held (in the benchmark's own process,
the poller would also time that process's stalls while it sends a large body).

    python -m bench.healthz http://127.0.0.1:8000   # prints "ready"; a line on stdin stops it

Prints one JSON line at the end: {"worst_ms", "p99_ms", "polls"}.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import httpx


def main(url: str) -> None:
    stop = threading.Event()

    def wait_for_stop() -> None:
        sys.stdin.readline()
        stop.set()

    threading.Thread(target=wait_for_stop, daemon=True).start()
    waits: list[float] = []
    with httpx.Client(base_url=url, timeout=60) as http:
        http.get("/healthz").raise_for_status()
        print("ready", flush=True)
        while not stop.is_set():
            began = time.perf_counter()
            http.get("/healthz").raise_for_status()
            waits.append((time.perf_counter() - began) * 1000)
            time.sleep(0.005)  # a poll every ~5 ms, not a busy loop competing for the CPU
    waits.sort()
    p99 = waits[min(len(waits) - 1, int(len(waits) * 0.99))] if waits else 0.0
    print(json.dumps({"worst_ms": waits[-1] if waits else 0.0, "p99_ms": p99,
                      "polls": len(waits)}))  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1])
