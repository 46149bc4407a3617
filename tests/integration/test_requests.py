"""Items as real chat requests, end to end: OpenAI Batch files run unchanged, structured output,
templates over rows, and results that say what the provider said. Real API (in process), real
worker processes, the real ChatOpenAI over HTTP against the mock, a real Redis."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from shared.output_lines import ChatCompletion, output_line
from shared.schemas import Batch, ItemResult
from shared.settings import Settings
from tests.conftest import api_client
from tests.helpers import MockProvider, Proc
from tests.integration.flows import all_results, openai_settings, openai_worker, submit, wait_final

pytestmark = pytest.mark.integration

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO=", "detail": "low"}}
GENRE = {
    "type": "json_schema",
    "json_schema": {
        "name": "genre",
        "strict": True,
        "schema": {"type": "object", "properties": {"genre": {"type": "string"}},
                   "required": ["genre"], "additionalProperties": False},
    },
}  # fmt: skip

#: OpenAI Batch lines of the shapes found in real files, each with its own messages and params.
LINES: list[dict[str, Any]] = [
    {"custom_id": "multi-turn", "body": {"messages": [
        {"role": "system", "content": "Classify sentiment."},
        {"role": "user", "content": "I love it"}, {"role": "assistant", "content": "positive"},
        {"role": "user", "content": "multi-turn: It broke on day two."}],
        "temperature": 0, "seed": 42}},
    {"custom_id": "two-users", "body": {"messages": [
        {"role": "developer", "content": "Summarise both."},
        {"role": "user", "content": "First: the lamp works."},
        {"role": "user", "content": "two-users: Second: the desk wobbles."}],
        "frequency_penalty": 0.5, "presence_penalty": -0.25, "stop": ["END"]}},
    {"custom_id": "image", "body": {"messages": [
        {"role": "user", "content": [{"type": "text", "text": "image: What is in it?"}, IMAGE]}],
        "max_tokens": 300, "top_p": 0.9, "user": "u-17"}},
    {"custom_id": "json-mode", "body": {"messages": [
        {"role": "user", "content": "json-mode: Name a colour as JSON."}],
        "response_format": {"type": "json_object"}, "logit_bias": {"50256": -100},
        "tools": [{"type": "function", "function": {"name": "palette"}}]}},
    {"custom_id": "tool-turns", "body": {"messages": [
        {"role": "user", "content": "What is the weather in Seoul?"},
        {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "weather", "arguments": '{"city": "Seoul"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
        {"role": "user", "name": "kim", "content": [
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
            {"type": "file", "file": {"file_id": "file-abc"}},
            {"type": "text", "text": "tool-turns: and tomorrow?"}]}],
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}}}}],
        "tool_choice": "none", "parallel_tool_calls": False}},
    {"custom_id": "schema", "body": {"messages": [
        {"role": "system", "content": "Answer with the genre."},
        {"role": "user", "content": "schema: Dune"}],
        "response_format": GENRE, "max_completion_tokens": 50, "logprobs": True,
        "top_logprobs": 2}},
]  # fmt: skip


def ndjson(lines: list[dict[str, Any]], model: str = "gpt-4o-mini") -> str:
    rows = []
    for line in lines:
        body = {"model": model, **line["body"]}
        row = {"custom_id": line["custom_id"], "method": "POST", "url": "/v1/chat/completions"}
        rows.append(json.dumps({**row, "body": body}) + "\n")
    return "".join(rows)


def last_user_text(messages: list[dict[str, Any]]) -> str:
    content = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    if isinstance(content, str):
        return content
    return "".join(part["text"] for part in content if part["type"] == "text")


def sent_for(mock: MockProvider, text: str) -> dict[str, Any]:
    """The one request body the mock received whose last user message is `text`."""
    bodies = [b for b in mock.requests() if last_user_text(b["messages"]) == text]
    assert len(bodies) == 1, f"{len(bodies)} requests for {text!r}"
    return bodies[0]


def as_sent(message: dict[str, Any]) -> dict[str, Any]:
    """A message as ChatOpenAI puts it on the wire: a tool-calling turn with no content says
    `content: null`; the same arguments object, in LangChain's JSON spacing."""
    if "tool_calls" not in message:
        return message
    calls = [{**call, "function": {**call["function"], "arguments": json.dumps(
        json.loads(call["function"]["arguments"]))}} for call in message["tool_calls"]]  # fmt: skip
    return {"content": None, **message, "tool_calls": calls}


