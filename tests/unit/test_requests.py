"""Items as chat requests: messages and params per item, templates over rows, and what is
refused at submit (each refusal naming its field)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from pydantic import ValidationError

from api.planning import plan_batch
from shared.batches import BatchPlan
from shared.errors import InvalidRequest
from shared.schemas import BatchCreate
from shared.settings import Settings

REVIEWS = {"messages": [["system", "You rate {product} reviews."], ["human", "Review: {review}"]]}


def _settings(**overrides: Any) -> Settings:
    return Settings(**{"redis_url": "redis://x", "provider": "offline", **overrides})


def plan(body: Mapping[str, Any], **limits: Any) -> BatchPlan:
    return plan_batch(BatchCreate.model_validate(body), _settings(**limits))


def refusal(body: Mapping[str, Any], **limits: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        plan(body, **limits)
    return caught.value


def test_an_item_keeps_its_messages_and_only_the_params_it_sets() -> None:
    messages = [
        {"role": "user", "content": "I love it"},
        {"role": "assistant", "content": "positive"},
        {"role": "user", "content": [{"type": "text", "text": "And this?"},
                                     {"type": "input_audio",
                                      "input_audio": {"data": "AA", "format": "wav"}}]},
    ]  # fmt: skip
    got = plan({
        "prompts": [
            {"custom_id": "few", "messages": messages, "params": {"temperature": 0, "seed": 1}},
            {"custom_id": "p", "prompt": "Where is Seoul?", "params": {"max_tokens": 5}},
            "plain",
        ],
        "params": {"temperature": 0.7},
    })  # fmt: skip
    assert got.items == [
        ("few", messages, {"temperature": 0, "seed": 1}),
        ("p", "Where is Seoul?", {"max_completion_tokens": 5}),
        ("2", "plain"),
    ]
    assert got.params.provider_kwargs() == {"temperature": 0.7}


def test_a_tool_conversation_is_accepted() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    got = plan({"prompts": [{"messages": messages, "params": {"tools": tools}}]})
    assert got.items == [("0", messages, {"tools": tools})]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompts": [{"custom_id": "x"}]}, "prompts[0].prompt"),
        ({"prompts": [{"prompt": "a", "messages": [{"role": "user", "content": "b"}]}]},
         "prompts[0]"),
        ({"prompts": [{"messages": [{"role": "user"}]}]}, "prompts[0].messages[0].content"),
        ({"prompts": [{"messages": [{"role": "tool", "content": "x"}]}]},
         "prompts[0].messages[0].tool_call_id"),
        ({"prompts": [{"messages": [{"role": "user", "content": "x", "tool_calls": []}]}]},
         "prompts[0].messages[0].tool_calls"),
        ({"prompts": [{"messages": [{"role": "user", "content": "x"},
                                    {"role": "tool", "tool_call_id": "c", "content": "y"},
                                    {"role": "user", "content": [{"type": "file"}]}]}]},
         "prompts[0].messages[2].content[0].file"),
        ({"prompts": [{"prompt": "a", "params": {"max_tokens": 10**6}}]},
         "prompts[0].params.max_tokens"),
        ({"prompts": [{"prompt": "a", "params": {"max_completion_tokens": 10**6}}]},
         "prompts[0].params.max_completion_tokens"),
        ({"prompts": [{"messages": [{"role": "user", "content": "x" * 11}]}]},
         "prompts[0].messages"),
        ({"model": "m"}, "prompts"),
        ({"prompts": ["a"], "template": REVIEWS, "inputs": [{}]}, "template"),
        ({"template": REVIEWS}, "inputs"),
        ({"inputs": [{"review": "x"}]}, "template"),
    ],
    ids=["no-prompt", "both", "no-content", "tool-without-id", "tool-calls-on-user", "bad-part",
         "item-max-tokens", "item-max-completion-tokens", "messages-too-long", "nothing",
         "prompts-and-template", "template-without-inputs", "inputs-without-template"],
)  # fmt: skip
def test_a_wrong_item_is_refused_naming_it(body: dict[str, Any], param: str) -> None:
    assert refusal(body, max_prompt_chars=10).param == param


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"n": 2}, "n"),
        ({"stream": True}, "stream"),
        ({"logit_bias": {"1": 200}}, "logit_bias"),
        ({"top_logprobs": 21}, "top_logprobs"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
         "response_format"),
        ({"response_format": {"type": "json_schema",
                              "json_schema": {"name": "x", "schema": {"type": 5}}}},
         "response_format"),
        ({"tools": [{"type": "web_search"}]}, "tools"),
        ({"tools": [{"type": "custom", "custom": {"name": "sql"}}]}, "tools"),
        ({"tools": [{"type": "function", "function": {}}]}, "tools"),
        ({"functions": []}, "functions"),
    ],
    ids=["n", "stream", "logit-bias", "top-logprobs", "format-type", "schema-name",
         "bad-schema", "builtin-tool", "custom-tool", "unnamed-function", "unknown"],
)  # fmt: skip
def test_params_outside_openais_chat_fields_are_refused(params: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        BatchCreate.model_validate({"prompts": ["a"], "params": params})
    assert caught.value.errors()[0]["loc"][:2] == ("params", field)


def test_n_1_and_stream_false_are_accepted_and_not_sent() -> None:
    got = plan({"prompts": [{"prompt": "a", "params": {"n": 1, "stream": False, "seed": 3}}]})
    assert got.items == [("0", "a", {"seed": 3})]


def test_a_template_fills_each_row_literally() -> None:
    rows = [
        {"custom_id": "r1", "product": "lamp", "review": "works {fine}", "stars": 5},
        {"product": "desk", "review": "ok"},
    ]
    got = plan({"template": REVIEWS, "inputs": rows})
    assert got.items == [
        ("r1", [{"role": "system", "content": "You rate lamp reviews."},
                {"role": "user", "content": "Review: works {fine}"}]),
        ("1", [{"role": "system", "content": "You rate desk reviews."},
               {"role": "user", "content": "Review: ok"}]),
    ]  # fmt: skip
    assert got.system is None


def test_a_fixed_system_message_of_a_template_is_stored_once() -> None:
    template = {"messages": [["system", "Rate {{reviews}}."], ["human", "{review}"]]}
    got = plan({"template": template, "inputs": [{"review": "ok"}]})
    assert (got.system, got.items) == (
        "Rate {reviews}.",
        [("0", [{"role": "user", "content": "ok"}])],
    )


def test_a_template_system_message_wins_over_the_batchs() -> None:
    template = {"messages": [["system", "Rate."], ["ai", "Sure."], ["human", "{review}"]]}
    got = plan({"template": template, "inputs": [{"review": "ok"}], "system": "Be terse."})
    assert got.system == "Be terse."
    assert got.items == [("0", [{"role": "system", "content": "Rate."},
                                {"role": "assistant", "content": "Sure."},
                                {"role": "user", "content": "ok"}])]  # fmt: skip


@pytest.mark.parametrize(
    ("template", "inputs", "param", "says"),
    [
        (REVIEWS, [{"product": "a", "review": "b"}, {"product": "c"}], "inputs[1]", "review"),
        ({"messages": [["human", "{x.__class__}"]]}, [{"x": 1}], "template", "attribute"),
        ({"messages": [["human", "{unclosed"]]}, [{}], "template", "not valid"),
        ({"messages": [["human", "{}"]]}, [{}], "template", "empty placeholder"),
        (REVIEWS, [{"custom_id": "a", "product": "p", "review": "r"},
                   {"custom_id": "a", "product": "p", "review": "r"}], "inputs[1].custom_id",
         "twice"),
        ({"messages": [["human", "{x:>999999999}"]]}, [{"x": 1}], "template", "format spec"),
        ({"messages": [["human", "{x!r}"]]}, [{"x": 1}], "template", "conversion"),
        ({"messages": [["human", "{x}"]]}, [{"x": 1, "custom_id": "c" * 257}],
         "inputs[0].custom_id", "256"),
        ({"messages": [["human", "{x}"]]}, [{"x": "y" * 51}], "inputs[0]", "longer than 50"),
    ],
    ids=["missing-variable", "attribute-access", "unbalanced", "empty", "duplicate-id",
         "format-spec", "conversion", "long-custom-id", "too-long"],
)  # fmt: skip
def test_a_bad_template_or_row_is_refused_naming_it(
    template: dict[str, Any], inputs: list[dict[str, Any]], param: str, says: str
) -> None:
    error = refusal({"template": template, "inputs": inputs}, max_prompt_chars=50)
    assert (error.param, says in error.message) == (param, True), error.message


def test_an_empty_or_null_cell_fills_its_variable_with_nothing() -> None:
    got = plan({"template": {"messages": [["human", "Rate: {review}"]]},
                "inputs": [{"review": ""}, {"review": None}]})  # fmt: skip
    assert [item[1] for item in got.items] == [[{"role": "user", "content": "Rate: "}]] * 2


def test_too_many_rows_names_inputs() -> None:
    rows = [{"review": str(i)} for i in range(3)]
    assert refusal({"template": REVIEWS, "inputs": rows}, max_prompts=2).param == "inputs"


@pytest.mark.parametrize(
    "call",
    [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "not json"}},
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "[1, 2]"}},
        {"id": "c1", "type": "function"},
        {"id": "c1", "type": "custom", "custom": {"name": "f", "input": "x"}},
    ],
    ids=["not-json", "not-an-object", "no-function", "custom"],
)
def test_a_tool_call_the_provider_could_not_take_is_refused(call: dict[str, Any]) -> None:
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [call]}]
    with pytest.raises(ValidationError) as caught:
        BatchCreate.model_validate({"prompts": [{"messages": messages}]})
    assert caught.value.errors()[-1]["loc"][3:7] == ("messages", 1, "tool_calls", 0)


@pytest.mark.parametrize(
    ("body", "limits", "param"),
    [
        ({"template": {"messages": [["human", "{x}" * 4]]}, "inputs": [{"x": "y"}]},
         {"max_prompt_chars": 10}, "template"),
        ({"template": {"messages": [["human", "{x} {x} {{x}}"]]}, "inputs": [{"x": "abcdef"}]},
         {"max_prompt_chars": 16}, "inputs[0]"),  # 6 + 1 + 6 + 1 + 3 = 17
        ({"template": {"messages": [["human", "{x}"]]}, "inputs": [{"x": "abcd"}] * 3},
         {"max_body_bytes": 11}, "inputs"),
    ],
    ids=["template-too-long", "row-counted-from-parts", "rows-too-long-in-all"],
)  # fmt: skip
def test_a_template_batch_is_sized_before_it_is_rendered(
    body: dict[str, Any], limits: dict[str, int], param: str
) -> None:
    assert refusal(body, **limits).param == param


def test_a_row_counted_from_the_template_s_parts_is_exactly_as_long_as_rendered() -> None:
    body = {"template": {"messages": [["human", "{x} {x} {{x}}"]]}, "inputs": [{"x": "abcdef"}]}
    got = plan(body, max_prompt_chars=17)
    assert got.items == [("0", [{"role": "user", "content": "abcdef abcdef {x}"}])]
