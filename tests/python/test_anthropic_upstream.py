"""The official `openai` Python SDK against a Tollgate model served by an Anthropic upstream.

Usage: python test_anthropic_upstream.py http://127.0.0.1:PORT/v1

Run by tests/anthropic.rs, which starts the gateway with model `claude` behind the test kit's
fake Anthropic, the demo key, and one rate-limit error queued for the first call. Plain script
(no pytest): one line per check, exits 1 if any check fails.
"""

import json

import openai
from openai import OpenAI

import checks  # tests/python/checks.py: the shared runner

DEMO_KEY = "sk-tollgate-demo"
MODEL = "claude"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
        },
    }
]


def client(base_url):
    return OpenAI(base_url=base_url, api_key=DEMO_KEY, max_retries=0, timeout=20.0)


def user(text):
    return [{"role": "user", "content": text}]


def check_rate_limit_error(base_url):
    try:
        client(base_url).chat.completions.create(model=MODEL, messages=user("hi"))
    except openai.RateLimitError as e:
        assert e.status_code == 429, e.status_code
        assert e.body["type"] == "rate_limit_error", e.body
        return
    raise AssertionError("no RateLimitError")


def check_chat(base_url):
    resp = client(base_url).chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Be brief."}] + user("hello from python"),
        max_tokens=50,
    )
    assert resp.choices[0].message.content == "echo: hello from python", resp
    assert resp.choices[0].finish_reason == "stop", resp
    assert resp.usage.prompt_tokens == 5, resp.usage
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def check_stream_with_usage(base_url):
    stream = client(base_url).chat.completions.create(
        model=MODEL,
        messages=user("stream this please"),
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert text == "echo: stream this please", text
    assert finish == "stop", finish
    assert usage is not None and usage.completion_tokens == 4, usage


def check_tools(base_url):
    resp = client(base_url).chat.completions.create(
        model=MODEL, messages=user("weather in Paris"), tools=TOOLS
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather", call
    assert json.loads(call.function.arguments) == {"query": "weather in Paris"}, call
    follow = client(base_url).chat.completions.create(
        model=MODEL,
        tools=TOOLS,
        messages=user("weather in Paris")
        + [
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
        ],
    )
    assert follow.choices[0].message.content == "echo: result: sunny", follow


def check_tools_stream(base_url):
    stream = client(base_url).chat.completions.create(
        model=MODEL, messages=user("weather in Rome"), tools=TOOLS, stream=True
    )
    name, args, finish = None, "", None
    for chunk in stream:
        for c in chunk.choices:
            for t in c.delta.tool_calls or []:
                name = t.function.name or name
                args += t.function.arguments or ""
            finish = c.finish_reason or finish
    assert name == "get_weather", name
    assert json.loads(args) == {"query": "weather in Rome"}, args
    assert finish == "tool_calls", finish


def check_untranslatable_field(base_url):
    try:
        client(base_url).chat.completions.create(model=MODEL, messages=user("hi"), seed=3)
    except openai.BadRequestError as e:
        assert e.body["param"] == "seed", e.body
        return
    raise AssertionError("no BadRequestError for seed")


CHECKS = [
    check_rate_limit_error,
    check_chat,
    check_stream_with_usage,
    check_tools,
    check_tools_stream,
    check_untranslatable_field,
]


if __name__ == "__main__":
    checks.run(CHECKS)
