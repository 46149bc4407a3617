"""The worker container's health check, against a real Redis."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.helpers import ROOT, Proc, worker_env

pytestmark = pytest.mark.integration


def _check(redis_url: str) -> int:
    command = [sys.executable, "-m", "worker.healthcheck"]
    return subprocess.run(command, cwd=ROOT, env=worker_env(redis_url), timeout=30).returncode


def test_healthcheck_follows_this_hosts_worker(
    redis_url: str, workers: Callable[..., Proc]
) -> None:
    assert _check(redis_url) == 1
    worker = workers()
    assert _check(redis_url) == 0
    worker.stop()  # a clean stop forgets the heartbeat at once
    assert _check(redis_url) == 1
