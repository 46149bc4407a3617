"""JSON Schemas from `response_format`: checked whole at submit, then matched against replies in
linear time.

A schema is the client's, and a reply is the provider's: neither is trusted. Everything that can
be known about a schema without a reply is checked when the batch is submitted (a 422, never a
failed batch later): it is a JSON Schema, every `$ref` resolves inside it (nothing is fetched),
and every regular expression compiles in RE2. Replies are then matched with RE2, whose time is
linear in the text: a pattern such as `^(a+)+$` cannot backtrack for hours on a worker's event
loop. jsonschema itself matches patterns with Python's backtracking `re` in four keywords;
`pattern`, `patternProperties` and `additionalProperties` are replaced here, and
`unevaluatedProperties` beside `patternProperties` (the fourth) is refused at submit.

Linear patterns are not enough: a schema whose `$ref`s double at each level (`allOf` of the same
reference twice, thirty levels deep) has a billion subschemas to check however short the reply,
and a recursive one can grow with the reply's nesting. So a reply's check has a time limit
(`CHECK_LIMIT_S`): every keyword looks at the clock first, and a check past its limit fails its
item as `invalid_output`, whatever the schema.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any

import orjson
import re2
from jsonschema import Draft202012Validator, ValidationError
from jsonschema.exceptions import SchemaError, best_match
from jsonschema.validators import extend
from referencing import Registry
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

_RE2 = re2.Options()
_RE2.log_errors = False  # a pattern is the client's text: it never reaches a log
#: Keywords whose values are data, not schemas: never walked for patterns or references.
_DATA = frozenset({"const", "enum", "default", "examples"})
#: Keywords whose values map names to schemas: each value is walked, whatever its name.
_SCHEMA_MAPS = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
)


@lru_cache(maxsize=1024)
def _regex(pattern: str) -> Any:
    return re2.compile(pattern, _RE2)


def _search(pattern: str, text: str) -> bool:
    return _regex(pattern).search(text) is not None


# -- the keywords that match patterns, in RE2 ------------------------------------------------


def _pattern(
    validator: Any, pattern: str, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: dict[str, Any], instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for name, value in instance.items():
            _in_time()  # patterns times names: millions of searches for a large reply
            if _search(pattern, name):
                yield from validator.descend(value, subschema, path=name, schema_path=pattern)


_BASE_ADDITIONAL = Draft202012Validator.VALIDATORS["additionalProperties"]


def _additional_properties(
    validator: Any, extra: Any, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    patterns = schema.get("patternProperties")
    if not patterns:  # no pattern involved: jsonschema's own
        yield from _BASE_ADDITIONAL(validator, extra, instance, schema)
        return
    if not validator.is_type(instance, "object"):
        return
    named = schema.get("properties", {})
    extras = []
    for name in instance:
        _in_time()
        if name not in named and not any(_search(p, name) for p in patterns):
            extras.append(name)
    extras.sort()
    if validator.is_type(extra, "object"):
        for name in extras:
            yield from validator.descend(instance[name], extra, path=name)
    elif extra is False and extras:
        listed = ", ".join(repr(name) for name in extras)
        yield ValidationError(f"{listed}: not in properties and matching no patternProperties")


# -- the time limit ----------------------------------------------------------------------------

#: Longest one reply's check may take (seconds); the checks of a few hundred reply kilobytes
#: against schemas as people write them take milliseconds.
CHECK_LIMIT_S = 0.5

_deadline = threading.local()


class CheckTimedOut(Exception):
    """A reply's check went past its limit."""


def _in_time() -> None:
    """CheckTimedOut once the reply's check is past its limit (for loops inside a keyword)."""
    if time.monotonic() > _deadline.at:
        raise CheckTimedOut


