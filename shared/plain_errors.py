"""Validation errors in plain words: a sentence about the caller's input, naming the field as
`param` does, never pydantic's own wording ("Value error, ...", "Input should be a valid
dictionary or instance of PromptTemplate")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: What a value should have been, by the type of the error that says it was not.
_KINDS = {
    "string_type": "a string",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "dataclass_type": "an object",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "none_required": "null",
}
#: Prefixes pydantic puts before a validator's own message.
_PREFIXES = ("Value error, ", "Assertion failed, ")


def is_kind_error(error: Mapping[str, Any]) -> bool:
    """Whether the error says only what type the value should have been."""
    return error.get("type") in _KINDS


def sentence(
    error: Mapping[str, Any], param: str | None, rivals: Sequence[Mapping[str, Any]] = ()
) -> str:
    """`error` as a sentence about `param` (None: the body itself). `rivals` are errors of the
    other branches of a union at the same place: a value that is none of them "must be a
    string or an object"."""
    kind = str(error.get("type", ""))
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    subject = param or "The body"
    if kind in _KINDS:
        kinds = (_KINDS[str(e.get("type"))] for e in (error, *rivals) if is_kind_error(e))
        what = " or ".join(dict.fromkeys(kinds))  # each once, in order
        if param is None and what == "an object":
            return "The body must be a JSON object."
        return f"{subject} must be {what}."
    if kind == "missing":
        return f"{subject} is required."
    if kind in ("too_short", "too_long"):
        n = int(ctx.get("min_length" if kind == "too_short" else "max_length", 0))
        bound = "at least" if kind == "too_short" else "at most"
        return f"{subject} must hold {bound} {n} item{'' if n == 1 else 's'}."
    if kind == "string_too_short":
        n = int(ctx.get("min_length", 1))
        if n <= 1:
            return f"{subject} must not be empty."
        return f"{subject} must be at least {n} characters long."
    if kind == "string_too_long":
        return f"{subject} must be at most {ctx.get('max_length')} characters long."
    bounds = {
        "greater_than_equal": ("at least", "ge"),
        "greater_than": ("more than", "gt"),
        "less_than_equal": ("at most", "le"),
        "less_than": ("less than", "lt"),
    }
    if kind in bounds:
        words, key = bounds[kind]
        return f"{subject} must be {words} {ctx.get(key)}."
    if kind in ("literal_error", "enum"):
        return f"{subject} must be {ctx.get('expected')}."
    if kind == "string_pattern_mismatch":
        return f"{subject} must match the pattern {ctx.get('pattern')!r}."
    message = str(error.get("msg", "")) or "Invalid value."
    for prefix in _PREFIXES:
        message = message.removeprefix(prefix)
    if message.startswith("Input should be "):  # a check of pydantic's not named above
        return f"{subject} should be {message.removeprefix('Input should be ')}."
    return f"{message} ({param})" if param and not message.startswith(param) else message
