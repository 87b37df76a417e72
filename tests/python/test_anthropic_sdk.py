"""The official `anthropic` Python SDK against Tollgate's `POST /v1/messages`.

Usage: python test_anthropic_sdk.py http://127.0.0.1:PORT

Run by tests/anthropic.rs, which starts the gateway with `mock-gpt` (the built-in mock: an
OpenAI-shaped upstream) and `claude` (the test kit's fake Anthropic), the demo key. Plain
script: one line per check, exits 1 if any check fails.
"""


import anthropic

import checks  # tests/python/checks.py: the shared runner

DEMO_KEY = "sk-tollgate-demo"
TOOLS = [
    {
        "name": "get_weather",
        "description": "The weather in a city",
        "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}},
    }
]


def client(base_url, key=DEMO_KEY):
    return anthropic.Anthropic(base_url=base_url, api_key=key, max_retries=0, timeout=20.0)


def user(text):
    return [{"role": "user", "content": text}]


def check_create_on_an_openai_upstream(base_url):
    m = client(base_url).messages.create(
        model="mock-gpt", max_tokens=50, system="Be brief.", messages=user("hello from anthropic")
    )
    assert m.type == "message" and m.role == "assistant", m
    assert m.content[0].type == "text", m
    assert m.content[0].text == "mock reply: hello from anthropic", m
    assert m.stop_reason == "end_turn", m
    assert m.usage.input_tokens > 0 and m.usage.output_tokens > 0, m.usage


def check_stream_on_an_openai_upstream(base_url):
    with client(base_url).messages.stream(
        model="mock-gpt", max_tokens=50, messages=user("stream it")
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "mock reply: stream it", text
    assert final.content[0].text == text, final
    assert final.stop_reason == "end_turn", final
    assert final.usage.output_tokens > 0, final.usage


def check_round_trip_through_anthropic(base_url):
    m = client(base_url).messages.create(
        model="claude", max_tokens=50, messages=user("hello claude")
    )
    assert m.content[0].text == "echo: hello claude", m


def check_tools(base_url):
    c = client(base_url)
    m = c.messages.create(
        model="claude", max_tokens=50, tools=TOOLS, messages=user("weather in Oslo")
    )
    assert m.stop_reason == "tool_use", m
    call = m.content[0]
    assert call.type == "tool_use" and call.name == "get_weather", m
    assert call.input == {"query": "weather in Oslo"}, call
    follow = c.messages.create(
        model="claude",
        max_tokens=50,
        tools=TOOLS,
        messages=user("weather in Oslo")
        + [
            {"role": "assistant", "content": [call.model_dump()]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "snow"}],
            },
        ],
    )
    assert follow.content[0].text == "echo: result: snow", follow


def check_tools_stream(base_url):
    with client(base_url).messages.stream(
        model="claude", max_tokens=50, tools=TOOLS, messages=user("weather in Lima")
    ) as stream:
        final = stream.get_final_message()
    call = [b for b in final.content if b.type == "tool_use"][0]
    assert call.name == "get_weather", final
    assert call.input == {"query": "weather in Lima"}, call
    assert final.stop_reason == "tool_use", final


def check_errors(base_url):
    try:
        client(base_url, key="sk-not-a-key").messages.create(
            model="mock-gpt", max_tokens=5, messages=user("x")
        )
        raise AssertionError("no AuthenticationError")
    except anthropic.AuthenticationError as e:
        assert e.status_code == 401, e
        assert e.body["error"]["type"] == "authentication_error", e.body
    try:
        client(base_url).messages.create(
            # As a raw field: newer SDKs dropped the top_k argument, the API still has it.
            model="mock-gpt", max_tokens=5, messages=user("x"), extra_body={"top_k": 3}
        )
        raise AssertionError("no BadRequestError")
    except anthropic.BadRequestError as e:
        assert "top_k" in e.body["error"]["message"], e.body


CHECKS = [
    check_create_on_an_openai_upstream,
    check_stream_on_an_openai_upstream,
    check_round_trip_through_anthropic,
    check_tools,
    check_tools_stream,
    check_errors,
]


if __name__ == "__main__":
    checks.run(CHECKS)
