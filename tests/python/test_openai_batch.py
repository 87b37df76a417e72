"""The Batch API with the official `openai` Python SDK against a running Tollgate.

Usage: python test_openai_batch.py http://127.0.0.1:8080/v1

Plain script (no pytest). Needs the gateway serving examples/quickstart.yaml (the mock model
`mock-gpt` behind the demo key, a SQLite store): files.create, batches.create / retrieve / list /
cancel, files.content and files.delete, a validation error, and another key's view. Prints one
line per check and a summary; exits 1 if any check fails. Every wait is a bounded poll.
"""

import json
import time

import openai
from openai import OpenAI

import checks  # tests/python/checks.py: the shared runner

DEMO_KEY = "sk-tollgate-demo"
MODEL = "mock-gpt"


def make_client(base_url):
    return OpenAI(base_url=base_url, api_key=DEMO_KEY, max_retries=0, timeout=20.0)


def jsonl(n, prefix="req"):
    rows = []
    for i in range(n):
        rows.append(json.dumps({
            "custom_id": f"{prefix}-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": f"line {i}"}]},
        }))
    return ("\n".join(rows) + "\n").encode()


def wait(client, batch_id, done, limit=60.0):
    deadline = time.monotonic() + limit
    while True:
        b = client.batches.retrieve(batch_id)
        if done(b):
            return b
        assert time.monotonic() < deadline, f"batch {batch_id} stuck: {b}"
        time.sleep(0.1)


def ended(b):
    return b.status in ("completed", "failed", "cancelled", "expired")


def check_lifecycle(base_url):
    c = make_client(base_url)
    n = 40
    data = jsonl(n)
    f = c.files.create(file=("requests.jsonl", data), purpose="batch")
    assert f.purpose == "batch", f
    assert f.bytes == len(data), f
    assert c.files.retrieve(f.id).filename == "requests.jsonl"
    assert any(x.id == f.id for x in c.files.list()), "the file is not listed"
    b = c.batches.create(
        input_file_id=f.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "sdk"},
    )
    assert b.status == "validating", b
    assert b.metadata == {"job": "sdk"}, b
    b = wait(c, b.id, ended)
    assert b.status == "completed", b
    counts = b.request_counts
    assert (counts.total, counts.completed, counts.failed) == (n, n, 0), counts
    assert b.error_file_id is None, b
    out = c.files.content(b.output_file_id).text
    rows = [json.loads(line) for line in out.splitlines()]
    by_id = {r["custom_id"]: r for r in rows}
    assert len(rows) == n == len(by_id), f"{len(rows)} lines, {len(by_id)} custom ids"
    for i in range(n):
        r = by_id[f"req-{i}"]
        assert r["response"]["status_code"] == 200, r
        text = r["response"]["body"]["choices"][0]["message"]["content"]
        assert text == f"mock reply: line {i}", text
        assert r["error"] is None, r
    assert b.id in [x.id for x in c.batches.list(limit=10)], "the batch is not listed"
    deleted = c.files.delete(f.id)
    assert deleted.deleted, deleted


def check_validation_error(base_url):
    c = make_client(base_url)
    data = jsonl(2) + jsonl(1)  # req-0 twice: line 3 repeats line 1's custom_id
    f = c.files.create(file=("dup.jsonl", data), purpose="batch")
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    b = wait(c, b.id, ended)
    assert b.status == "failed", b
    err = b.errors.data[0]
    assert (err.code, err.line) == ("duplicate_custom_id", 3), err


def check_refusals(base_url):
    c = make_client(base_url)
    try:
        c.batches.retrieve("batch_nope")
        raise AssertionError("an unknown batch was found")
    except openai.NotFoundError:
        pass
    try:
        c.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")
        raise AssertionError("a batch over an unknown file was made")
    except openai.NotFoundError:
        pass
    f = c.files.create(file=("x.jsonl", jsonl(1)), purpose="batch")
    try:
        c.batches.create(input_file_id=f.id, endpoint="/v1/images/generations", completion_window="24h")
        raise AssertionError("an unsupported endpoint was accepted")
    except openai.BadRequestError:
        pass
    other = OpenAI(base_url=base_url, api_key="sk-wrong", max_retries=0, timeout=20.0)
    try:
        other.files.list()
        raise AssertionError("a wrong key listed files")
    except openai.AuthenticationError:
        pass


def check_cancel(base_url):
    c = make_client(base_url)
    n = 3000
    f = c.files.create(file=("many.jsonl", jsonl(n)), purpose="batch")
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    b = c.batches.cancel(b.id)
    assert b.status in ("cancelling", "cancelled"), b
    b = wait(c, b.id, ended)
    assert b.status == "cancelled", b
    assert b.cancelled_at is not None, b
    done = b.request_counts.completed
    assert done < n, b
    if b.output_file_id:
        rows = c.files.content(b.output_file_id).text.splitlines()
        assert len(rows) == done, (len(rows), done)


CHECKS = [check_lifecycle, check_validation_error, check_refusals, check_cancel]


if __name__ == "__main__":
    checks.run(CHECKS, f" (openai {openai.__version__})")