#: ChatOpenAI sends `max_tokens` under its current name, `max_completion_tokens`.
WIRE_NAMES = {"max_tokens": "max_completion_tokens"}


async def run_batch(
    client: httpx.AsyncClient, **body: Any
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    batch = await submit(client, **body)
    done = await wait_final(client, batch["id"])
    return done, await all_results(client, batch["id"])


async def test_openai_batch_files_run_unchanged_and_the_provider_sees_each_line_as_written(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    openai_worker(workers, mock)
    async with api_client(openai_settings(redis_url, mock)) as client:
        response = await client.post(
            "/v1/batches", content=ndjson(LINES),
            headers={"Content-Type": "application/x-ndjson"},
        )  # fmt: skip
        assert response.status_code == 202, response.text
        done = await wait_final(client, response.json()["id"])
        items = await all_results(client, done["id"])

    assert done["status"] == "completed"
    assert [(i["custom_id"], i["status"]) for i in items] == [
        (line["custom_id"], "succeeded") for line in LINES
    ]
    for line in LINES:
        wanted = line["body"]
        sent = sent_for(mock, last_user_text(wanted["messages"]))
        assert sent["messages"] == [as_sent(m) for m in wanted["messages"]], line["custom_id"]
        assert sent["model"] == "gpt-4o-mini"
        params = {WIRE_NAMES.get(k, k): v for k, v in wanted.items() if k != "messages"}
        assert {k: sent.get(k) for k in params} == params, line["custom_id"]
        assert "max_tokens" not in sent
    by_id = {item["custom_id"]: item for item in items}
    assert by_id["json-mode"]["output_json"] == {
        "reply": "mock reply to: json-mode: Name a colour as JSON."
    }
    assert by_id["schema"]["output_json"] == {"genre": "mock"}
    assert by_id["multi-turn"]["output_json"] is None


async def test_a_line_naming_another_model_is_refused_naming_the_line(
    client: httpx.AsyncClient,
) -> None:
    body = ndjson(LINES[:2]) + ndjson(LINES[2:3], model="gpt-4o")
    response = await client.post(
        "/v1/batches", content=body, headers={"Content-Type": "application/x-ndjson"}
    )
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "line[3].body.model"


async def test_structured_output_is_parsed_and_a_reply_that_is_not_json_fails_only_its_item(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    openai_worker(workers, mock)
    prompts = ["Dune", {"custom_id": "chatty", "prompt": "Neuromancer [[not_json]]"},
               {"custom_id": "wrong", "prompt": "Emma [[wrong_json]]"}, "Solaris",
               {"custom_id": "cut", "prompt": "Ubik [[cut]]"}]  # fmt: skip
    async with api_client(openai_settings(redis_url, mock)) as client:
        done, items = await run_batch(client, prompts=prompts, params={"response_format": GENRE})

    assert done["status"] == "completed"
    assert done["request_counts"] | {"total": 0} == {
        "total": 0, "succeeded": 2, "failed": 3, "cancelled": 0, "expired": 0, "pending": 0,
    }  # fmt: skip
    assert [(i["status"], i["output_json"]) for i in items] == [
        ("succeeded", {"genre": "mock"}), ("failed", None), ("failed", None),
        ("succeeded", {"genre": "mock"}), ("failed", None),
    ]  # fmt: skip
    cut = items[4]
    assert (cut["error"]["type"], cut["finish_reason"]) == ("invalid_output", "length")
    assert "cut at max_tokens" in cut["error"]["message"]
    line = output_line(ItemResult.model_validate(cut), Batch.model_validate(done))
    assert line is not None  # in OpenAI's format, the provider's answer as it came
    assert line.response is not None
    assert isinstance(line.response.body, ChatCompletion)
    assert line.response.body.choices[0].finish_reason == "length"
    assert line.response.body.choices[0].message.content == cut["output"]
    chatty, wrong = items[1], items[2]
    assert chatty["error"]["type"] == wrong["error"]["type"] == "invalid_output"
    assert chatty["output"] == "mock reply to: Neuromancer [[not_json]]"  # the raw text is kept
    assert wrong["output"] == '{"unexpected": true}'
    assert "does not match the schema" in wrong["error"]["message"]
    assert chatty["usage"]["output_tokens"] > 0  # the tokens were spent, and are counted
    assert sent_for(mock, "Dune")["response_format"] == GENRE


async def test_a_30_row_template_fills_each_row(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    openai_worker(workers, mock)
    template = {"messages": [["system", "You rate {product} reviews."],
                             ["human", "Review {n}: {review}"]]}  # fmt: skip
    rows = [{"custom_id": f"r{n}", "n": n, "product": f"lamp-{n % 3}",
             "review": f"works {{fine}} {n}", "unused": "x"} for n in range(30)]  # fmt: skip
    async with api_client(openai_settings(redis_url, mock)) as client:
        done, items = await run_batch(client, template=template, inputs=rows)

    assert done["status"] == "completed"
    assert [i["custom_id"] for i in items] == [f"r{n}" for n in range(30)]
    for n, item in enumerate(items):
        text = f"Review {n}: works {{fine}} {n}"
        assert item["output"] == f"mock reply to: {text}"
        assert sent_for(mock, text)["messages"] == [
            {"role": "system", "content": f"You rate lamp-{n % 3} reviews."},
            {"role": "user", "content": text},
        ]


async def test_a_template_row_missing_a_variable_is_a_422_naming_it(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/v1/batches", json={
        "template": {"messages": [["human", "{product}: {review}"]]},
        "inputs": [{"product": "a", "review": "b"}, {"product": "c"}],
    })  # fmt: skip
    assert response.status_code == 422
    error = response.json()["error"]
    assert (error["param"], "review" in error["message"]) == ("inputs[1]", True)


async def test_a_reply_cut_at_max_tokens_says_length_in_both_result_formats(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    openai_worker(workers, mock)
    prompts = [{"custom_id": "cut", "prompt": "tell me a long story", "params": {"max_tokens": 3}},
               {"custom_id": "whole", "prompt": "hi"}]  # fmt: skip
    async with api_client(openai_settings(redis_url, mock)) as client:
        done, items = await run_batch(client, prompts=prompts)
        ndjson_items = [
            json.loads(line)
            for line in (
                await client.get(
                    f"/v1/batches/{done['id']}/results",
                    headers={"Accept": "application/x-ndjson"},
                )
            ).text.splitlines()
        ]

    assert [(i["output"], i["finish_reason"]) for i in items] == [
        ("mock reply to:", "length"), ("mock reply to: hi", "stop"),
    ]  # fmt: skip
    assert [i["finish_reason"] for i in ndjson_items] == ["length", "stop"]
    batch = Batch.model_validate(done)
    lines = [output_line(ItemResult.model_validate(i), batch) for i in items]
    reasons = [
        line.response.body.choices[0].finish_reason
        for line in lines
        if line and line.response and isinstance(line.response.body, ChatCompletion)
    ]
    assert reasons == ["length", "stop"]


async def test_tool_calls_refusals_and_token_details_come_back_as_the_provider_sent_them(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    openai_worker(workers, mock)
    city = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": city}}]
    prompts = [
        {"custom_id": "tool", "prompt": "weather in Seoul?",
         "params": {"tools": tools, "tool_choice": "required"}},
        {"custom_id": "refused", "prompt": "something bad [[refuse]]"},
        {"custom_id": "filtered", "prompt": "something worse [[filtered]]"},
        {"custom_id": "cached", "prompt": "a b c d e f g [[cached=4]] [[reasoning=2]]"},
    ]  # fmt: skip
    async with api_client(openai_settings(redis_url, mock)) as client:
        done, items = await run_batch(client, prompts=prompts)
        metrics = (await client.get("/metrics")).text

    tool, refused, filtered, cached = items
    assert (tool["status"], tool["finish_reason"], tool["output"]) == (
        "succeeded",
        "tool_calls",
        None,
    )
    assert [c["function"]["name"] for c in tool["tool_calls"]] == ["lookup"]
    assert json.loads(tool["tool_calls"][0]["function"]["arguments"]) == {"city": "mock"}
    assert (refused["refusal"], refused["output"]) == ("mock refuses this request", None)
    assert filtered["finish_reason"] == "content_filter"
    assert (cached["usage"]["cached_tokens"], cached["usage"]["reasoning_tokens"]) == (4, 2)
    assert (done["usage"]["cached_tokens"], done["usage"]["reasoning_tokens"]) == (4, 2)
    assert "promptbatch_cached_tokens_total 4.0" in metrics
    assert "promptbatch_reasoning_tokens_total 2.0" in metrics
    batch = Batch.model_validate(done)
    line = output_line(ItemResult.model_validate(tool), batch)
    assert line is not None
    assert line.response is not None
    assert isinstance(line.response.body, ChatCompletion)
    assert line.response.body.choices[0].message.tool_calls == tool["tool_calls"]


async def test_per_item_params_override_the_batchs_and_the_batch_system_leads_items_without_one(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    openai_worker(workers, mock)
    prompts = [
        {"custom_id": "own", "messages": [{"role": "system", "content": "Mine."},
                                          {"role": "user", "content": "own system"}],
         "params": {"temperature": 0.9}},
        {"custom_id": "none", "messages": [{"role": "user", "content": "no system"}]},
        "plain prompt",
    ]  # fmt: skip
    async with api_client(openai_settings(redis_url, mock)) as client:
        done, _ = await run_batch(
            client, prompts=prompts, system="Batch.", params={"temperature": 0.1, "seed": 5}
        )
    assert done["status"] == "completed"
    own, bare, plain = (sent_for(mock, t) for t in ("own system", "no system", "plain prompt"))
    assert [m["content"] for m in own["messages"]] == ["Mine.", "own system"]
    assert [m["content"] for m in bare["messages"]] == ["Batch.", "no system"]
    assert [m["content"] for m in plain["messages"]] == ["Batch.", "plain prompt"]
    assert [(b["temperature"], b["seed"]) for b in (own, bare, plain)] == [
        (0.9, 5),
        (0.1, 5),
        (0.1, 5),
    ]


async def test_the_offline_model_runs_every_form(
    settings: Settings, workers: Callable[..., Proc]
) -> None:
    workers()
    prompts = [
        {"custom_id": "few", "messages": [{"role": "user", "content": "I love it"},
                                          {"role": "assistant", "content": "positive"},
                                          {"role": "user", "content": "It broke."}]},
        {"custom_id": "json", "prompt": "Seoul?",
         "params": {"response_format": {"type": "json_object"}}},
        {"custom_id": "cut", "prompt": "one two three four", "params": {"max_tokens": 2}},
    ]  # fmt: skip
    async with api_client(settings) as client:
        done, items = await run_batch(client, prompts=prompts)
    assert done["status"] == "completed"
    assert [(i["output"], i["output_json"], i["finish_reason"]) for i in items] == [
        ("[offline] You asked: It broke.", None, "stop"),
        ('{"you_asked": "Seoul?"}', {"you_asked": "Seoul?"}, "stop"),
        ("[offline] You", None, "length"),
    ]
