"""The HTTP contract, machine-checked: schemathesis against the API's own `/openapi.json`, on a
real API process, a real worker and a Redis of its own, with every check on (but
`positive_data_acceptance`: a schema cannot say that a template's rows must fill its variables
or that custom_ids are unique, so schema-valid bodies may rightly be refused) and the stateful
links (submit -> read, results, events, cancel, delete).

`make test` runs a short (20 s), seeded fuzz; `make fuzz` runs a long one with a fresh seed
(`PROMPTBATCH_FUZZ_SECONDS`, `PROMPTBATCH_FUZZ_SEED`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Proc, RedisServer, start_worker
from tests.servers import Api, start_api

pytestmark = pytest.mark.integration

KEY = "fuzz-key-0123456789"
SECONDS = os.environ.get("PROMPTBATCH_FUZZ_SECONDS", "20")
SEED = os.environ.get("PROMPTBATCH_FUZZ_SEED", "20261202")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Api]:
    redis = RedisServer(tmp_path)
    worker: Proc | None = None
    api = start_api(redis.url, tmp_path / "api.log", PROMPTBATCH_API_KEYS=KEY)
    try:
        worker = start_worker(redis.url, tmp_path / "worker.log")
        yield api
    finally:
        if worker is not None:
            worker.stop()
        api.proc.stop()
        redis.stop()


@pytest.mark.timeout(int(SECONDS) * 3 + 120)
def test_schemathesis_finds_no_contract_violation(stack: Api, tmp_path: Path) -> None:
    command = [
        str(Path(sys.executable).parent / "schemathesis"), "run", f"{stack.url}/openapi.json",
        "--checks", "all", "--exclude-checks", "positive_data_acceptance",
        "--header", f"Authorization: Bearer {KEY}",
        "--max-time", SECONDS, "--workers", "1", "--no-color",
    ]  # fmt: skip
    if SEED:
        command += ["--seed", SEED]
    # Run from the test's own folder (schemathesis keeps a cache where it runs), the hooks
    # imported from the checkout.
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.fuzz.hooks", "PYTHONPATH": root}
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, check=False, cwd=tmp_path
    )
    report = done.stdout[-6000:] + done.stderr[-2000:]
    assert done.returncode == 0, f"{report}\n--- API log ---\n{stack.log()[-4000:]}"
    assert "Stateful" in report  # the links were followed, not only single requests
    summary = report[report.rfind("SUMMARY") :] if "SUMMARY" in report else report[-1500:]
    print(summary)  # `make fuzz` shows it: operations, phases, test cases generated
