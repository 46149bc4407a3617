"""The compose stack and image, checked by reading them (no Docker engine runs here)."""

from __future__ import annotations

import re
import tomllib
from typing import Any

import pytest
import yaml

from tests.helpers import ROOT


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def _command(service: dict[str, Any]) -> str:
    command = service["command"]
    return command if isinstance(command, str) else " ".join(map(str, command))


def test_redis_is_durable_private_and_password_protected(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    command = _command(redis)
    assert "--appendonly yes" in command
    assert "--appendfsync everysec" in command
    assert "--maxmemory-policy noeviction" in command
    assert "--requirepass" in command
    assert "ports" not in redis
    volume = redis["volumes"][0].split(":")[0]
    assert volume in compose["volumes"]  # a named volume, not a bind mount
    assert redis["healthcheck"]["test"]


def test_api_and_worker_reach_redis_with_the_password(compose: dict[str, Any]) -> None:
    for name in ("api", "worker"):
        url = compose["services"][name]["environment"]["REDIS_URL"]
        assert re.fullmatch(r"redis://:\$\{REDIS_PASSWORD:-[^}]+\}@redis:6379/0", url), url


def test_api_serves_8000_with_a_healthz_check(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]
    assert _command(api) == "uvicorn api.main:app --host 0.0.0.0 --port 8000"
    assert "8000:8000" in api["ports"]
    assert "/healthz" in " ".join(api["healthcheck"]["test"])
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"


def test_worker_is_scalable_with_a_health_check_and_grace_period(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert _command(worker) == "arq worker.main.WorkerSettings"
    assert "worker.healthcheck" in " ".join(worker["healthcheck"]["test"])
    assert worker["stop_grace_period"]
    for fixed in ("container_name", "ports"):  # either would stop `--scale worker=N`
        assert fixed not in worker


def test_a_profile_runs_the_mock_provider(compose: dict[str, Any]) -> None:
    mock = compose["services"]["mock-openai"]
    assert mock["profiles"] == ["mock"]
    assert "tests.mock_openai" in _command(mock)


def test_image_is_slim_and_runs_as_a_non_root_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.\d+-slim", dockerfile, re.M)
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users
    assert users[-1] not in ("root", "0")


def test_image_holds_every_package_the_project_installs() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = pattern.rstrip("*")
        assert re.search(rf"^COPY {package} \./{package}$", dockerfile, re.M), package


def test_image_holds_the_mock_and_every_test_module_it_imports() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = re.search(r"^COPY (tests/\S+(?: tests/\S+)*) \./tests/$", dockerfile, re.M)
    assert copied is not None
    files = set(copied[1].split())
    mock = (ROOT / "tests" / "mock_openai.py").read_text()
    needed = {f"tests/{name}.py" for name in re.findall(r"^from tests\.(\w+) import", mock, re.M)}
    needed |= {f"tests/{name}.py" for name in re.findall(r"^from tests import (\w+)", mock, re.M)}
    assert needed, "the mock imports test modules; the pattern must see them"
    assert {"tests/__init__.py", "tests/mock_openai.py", *needed} <= files
