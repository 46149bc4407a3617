"""How the processes start and stop: fail fast without Redis, and `make run` end to end."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.helpers import ROOT, Proc, free_port, wait_until, worker_env

pytestmark = pytest.mark.integration


def _no_redis_env() -> dict[str, str]:
    env = worker_env("unused")
    del env["REDIS_URL"]
    return env


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "arq", "worker.main.WorkerSettings"],
        [sys.executable, "-m", "uvicorn", "api.main:app", "--port", str(free_port())],
    ],
    ids=["worker", "api"],
)
def test_without_redis_url_a_process_fails_fast_saying_so(command: list[str]) -> None:
    done = subprocess.run(
        command, cwd=ROOT, env=_no_redis_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "REDIS_URL is not set" in done.stdout + done.stderr


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


@pytest.mark.parametrize("own_redis", [False, True], ids=["embedded-valkey", "REDIS_URL"])
def test_make_run_serves_a_batch_and_ctrl_c_stops_everything(
    tmp_path: Path, redis_url: str, own_redis: bool
) -> None:
    port = free_port()
    env = _no_redis_env() | {"PORT": str(port), "PROMPTBATCH_DATA_DIR": str(tmp_path)}
    if own_redis:
        env["REDIS_URL"] = redis_url
    log = tmp_path / "run.log"
    runner = Proc([sys.executable, "scripts/run_stack.py"], env, log).start()
    try:
        wait_until(lambda: "promptbatch is up" in runner.log(), 90, "make run to come up")
        base = f"http://127.0.0.1:{port}"
        assert base in runner.log()
        assert "curl" in runner.log()
        children = _children(runner.pid)
        assert len(children) == (2 if own_redis else 3)  # the worker, the API (and Valkey)

        prompts = ["What are some colors of the rainbow?", "Where is Seoul?"]
        batch = httpx.post(f"{base}/v1/batches", json={"prompts": prompts}).json()

        def finished() -> bool:
            got = httpx.get(f"{base}/v1/batches/{batch['id']}").json()
            return bool(got["status"] == "completed")

        wait_until(finished, 30, "the batch")
        results = httpx.get(f"{base}/v1/batches/{batch['id']}/results").json()
        assert [r["output"] for r in results["data"]] == [
            f"[offline] You asked: {p}" for p in prompts
        ]
        # AOF on, data in the data dir; or nothing embedded when REDIS_URL is given
        assert (tmp_path / "valkey" / "appendonlydir").is_dir() != own_redis
    finally:
        runner.popen.send_signal(signal.SIGINT)
        code = runner.popen.wait(timeout=60)
    assert code == 0, runner.log()
    assert "make run: stopped." in runner.log()
    assert all(_gone(pid) for pid in children), runner.log()


def test_make_run_on_a_taken_port_says_so_in_one_line_and_starts_nothing(tmp_path: Path) -> None:
    """Another server on the port, one that even answers a readiness check with a 200 (as
    another promptbatch would): `make run` must not take it for its own API."""

    class Ready(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"status": "ok"}')

        def log_message(self, *_: object) -> None:
            pass

    other = ThreadingHTTPServer(("127.0.0.1", 0), Ready)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    port = other.server_address[1]
    env = _no_redis_env() | {"PORT": str(port), "PROMPTBATCH_DATA_DIR": str(tmp_path)}
    try:
        done = subprocess.run(
            [sys.executable, "scripts/run_stack.py"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=90,
        )  # fmt: skip
    finally:
        other.shutdown()
        other.server_close()
    assert done.returncode != 0
    assert "is up" not in done.stdout + done.stderr
    assert done.stdout == ""
    [line] = done.stderr.strip().splitlines()
    assert f"port {port} is taken" in line
    assert f"PORT={port + 1}" in line
    assert not (tmp_path / "valkey").exists()  # nothing was started