def _unique_items(
    validator: Any, unique: Any, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    """`uniqueItems` in linear time (jsonschema's own compares objects pair by pair: 37 s for
    6,000 of them): each element by a key equal for equal JSON values (1 and 1.0 alike, true
    and 1 not, objects whatever their order)."""
    if not unique or not validator.is_type(instance, "array"):
        return
    seen: set[Any] = set()
    for element in instance:
        _in_time()
        key = _canonical(element)
        if key in seen:
            yield ValidationError(f"{instance!r} has non-unique elements")
            return
        seen.add(key)


def _canonical(value: Any) -> Any:
    """A hashable key of a JSON value, equal for values JSON Schema calls equal."""
    if isinstance(value, bool) or value is None:
        return ("literal", value)
    if isinstance(value, int | float):
        return ("number", value)
    if isinstance(value, str):
        return ("string", value)
    if isinstance(value, list):
        return ("array", tuple(_canonical(v) for v in value))
    if isinstance(value, dict):
        return ("object", frozenset((k, _canonical(v)) for k, v in value.items()))
    return ("other", repr(value))


Keyword = Callable[[Any, Any, Any, dict[str, Any]], Iterator[ValidationError]]


def _timed(keyword: Keyword) -> Keyword:
    """`keyword` checked only while its check is within its limit."""

    def check(
        validator: Any, value: Any, instance: Any, schema: dict[str, Any]
    ) -> Iterator[ValidationError]:
        if time.monotonic() > _deadline.at:
            raise CheckTimedOut
        yield from keyword(validator, value, instance, schema) or ()

    return check


_KEYWORDS: dict[str, Keyword] = {
    **Draft202012Validator.VALIDATORS,
    "pattern": _pattern,
    "patternProperties": _pattern_properties,
    "additionalProperties": _additional_properties,
    "uniqueItems": _unique_items,
}
ReplyValidator: Any = extend(  # type: ignore[no-untyped-call]
    Draft202012Validator, {name: _timed(keyword) for name, keyword in _KEYWORDS.items()}
)


# -- at submit ---------------------------------------------------------------------------------


def schema_problem(schema: dict[str, Any]) -> str | None:
    """Why a `response_format` JSON Schema cannot be used, or None: checked once per distinct
    schema (an OpenAI file repeats the same schema on every line)."""
    return _problem(_key(schema))


def _key(schema: dict[str, Any]) -> bytes:
    return orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)


@lru_cache(maxsize=128)
def _problem(schema_json: bytes) -> str | None:
    schema = orjson.loads(schema_json)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        return exc.message
    resource = DRAFT202012.create_resource(schema)
    resolver = Registry().with_resource("", resource).resolver(base_uri="")
    uses = {"patternProperties": False, "unevaluatedProperties": False}
    problem = _walk(schema, resolver, uses)
    if problem is None and all(uses.values()):
        return "unevaluatedProperties beside patternProperties is not supported"
    return problem


def _walk(node: Any, resolver: Any, uses: dict[str, bool]) -> str | None:
    """The first problem under a schema: a reference that does not resolve, a pattern that RE2
    does not compile. Iterative, so that a deeply nested schema cannot exhaust the stack."""
    stack: list[tuple[Any, Any]] = [(node, resolver)]
    while stack:
        node, resolver = stack.pop()
        if isinstance(node, list):
            stack.extend((each, resolver) for each in node)
            continue
        if not isinstance(node, dict):
            continue
        if isinstance(node.get("$id"), str):
            resolver = resolver.in_subresource(DRAFT202012.create_resource(node))
        for keyword in ("$ref", "$dynamicRef"):
            ref = node.get(keyword)
            if isinstance(ref, str):
                try:
                    resolver.lookup(ref)
                except Unresolvable:
                    return f"{keyword} {ref!r} does not resolve within the schema"
        patterns = [node["pattern"]] if isinstance(node.get("pattern"), str) else []
        if isinstance(node.get("patternProperties"), dict):
            uses["patternProperties"] = True
            patterns += list(node["patternProperties"])
        if "unevaluatedProperties" in node:
            uses["unevaluatedProperties"] = True
        for pattern in patterns:
            try:
                _regex(pattern)
            except re2.error as exc:
                why = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
                return f"the pattern {pattern!r} is not supported ({why}); patterns run in RE2"
        for key, value in node.items():
            if key in _SCHEMA_MAPS and isinstance(value, dict):
                stack.extend((schema, resolver) for schema in value.values())
            elif key not in _DATA:
                stack.append((value, resolver))
    return None


# -- a reply -----------------------------------------------------------------------------------


@lru_cache(maxsize=128)
def _validator(schema_json: bytes) -> Draft202012Validator:
    validator: Draft202012Validator = ReplyValidator(orjson.loads(schema_json))
    return validator


#: Schemas whose check of a reply ran out of time: their next checks get a tenth of the time
#: (a batch of such replies holds the checking threads a tenth as long). The latest 1,024.
_TOO_SLOW: dict[bytes, None] = {}
_TOO_SLOW_LOCK = threading.Lock()


def schema_error(schema: dict[str, Any], value: Any, limit_s: float = CHECK_LIMIT_S) -> str | None:
    """Why `value` does not match a JSON Schema (checked at submit), or None when it does;
    CheckTimedOut past `limit_s`. Validators are compiled once per distinct schema."""
    key = _key(schema)
    _deadline.at = time.monotonic() + (limit_s / 10 if key in _TOO_SLOW else limit_s)
    try:
        validator = _validator(key)
        error = best_match(validator.iter_errors(value))
    except CheckTimedOut:
        with _TOO_SLOW_LOCK:  # replies are checked in several threads
            _TOO_SLOW[key] = None
            while len(_TOO_SLOW) > 1024:
                del _TOO_SLOW[next(iter(_TOO_SLOW))]
        raise
    except (Unresolvable, re2.error) as exc:  # a batch stored before these were checked
        return f"the schema could not be checked ({type(exc).__name__})"
    if error is None:
        return None
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return f"{error.message} (at output_json{where})"
