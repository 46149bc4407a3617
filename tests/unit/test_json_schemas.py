"""Reply schemas: what is refused at submit, and replies matched in linear time."""

from __future__ import annotations

import time
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from shared.json_schemas import CheckTimedOut, schema_error, schema_problem

EVIL = "^(echo: )?(a+)+$"  # catastrophic for a backtracking engine


@pytest.mark.parametrize(
    ("schema", "says"),
    [
        ({"properties": {"a": {"$ref": "#/$defs/nope"}}}, "does not resolve"),
        ({"$ref": "https://example.com/schema.json"}, "does not resolve"),  # nothing is fetched
        ({"items": {"$dynamicRef": "#nowhere"}}, "does not resolve"),
        ({"type": "string", "pattern": "(?=a)b"}, "RE2"),
        ({"type": "string", "pattern": "(a)\\1"}, "RE2"),
        ({"patternProperties": {"(?<=x)y": {}}}, "RE2"),
        ({"type": "string", "pattern": "(a{1000}){1000}"}, "RE2"),
        ({"patternProperties": {"^a": {}}, "unevaluatedProperties": False},
         "unevaluatedProperties"),
        ({"type": 5}, "is not valid"),
        ({"properties": {"default": {"patternProperties": {"^(a+)+$": {}},
                                     "unevaluatedProperties": False}}},
         "unevaluatedProperties"),  # a property named as a data keyword is still a schema
        ({"$defs": {"enum": {"$ref": "#/$defs/nope"}}}, "does not resolve"),
    ],
    ids=["ref", "remote-ref", "dynamic-ref", "lookahead", "backreference", "lookbehind-key",
         "huge", "unevaluated-with-patterns", "not-a-schema", "property-named-default",
         "def-named-enum"],
)  # fmt: skip
def test_a_schema_that_cannot_be_checked_is_refused_saying_why(
    schema: dict[str, Any], says: str
) -> None:
    problem = schema_problem(schema)
    assert problem is not None
    assert says in problem


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"a": {"$ref": "#/$defs/s"}},
         "$defs": {"s": {"type": "string", "pattern": "^[a-z]+$"}}},
        {"$ref": "https://x.test/n", "$defs": {"n": {"$id": "https://x.test/n",
         "properties": {"q": {"$ref": "#/$defs/m"}}, "$defs": {"m": {"type": "string"}}}}},
        {"type": "string", "pattern": EVIL},
        {"enum": [{"pattern": "(?=a)"}]},  # data, not a schema
    ],
    ids=["local-ref", "ref-under-an-id", "evil-but-linear-in-re2", "pattern-as-data"],
)  # fmt: skip
def test_a_schema_whose_references_resolve_and_patterns_compile_is_accepted(
    schema: dict[str, Any],
) -> None:
    assert schema_problem(schema) is None


def test_a_reply_against_a_backtracking_pattern_is_checked_in_linear_time() -> None:
    names = "^(x+)+$"
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string", "pattern": EVIL}},
        "patternProperties": {names: {"type": "integer"}},
        "additionalProperties": False,
    }
    began = time.perf_counter()  # 48 characters take Python's re hours; these, microseconds
    by_value = schema_error(schema, {"a": "echo: " + "a" * 10_000 + "!"})
    by_name = schema_error(schema, {"x" * 10_000 + "!": 1})
    assert time.perf_counter() - began < 1
    assert by_value is not None
    assert "does not match" in by_value
    assert by_name is not None
    assert "matching no patternProperties" in by_name
    assert schema_error(schema, {"xxx": 1, "a": "echo: aa"}) is None
    assert schema_error(schema, {"xxx": "y"}) == "'y' is not of type 'integer' (at output_json.xxx)"


def doubling(levels: int) -> dict[str, Any]:
    """A schema of 2**levels subschemas to check, in `levels` short definitions: each level
    refers to the next one twice."""
    defs: dict[str, Any] = {
        f"d{n}": {"allOf": [{"$ref": f"#/$defs/d{n + 1}"}, {"$ref": f"#/$defs/d{n + 1}"}]}
        for n in range(levels)
    }
    defs[f"d{levels}"] = {"type": "string"}
    return {"$defs": defs, "$ref": "#/$defs/d0"}


def test_a_reply_whose_check_would_take_hours_is_stopped_at_the_limit() -> None:
    schema = doubling(30)  # a billion checks: about an hour
    assert schema_problem(schema) is None  # nothing to refuse at submit: it is a valid schema
    began = time.perf_counter()
    with pytest.raises(CheckTimedOut):
        schema_error(schema, "echo: x", limit_s=0.2)
    assert time.perf_counter() - began < 2
    # The same schema, a few levels deep, is checked as usual, within the default limit.
    assert schema_error(doubling(8), "echo: x") is None
    assert schema_error(doubling(8), 1) == "1 is not of type 'string' (at output_json)"


@pytest.mark.parametrize(
    "items",
    [[1, 1.0], [1, True], [0, False], [None, None], [{"a": 1, "b": 2}, {"b": 2, "a": 1}],
     [[1, 2], [2, 1]], [[1, [2]], [1, [2.0]]], ["a", "a "], [{"a": [1]}, {"a": [True]}], []],
)  # fmt: skip
def test_unique_items_judges_as_jsonschema_does(items: list[Any]) -> None:
    schema = {"type": "array", "uniqueItems": True}
    theirs = Draft202012Validator(schema).is_valid(items)
    ours = schema_error(schema, items)
    assert (ours is None) == theirs, ours


def test_checks_that_loop_inside_one_keyword_stop_at_the_limit_too() -> None:
    """jsonschema's uniqueItems compares objects pair by pair (37 s for 6,000), and a thousand
    patterns over ten thousand names are ten million searches (17 s)."""
    unique = {"type": "array", "uniqueItems": True, "items": {"type": "object"}}
    began = time.perf_counter()
    assert schema_error(unique, [{"i": i} for i in range(6000)]) is None
    assert time.perf_counter() - began < 2  # linear now
    patterns = {"type": "object",
                "patternProperties": {f"^p{i}_[a-z]+$": {"type": "integer"} for i in range(1000)},
                "additionalProperties": {"type": "integer"}}  # fmt: skip
    names = {f"k{i}": 1 for i in range(10_000)}
    for limit_s in (0.2, 0.2):
        began = time.perf_counter()
        with pytest.raises(CheckTimedOut):
            schema_error(patterns, names, limit_s=limit_s)
        assert time.perf_counter() - began < 1
    # A schema that ran out of time once gets a tenth of the time from then on.
    began = time.perf_counter()
    with pytest.raises(CheckTimedOut):
        schema_error(patterns, names, limit_s=2.0)
    assert time.perf_counter() - began < 1
