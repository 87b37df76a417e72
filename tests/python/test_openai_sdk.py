"""Compatibility check: the official `openai` Python SDK against a running Tollgate.

Usage: python test_openai_sdk.py http://127.0.0.1:8080/v1

Plain script (no pytest). Needs the gateway serving examples/quickstart.yaml: the mock model
`mock-gpt` behind the demo key `sk-tollgate-demo`. Prints one line per check and a summary;
exits 1 if any check fails.
"""

import sys
import traceback

import openai
from openai import OpenAI

DEMO_KEY = "sk-tollgate-demo"
MODEL = "mock-gpt"
PROMPT = "hello from python"
EXPECTED = "mock reply: hello from python"


def make_client(base_url, api_key=DEMO_KEY):
    # No retries: a retried failure would only hide what the gateway answered.
    return OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=20.0)


def messages():
    return [{"role": "user", "content": PROMPT}]


def check_chat(base_url):
    resp = make_client(base_url).chat.completions.create(model=MODEL, messages=messages())
    content = resp.choices[0].message.content
    assert content == EXPECTED, f"content {content!r}, want {EXPECTED!r}"
    assert resp.usage is not None, "no usage in the answer"
    assert resp.usage.total_tokens > 0, f"usage.total_tokens = {resp.usage.total_tokens}"


def check_stream(base_url):
    stream = make_client(base_url).chat.completions.create(
        model=MODEL, messages=messages(), stream=True
    )
    parts = []
    chunks = 0
    for chunk in stream:
        chunks += 1
        # The gateway asks the upstream for usage; a client that did not ask must not see it.
        assert getattr(chunk, "usage", None) is None, f"unrequested usage chunk: {chunk}"
        for choice in chunk.choices:
            if choice.delta is not None and choice.delta.content:
                parts.append(choice.delta.content)
    content = "".join(parts)
    assert chunks > 1, f"only {chunks} chunk(s): not streamed"
    assert content == EXPECTED, f"streamed content {content!r}, want {EXPECTED!r}"


