"""The official `openai` Python SDK against Tollgate in front of the fake ERNIE server.

Usage: python test_ernie_sdk.py http://127.0.0.1:PORT/v1

Run by tests/ernie.rs, which starts the gateway (model `ernie-speed` -> provider ernie) and the
fake. One non-stream and one stream call, then a tool loop (the call, then its result sent
back) not streamed and streamed; exits 1 if a check fails.
"""

import json
import sys

from openai import OpenAI

EXPECTED = "echo: hello from the sdk"


def main(base_url):
    client = OpenAI(base_url=base_url, api_key="sk-tollgate-demo", max_retries=0, timeout=20.0)
    messages = [
        {"role": "system", "content": "answer briefly"},
        {"role": "user", "content": "hello from the sdk"},
    ]
    resp = client.chat.completions.create(model="ernie-speed", messages=messages)
    assert resp.choices[0].message.content == EXPECTED, resp
    assert resp.choices[0].finish_reason == "stop", resp
    assert resp.usage is not None and resp.usage.total_tokens > 0, resp
    stream = client.chat.completions.create(
        model="ernie-speed",
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(
        c.delta.content for ch in chunks for c in ch.choices if c.delta and c.delta.content
    )
    assert text == EXPECTED, text
    assert len(chunks) > 2, f"only {len(chunks)} chunks: not streamed"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0, chunks[-1]
    check_tools(client)
    print("ok: ernie non-stream, stream and a tool loop through the openai SDK")


TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "the weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def check_tools(client):
    question = {"role": "user", "content": "weather in Paris"}
    # Not streamed: the call, then its result.
    resp = client.chat.completions.create(model="ernie-speed", messages=[question], tools=[TOOL])
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls", resp
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather", call
    assert json.loads(call.function.arguments) == {"input": "weather in Paris"}, call
    follow = [
        question,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    resp = client.chat.completions.create(model="ernie-speed", messages=follow, tools=[TOOL])
    assert resp.choices[0].message.content == 'echo: {"result":"sunny"}', resp
    # Streamed: the call arrives as a tool_calls delta.
    stream = client.chat.completions.create(
        model="ernie-speed", messages=[question], tools=[TOOL], stream=True
    )
    calls = {}
    finish = None
    for chunk in stream:
        for c in chunk.choices:
            for tc in c.delta.tool_calls or []:
                entry = calls.setdefault(tc.index, {"id": tc.id, "name": "", "arguments": ""})
                entry["name"] += tc.function.name or ""
                entry["arguments"] += tc.function.arguments or ""
            finish = c.finish_reason or finish
    assert finish == "tool_calls", finish
    assert list(calls) == [0] and calls[0]["name"] == "get_weather", calls
    assistant = {
        "role": "assistant",
        "tool_calls": [
            {
                "id": calls[0]["id"],
                "type": "function",
                "function": {"name": "get_weather", "arguments": calls[0]["arguments"]},
            }
        ],
    }
    follow = [question, assistant, {"role": "tool", "tool_call_id": calls[0]["id"], "content": "rain"}]
    stream = client.chat.completions.create(
        model="ernie-speed", messages=follow, tools=[TOOL], stream=True
    )
    text = "".join(c.delta.content or "" for ch in stream for c in ch.choices)
    assert text == 'echo: {"result":"rain"}', text


if __name__ == "__main__":
    main(sys.argv[1])
