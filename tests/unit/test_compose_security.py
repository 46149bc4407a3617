"""The compose stack passes the security settings through to the API (read from the file)."""

from __future__ import annotations

import yaml

from tests.helpers import ROOT

SECURITY = (
    "PROMPTBATCH_API_KEYS",
    "PROMPTBATCH_MAX_BODY_BYTES",
    "PROMPTBATCH_RATE_LIMIT_PER_MIN",
    "PROMPTBATCH_MAX_QUEUED_PROMPTS",
)


def test_the_api_takes_keys_and_limits_from_the_operators_environment() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    environment = compose["services"]["api"]["environment"]
    for name in SECURITY:
        # `${NAME:-}`: unset stays unset (an empty value means unset to the settings class)
        assert environment[name] == f"${{{name}:-}}", name
