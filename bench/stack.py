"""The real parts a benchmark runs against: a Redis server, the mock provider at a fixed
latency, the API under uvicorn, arq worker processes. Started once per `make bench`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from bench import workload
from tests.helpers import ROOT, MockProvider, Proc, RedisServer, start_worker, worker_env
from tests.servers import Api, start_api

API_KEY = "sk-bench"
DIRECT = ROOT / "bench" / "direct.py"  # run as a script, from a directory of its own
DIRECT_EMBED = ROOT / "bench" / "direct_embed.py"


class Stack:
    """One Redis and one API for the whole run; a mock per latency; workers per scenario."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.redis = RedisServer(workdir)
        self._mocks: dict[tuple[float, int], MockProvider] = {}
        self._offline: Api | None = None
        self._keyed: Api | None = None
        self.api: Api = start_api(
            self.redis.url,
            workdir / "api.log",
            # The API only needs to know the provider is configured; workers call it.
            OPENAI_API_KEY=API_KEY,
            OPENAI_BASE_URL="http://127.0.0.1:9/v1",
            PROMPTBATCH_MAX_CONCURRENCY="1024",
        )

    async def offline_api(self) -> Api:
        """A second API on the same Redis whose batches run on the offline model, taking
        batches of up to a million prompts (and bodies to match)."""
        if self._offline is None:
            self._offline = await asyncio.to_thread(
                start_api,
                self.redis.url,
                self.workdir / "api-offline.log",
                PROMPTBATCH_PROVIDER="offline",
                PROMPTBATCH_MAX_PROMPTS="1000000",
                PROMPTBATCH_MAX_BODY_BYTES=str(512 * 1024 * 1024),
                PROMPTBATCH_MAX_CONCURRENCY="1024",
            )
        return self._offline

    async def keyed_api(self, *api_keys: str) -> Api:
        """A third API on the same Redis whose callers are these keys (each its own owner)."""
        if self._keyed is None:
            self._keyed = await asyncio.to_thread(
                start_api,
                self.redis.url,
                self.workdir / "api-keyed.log",
                OPENAI_API_KEY=API_KEY,
                OPENAI_BASE_URL="http://127.0.0.1:9/v1",
                PROMPTBATCH_API_KEYS=",".join(api_keys),
            )
        return self._keyed

    def mock(self, latency_ms: float, rpm: int = 0) -> MockProvider:
        """The mock at `latency_ms`, enforcing `rpm` requests a minute (0: none)."""
        if (latency_ms, rpm) not in self._mocks:
            mock = MockProvider(self.workdir, latency_ms=latency_ms, rpm=rpm)
            self._mocks[latency_ms, rpm] = mock
        return self._mocks[latency_ms, rpm]

    @contextlib.asynccontextmanager
    async def workers(
        self, count: int, latency_ms: float, rpm: int = 0, **settings: str
    ) -> AsyncIterator[list[Proc]]:
        """`count` worker processes calling the mock at `latency_ms` (enforcing `rpm`), with
        these `PROMPTBATCH_*` settings; stopped on exit."""
        url = f"{(await asyncio.to_thread(self.mock, latency_ms, rpm)).url}/v1"
        started: list[Proc] = []
        try:
            for _ in range(count):
                log = self.workdir / f"worker-{latency_ms:g}ms-{len(started)}.log"
                env = {"OPENAI_BASE_URL": url, "OPENAI_API_KEY": API_KEY, **settings}
                started.append(await asyncio.to_thread(start_worker, self.redis.url, log, **env))
            yield started
        finally:
            for proc in started:
                await asyncio.to_thread(proc.stop)

    async def direct(self, latency_ms: float, prompts: int, concurrency: int) -> dict[str, float]:
        """One run of the direct abatch script, in a process of its own."""
        path = await self._lines(f"prompts-{prompts}.jsonl", workload.prompts(prompts))
        return await self._script(DIRECT, latency_ms, "--prompts", str(path),
                                  "--concurrency", str(concurrency))  # fmt: skip

    async def direct_embed(self, latency_ms: float, texts: list[str]) -> dict[str, float]:
        """One run of the plain `aembed_documents` script, in a process of its own."""
        path = await self._lines(f"texts-{len(texts)}.jsonl", texts)
        return await self._script(DIRECT_EMBED, latency_ms, "--texts", str(path))

    async def _lines(self, name: str, values: list[str]) -> Path:
        """A file of one JSON string a line, in the work directory (written once)."""
        path = self.workdir / name
        if not path.exists():
            lines = "".join(json.dumps(v) + "\n" for v in values)
            await asyncio.to_thread(path.write_text, lines)
        return path

    async def _script(self, script: Path, latency_ms: float, *args: str) -> dict[str, float]:
        """A baseline script against the mock at `latency_ms`: the JSON line it printed last."""
        url = f"{(await asyncio.to_thread(self.mock, latency_ms)).url}/v1"
        done = await asyncio.create_subprocess_exec(
            sys.executable, str(script), "--base-url", url, *args, cwd=self.workdir,
            env=worker_env("unused"), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await done.communicate()
        if done.returncode != 0:
            raise RuntimeError(f"{script.name} failed:\n{err.decode()[-2000:]}")
        result: dict[str, float] = json.loads(out.decode().strip().splitlines()[-1])
        return result

    def close(self) -> None:
        self.api.proc.stop()
        for api in (self._offline, self._keyed):
            if api is not None:
                api.proc.stop()
        for mock in self._mocks.values():
            mock.stop()
        self.redis.stop()
