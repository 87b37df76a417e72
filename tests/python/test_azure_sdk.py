"""The official `openai` Python SDK against Tollgate models served by an Azure OpenAI upstream.

Usage: python test_azure_sdk.py http://127.0.0.1:PORT/v1

Run by tests/azure.rs, which starts the gateway with model `az` (chat, deployment `gpt4o-prod`)
and `emb` (embeddings, deployment `emb-prod`) behind the test kit's fake Azure resource, whose
content filter refuses prompts holding `FILTERED`. The client is the plain `OpenAI` client with a
Tollgate key: it knows nothing of Azure. Plain script (no pytest): one line per check, exits 1 if
any check fails.
"""

import base64
import json
import struct

import openai
from openai import OpenAI

import checks  # tests/python/checks.py: the shared runner

DEMO_KEY = "sk-tollgate-demo"
MODEL = "az"
FILTERED = "forbidden-topic"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def client(base_url):
    return OpenAI(base_url=base_url, api_key=DEMO_KEY, max_retries=0, timeout=20.0)


def user(text):
    return [{"role": "user", "content": text}]


def check_chat(base_url):
    resp = client(base_url).chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Be brief."}] + user("hello from python"),
    )
    assert resp.choices[0].message.content == "echo: hello from python", resp
    assert resp.choices[0].finish_reason == "stop", resp
    # Azure names its deployment's model; the client sees the name it asked for.
    assert resp.model == MODEL, resp.model
    assert resp.usage.prompt_tokens == 5, resp.usage
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    # Azure's extras reach the client as they came.
    extra = resp.model_extra or {}
    assert "prompt_filter_results" in extra, extra


def check_stream_with_usage(base_url):
    stream = client(base_url).chat.completions.create(
        model=MODEL,
        messages=user("stream this please"),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    # Azure opens a stream with its prompt-filter chunk: no choices.
    assert chunks[0].choices == [], chunks[0]
    assert all(c.model == MODEL for c in chunks), [c.model for c in chunks]
    text = "".join(c.delta.content or "" for ch in chunks for c in ch.choices)
    finish = [c.finish_reason for ch in chunks for c in ch.choices if c.finish_reason]
    assert text == "echo: stream this please", text
    assert finish == ["stop"], finish
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 4, chunks[-1]


def check_embeddings(base_url):
    c = client(base_url)
    # The SDK asks for base64 unless told otherwise, and decodes it.
    default = c.embeddings.create(model="emb", input=["a", "b"])
    floats = c.embeddings.create(model="emb", input=["a", "b"], encoding_format="float")
    raw = c.embeddings.create(model="emb", input=["a", "b"], encoding_format="base64")
    assert default.model == "emb", default.model
    assert len(default.data) == 2 and default.usage.prompt_tokens > 0, default
    for d, f, r in zip(default.data, floats.data, raw.data):
        assert len(f.embedding) == 8, f
        assert all(abs(x - y) < 1e-6 for x, y in zip(d.embedding, f.embedding)), (d, f)
        decoded = struct.unpack("<8f", base64.b64decode(r.embedding))
        assert all(abs(x - y) < 1e-6 for x, y in zip(decoded, f.embedding)), (decoded, f)


def check_tools(base_url):
    resp = client(base_url).chat.completions.create(
        model=MODEL, messages=user("weather in Paris"), tools=TOOLS, tool_choice="auto"
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert resp.model == MODEL, resp.model
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather", call
    assert json.loads(call.function.arguments) == {"city": "weather in Paris"}, call
    follow = client(base_url).chat.completions.create(
        model=MODEL,
        tools=TOOLS,
        messages=user("weather in Paris")
        + [
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
        ],
    )
    assert follow.choices[0].message.content == "echo: sunny", follow
    assert follow.choices[0].finish_reason == "stop", follow


def check_tools_stream(base_url):
    stream = client(base_url).chat.completions.create(
        model=MODEL,
        messages=user("weather in Rome"),
        tools=TOOLS,
        stream=True,
        stream_options={"include_usage": True},
    )
    call_id, name, args, finish, usage = None, None, "", None, None
    for chunk in stream:
        assert chunk.model == MODEL, chunk.model
        usage = chunk.usage or usage
        for c in chunk.choices:
            for t in c.delta.tool_calls or []:
                call_id = t.id or call_id
                name = t.function.name or name
                args += t.function.arguments or ""
            finish = c.finish_reason or finish
    assert call_id and call_id.startswith("call_"), call_id
    assert name == "get_weather", name
    assert json.loads(args) == {"city": "weather in Rome"}, args
    assert finish == "tool_calls", finish
    assert usage is not None and usage.total_tokens > 0, usage


def check_content_filter(base_url):
    try:
        client(base_url).chat.completions.create(
            model=MODEL, messages=user(f"tell me about {FILTERED}")
        )
    except openai.BadRequestError as e:
        assert e.status_code == 400, e.status_code
        assert e.code == "content_filter", e.body
        assert e.param == "prompt", e.body
        assert "content management policy" in e.message, e.message
        return
    raise AssertionError("no BadRequestError for a filtered prompt")


CHECKS = [
    check_chat,
    check_stream_with_usage,
    check_embeddings,
    check_tools,
    check_tools_stream,
    check_content_filter,
]


if __name__ == "__main__":
    checks.run(CHECKS)
