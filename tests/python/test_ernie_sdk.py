"""The official `openai` Python SDK against Tollgate in front of the fake ERNIE server.

Usage: python test_ernie_sdk.py http://127.0.0.1:PORT/v1

Run by tests/ernie.rs, which starts the gateway (model `ernie-speed` -> provider ernie) and the
fake. One non-stream and one stream call; exits 1 if a check fails.
"""

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
    print("ok: ernie non-stream and stream through the openai SDK")


if __name__ == "__main__":
    main(sys.argv[1])