def check_stream_usage(base_url):
    stream = make_client(base_url).chat.completions.create(
        model=MODEL,
        messages=messages(),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks, "empty stream"
    content = "".join(
        c.delta.content for ch in chunks for c in ch.choices if c.delta and c.delta.content
    )
    assert content == EXPECTED, f"streamed content {content!r}, want {EXPECTED!r}"
    last = chunks[-1]
    assert last.usage is not None, f"last chunk has no usage: {last}"
    assert last.usage.total_tokens > 0, f"usage.total_tokens = {last.usage.total_tokens}"
    assert last.choices == [], f"usage chunk has choices: {last.choices}"


def check_wrong_key(base_url):
    try:
        make_client(base_url, api_key="sk-wrong-key").chat.completions.create(
            model=MODEL, messages=messages()
        )
    except openai.AuthenticationError as e:
        assert e.status_code == 401, f"status {e.status_code}"
        return
    raise AssertionError("a wrong key was accepted")


def check_unknown_model(base_url):
    try:
        make_client(base_url).chat.completions.create(
            model="no-such-model", messages=messages()
        )
    except openai.NotFoundError as e:
        assert e.status_code == 404, f"status {e.status_code}"
        return
    raise AssertionError("an unknown model was accepted")


def check_models(base_url):
    ids = [m.id for m in make_client(base_url).models.list()]
    assert MODEL in ids, f"{MODEL} not in {ids}"


def check_models_retrieve(base_url):
    client = make_client(base_url)
    m = client.models.retrieve(MODEL)
    assert m.id == MODEL, f"retrieved {m.id}"
    try:
        client.models.retrieve("no-such-model")
    except openai.NotFoundError:
        return
    raise AssertionError("an unknown model was retrieved")


def check_embeddings_base64(base_url):
    import base64
    import struct
    client = make_client(base_url)
    floats = client.embeddings.create(model=MODEL, input=["a", "b"], encoding_format="float")
    raw = client.embeddings.create(model=MODEL, input=["a", "b"], encoding_format="base64")
    for f, b in zip(floats.data, raw.data):
        assert isinstance(b.embedding, str), f"not base64: {b.embedding!r}"
        data = base64.b64decode(b.embedding)
        decoded = struct.unpack(f"<{len(data) // 4}f", data)
        assert len(decoded) == len(f.embedding), f"{len(decoded)} != {len(f.embedding)}"
        assert all(abs(x - y) < 1e-6 for x, y in zip(decoded, f.embedding)), "vectors differ"


def check_embeddings(base_url):
    resp = make_client(base_url).embeddings.create(model=MODEL, input=["a", "b"])
    assert len(resp.data) == 2, f"{len(resp.data)} vectors, want 2"
    for i, item in enumerate(resp.data):
        assert item.index == i, f"vector {i} has index {item.index}"
        assert len(item.embedding) > 0, f"vector {i} is empty"
        assert all(isinstance(x, float) for x in item.embedding), f"vector {i} is not floats"


TOOL = {
    "type": "function",
    "name": "lookup",
    "description": "Look a word up.",
    "parameters": {"type": "object", "properties": {"input": {"type": "string"}}},
}


def check_responses(base_url):
    resp = make_client(base_url).responses.create(
        model=MODEL, instructions="be brief", input=PROMPT, max_output_tokens=50
    )
    assert resp.object == "response", resp
    assert resp.status == "completed", resp.status
    assert resp.output_text == EXPECTED, f"output_text {resp.output_text!r}, want {EXPECTED!r}"
    assert resp.usage.input_tokens > 0 and resp.usage.output_tokens > 0, resp.usage
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens
    assert resp.instructions == "be brief", resp.instructions


def check_responses_stream(base_url):
    stream = make_client(base_url).responses.create(model=MODEL, input=PROMPT, stream=True)
    kinds, deltas, final = [], [], None
    for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        if event.type == "response.completed":
            final = event.response
    assert kinds[0] == "response.created", kinds
    assert kinds[-1] == "response.completed", kinds
    assert len(deltas) > 1, f"one delta per chunk expected, got {deltas}"
    assert "".join(deltas) == EXPECTED, deltas
    assert final is not None and final.output_text == EXPECTED, final
    assert final.usage is not None and final.usage.output_tokens > 0, final.usage


def check_responses_tools(base_url):
    client = make_client(base_url)
    first = client.responses.create(model=MODEL, input=PROMPT, tools=[TOOL])
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1, first.output
    call = calls[0]
    assert call.name == "lookup", call
    assert call.arguments == '{"input":"hello from python"}', call.arguments
    # The tool's result goes back; the mock answers with it.
    second = client.responses.create(
        model=MODEL,
        tools=[TOOL],
        input=[
            {"role": "user", "content": PROMPT},
            {"type": "function_call", "call_id": call.call_id, "name": call.name,
             "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "forty two"},
        ],
    )
    assert second.output_text == "mock reply: forty two", second.output_text


def check_responses_tools_stream(base_url):
    stream = make_client(base_url).responses.create(
        model=MODEL, input=PROMPT, tools=[TOOL], stream=True
    )
    pieces, done = [], None
    for event in stream:
        if event.type == "response.function_call_arguments.delta":
            pieces.append(event.delta)
        if event.type == "response.function_call_arguments.done":
            done = event.arguments
    assert "".join(pieces) == done == '{"input":"hello from python"}', (pieces, done)


def check_responses_unsupported(base_url):
    try:
        make_client(base_url).responses.create(
            model=MODEL, input=PROMPT, previous_response_id="resp_123"
        )
    except openai.BadRequestError as e:
        assert e.body["param"] == "previous_response_id", e.body
        return
    raise AssertionError("previous_response_id was accepted")


CHECKS = [
    ("chat completion", check_chat),
    ("streamed chat completion", check_stream),
    ("stream with include_usage", check_stream_usage),
    ("wrong key -> AuthenticationError", check_wrong_key),
    ("unknown model -> NotFoundError", check_unknown_model),
    ("models.list", check_models),
    ("embeddings", check_embeddings),
    ("embeddings as base64 (the Node SDK's default)", check_embeddings_base64),
    ("models.retrieve", check_models_retrieve),
    ("responses.create", check_responses),
    ("responses.create stream", check_responses_stream),
    ("responses with a function tool, both turns", check_responses_tools),
    ("responses stream of a function call", check_responses_tools_stream),
    ("responses: an untranslatable field -> BadRequestError naming it", check_responses_unsupported),
]


def main():
    if len(sys.argv) != 2:
        print(f"usage: {sys.argv[0]} BASE_URL (e.g. http://127.0.0.1:8080/v1)", file=sys.stderr)
        return 2
    base_url = sys.argv[1]
    print(f"python openai sdk {openai.__version__} against {base_url}")
    passed = failed = 0
    for name, check in CHECKS:
        try:
            check(base_url)
        except AssertionError as e:
            failed += 1
            print(f"FAIL {name}: {e}")
        except Exception as e:  # noqa: BLE001 - any SDK error is a failed check
            failed += 1
            print(f"FAIL {name}: {type(e).__name__}: {e}")
            traceback.print_exc(file=sys.stdout)
        else:
            passed += 1
            print(f"ok   {name}")
    print(f"python openai sdk: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
