"""`completion_window`: what a submission may ask for, and how it reads back."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from api.planning import completion_window, plan_batch
from shared.errors import InvalidRequest
from shared.schemas import MAX_COMPLETION_WINDOW_S, BatchCreate
from shared.settings import Settings

WEEK = 7 * 24 * 3600


def _plan(window: Any) -> Any:
    settings = Settings(redis_url="redis://x", provider="offline")
    return plan_batch(
        BatchCreate.model_validate({"prompts": ["a"], "completion_window": window}), settings
    )


@pytest.mark.parametrize(
    ("window", "label", "seconds"),
    [
        ("30m", "30m", 1800),
        ("24h", "24h", 86400),
        ("3600", "3600s", 3600),
        (3600, "3600s", 3600),
        ("90s", "90s", 90),
        ("7d", "7d", WEEK),
        ("0030m", "30m", 1800),
        (1, "1s", 1),
        (WEEK, f"{WEEK}s", WEEK),
    ],
)
def test_a_window_is_seconds_or_digits_with_one_unit(window: Any, label: str, seconds: int) -> None:
    plan = _plan(window)
    assert (plan.completion_window, plan.completion_window_s) == (label, seconds)


def test_no_window_is_the_default() -> None:
    plan = _plan(None)
    assert (plan.completion_window, plan.completion_window_s) == (None, None)
    assert MAX_COMPLETION_WINDOW_S == WEEK


@pytest.mark.parametrize("window", ["8d", "0", "0m", "169h", "604801", "999999999d"])
def test_a_window_of_the_right_form_but_out_of_bounds_is_refused_naming_it(window: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        _plan(window)
    assert caught.value.param == "completion_window"


@pytest.mark.parametrize(
    "window",
    [
        "-1",
        "abc",
        "30 m",
        "30m\n",
        "1.5h",
        "30M",
        "h",
        "",
        "\u0663\u0660m",
        -1,
        0,
        WEEK + 1,
        True,
        1.5,
    ],
)
def test_a_window_of_another_form_is_refused_by_the_schema(window: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        BatchCreate.model_validate({"prompts": ["a"], "completion_window": window})
    assert {e["loc"][0] for e in caught.value.errors()} == {"completion_window"}


@pytest.mark.parametrize("window", [-1, 0, WEEK + 1, "-5", "x1s"])
def test_the_parser_alone_refuses_what_the_schema_would(window: Any) -> None:
    with pytest.raises(InvalidRequest) as caught:
        completion_window(window)
    assert caught.value.param == "completion_window"
