"""schemathesis hooks (`SCHEMATHESIS_HOOKS=tests.fuzz.hooks`): how to send the NDJSON body the
OpenAPI document describes as the array of its lines."""

from __future__ import annotations

import json
from typing import Any

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(_: schemathesis.SerializationContext, value: Any) -> bytes:
    """An array of request lines as an OpenAI Batch file: one JSON document a line."""
    lines = value if isinstance(value, list) else [value]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()
