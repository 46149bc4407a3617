"""The real parts a benchmark runs against: a Redis server, the mock provider at a fixed
latency, the API under uvicorn, arq worker processes. Started once per `make bench`."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.helpers import ROOT, MockProvider, Proc, RedisServer, start_worker, worker_env
from tests.servers import Api, start_api

API_KEY = "sk-bench"


class Stack:
    """One Redis and one API for the whole run; a mock per latency; workers per scenario."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.redis = RedisServer(workdir)
        self._mocks: dict[float, MockProvider] = {}
        self.api: Api = start_api(
            self.redis.url,
            workdir / "api.log",
            # The API only needs to know the provider is configured; workers call it.
            OPENAI_API_KEY=API_KEY,
            OPENAI_BASE_URL="http://127.0.0.1:9/v1",
            PROMPTBATCH_MAX_CONCURRENCY="1024",
        )

    def mock(self, latency_ms: float) -> MockProvider:
        if latency_ms not in self._mocks:
            self._mocks[latency_ms] = MockProvider(self.workdir, latency_ms=latency_ms)
        return self._mocks[latency_ms]

    @contextlib.contextmanager
    def workers(self, count: int, latency_ms: float, **env: str) -> Iterator[list[Proc]]:
        """`count` worker processes calling the mock at `latency_ms`; stopped on exit."""
        mock = self.mock(latency_ms)
        started: list[Proc] = []
        try:
            for _ in range(count):
                log = self.workdir / f"worker-{latency_ms:g}ms-{len(started)}.log"
                started.append(
                    start_worker(
                        self.redis.url,
                        log,
                        OPENAI_BASE_URL=f"{mock.url}/v1",
                        OPENAI_API_KEY=API_KEY,
                        **env,
                    )
                )
            yield started
        finally:
            for proc in started:
                proc.stop()

    def direct(self, latency_ms: float, prompts: int, concurrency: int) -> dict[str, float]:
        """One run of the direct abatch script, in a process of its own."""
        args = [sys.executable, "-m", "bench.direct", "--base-url",
                f"{self.mock(latency_ms).url}/v1", "--prompts", str(prompts),
                "--concurrency", str(concurrency)]  # fmt: skip
        done = subprocess.run(
            args, cwd=ROOT, env=worker_env("unused"), capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"the direct script failed:\n{done.stderr[-2000:]}")
        result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
        return result

    def close(self) -> None:
        self.api.proc.stop()
        for mock in self._mocks.values():
            mock.stop()
        self.redis.stop()
