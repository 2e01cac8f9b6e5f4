"""`setblock serve` against real clients: the official `openai` package, curl, and plain HTTP.

Starts the CLI's server on a free loopback port with the bundled demo model and checks the
OpenAI wire format, streaming, errors that name their field, the API key, a client disconnect
cancelling its generation, and a bounded concurrent load whose greedy answers equal the CLI's.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("SETBLOCK_BIN", ROOT / "target" / "debug" / "setblock"))
MODEL = ROOT / "models" / "demo"
KEY = "test-key-123"
PROMPTS = ["sort 42 17 88 17 30 61", "sort 15 73 29 64 11 50", "sort 90 35 12 47 68 23", "sort 8 8 1 4 6"]
SBD = {"setblock": {"mode": "sbd"}}


class Server:
    def __init__(self, *extra: str) -> None:
        cmd = [str(BIN), "serve", "--model", str(MODEL), "--port", "0", "--threads", "1", *extra]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "SETBLOCK_API_KEY": ""})
        self.log: list[str] = []
        ready = threading.Event()
        self.url = ""

        def read() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.log.append(line)
                m = re.search(r"listening on (http://\S+)", line)
                if m:
                    self.url = m.group(1)
                if "ready" in line:
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(60):
            self.stop()
            raise RuntimeError("server did not start: " + "".join(self.log))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    s = Server("--api-key", KEY, "--parallel", "2", "--queue", "3", "--max-tokens", "480")
    yield s
    s.stop()
    assert s.proc.returncode == 0, "".join(s.log)  # SIGTERM is a graceful shutdown


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)


def http(server: Server, method: str, path: str, body: bytes | None = None, key: str | None = KEY) -> tuple[int, dict]:
    req = urllib.request.Request(server.url + path, data=body, method=method)
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def metric(server: Server, name: str) -> float:
    req = urllib.request.Request(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"})
    text = urllib.request.urlopen(req, timeout=10).read().decode()
    return float(re.search(rf"^setblock_{name} (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]


def cli(prompt: str) -> str:
    out = subprocess.run(
        [str(BIN), "generate", "--model", str(MODEL), "--prompt", prompt, "--mode", "sbd", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)["text"]


def test_health_and_models(server: Server, client: openai.OpenAI) -> None:
    assert http(server, "GET", "/health", key=None) == (200, {"status": "ok", "model": "demo"})
    assert [m.id for m in client.models.list().data] == ["demo"]


def test_chat_completion_equals_the_cli_and_counts_forwards(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": PROMPTS[0]}], extra_body=SBD)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == cli(PROMPTS[0])
    assert r.choices[0].finish_reason == "stop"
    u = r.usage
    assert u is not None and u.completion_tokens > 0 and u.prompt_tokens > 0
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    extra = u.model_extra or {}
    assert 0 < extra["forward_passes"] < u.completion_tokens  # SBD: fewer forwards than tokens


def test_verified_sbd_answers_as_ntp_does(client: openai.OpenAI) -> None:
    def ask(ext: dict) -> str:
        msgs = [{"role": "user", "content": PROMPTS[3]}]
        r = client.chat.completions.create(model="demo", messages=msgs, temperature=0, extra_body={"setblock": ext})
        return r.choices[0].message.content or ""

    # a whole block a forward: plain SBD's answer to this prompt is not NTP's, verified SBD's is
    ntp = ask({"mode": "ntp"})
    assert ask({"mode": "sbd", "gamma": 1e9}) != ntp
    assert ask({"mode": "sbd", "gamma": 1e9, "verify": True}) == ntp


def test_streamed_chat_arrives_in_chunks_and_equals_the_whole(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": PROMPTS[1]}], extra_body=SBD
    )
    stream = client.chat.completions.create(
        model="demo",
        messages=[{"role": "user", "content": PROMPTS[1]}],
        stream=True,
        stream_options={"include_usage": True},
        extra_body=SBD,
    )
    chunks = list(stream)
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) >= 2, chunks  # the text came in pieces, one per committed block
    assert "".join(texts) == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


ANSWER_SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "integer", "minimum": 0, "maximum": 999},
        "unit": {"enum": ["eggs", "boxes"]},
    },
    "required": ["answer", "unit"],
    "additionalProperties": False,
}


def test_response_format_json_schema_gives_valid_json_in_fewer_forwards(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="demo",
        messages=[{"role": "user", "content": PROMPTS[0]}],
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA}},
        extra_body=SBD,
    )
    v = json.loads(r.choices[0].message.content or "")
    assert set(v) == {"answer", "unit"} and 0 <= v["answer"] <= 999 and v["unit"] in ("eggs", "boxes"), v
    assert r.choices[0].finish_reason == "stop"
    u = r.usage
    assert u is not None and 0 < (u.model_extra or {})["forward_passes"] < u.completion_tokens


def test_sampled_verified_sbd_under_a_schema_gives_valid_json(client: openai.OpenAI) -> None:
    for seed in range(3):
        r = client.chat.completions.create(
            model="demo",
            messages=[{"role": "user", "content": PROMPTS[0]}],
            response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA}},
            temperature=0.8,
            seed=seed,
            extra_body={"setblock": {"mode": "sbd", "verify": True}},
        )
        v = json.loads(r.choices[0].message.content or "")
        assert set(v) == {"answer", "unit"} and 0 <= v["answer"] <= 999 and v["unit"] in ("eggs", "boxes"), v


def test_completion_is_the_raw_prompt(client: openai.OpenAI) -> None:
    r = client.completions.create(model="demo", prompt=PROMPTS[2], max_tokens=40, extra_body=SBD)
    assert r.object == "text_completion" and r.choices[0].text
    assert r.usage is not None and r.usage.completion_tokens <= 40


def test_a_wrong_api_key_is_refused(server: Server) -> None:
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    code, body = http(server, "POST", "/v1/chat/completions", b"{}", key=None)
    assert code == 401 and body["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"model": "gpt-4o"}, "model"),
        ({"max_tokens": 100000}, "max_tokens"),
        ({"n": 3}, "n"),
        ({"setblock": {"mode": "fast"}}, "setblock.mode"),
        ({"setblock": {"block_size": 99}}, "setblock.block_size"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"messages": []}, "messages"),
        ({"temperature": "hot"}, "temperature"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "n", "schema": {"type": "integer", "minimum": 5, "maximum": 1}},
                }
            },
            "response_format",
        ),
    ],
)
def test_a_bad_field_is_a_400_that_names_it(server: Server, body: dict, param: str) -> None:
    req = {"model": "demo", "messages": [{"role": "user", "content": "sort 2 1"}], **body}
    code, out = http(server, "POST", "/v1/chat/completions", json.dumps(req).encode())
    assert code == 400, out
    assert out["error"]["param"] == param and out["error"]["type"] == "invalid_request_error", out
    assert [x for x in re.split(r"[.\[\]]", param) if x][-1] in out["error"]["message"], out


def test_bad_json_and_a_huge_body_are_4xx(server: Server, client: openai.OpenAI) -> None:
    code, out = http(server, "POST", "/v1/chat/completions", b"{not json")
    assert code == 400 and "invalid request body" in out["error"]["message"]
    code, out = http(server, "POST", "/v1/chat/completions", b'{"x": "' + b"a" * (2 << 20) + b'"}')
    assert code == 413 and "--max-body-bytes" in out["error"]["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "sort " * 400}])
    assert "context" in str(e.value)


def test_curl_sees_sse_framing(server: Server) -> None:
    body = {"messages": [{"role": "user", "content": PROMPTS[3]}], "stream": True, **SBD}
    out = subprocess.run(
        [
            "curl",
            "-sN",
            "-H",
            f"Authorization: Bearer {KEY}",
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps(body),
            server.url + "/v1/chat/completions",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    events = [e for e in out.split("\n\n") if e.strip()]
    assert all(e.startswith("data: ") for e in events), out
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["object"] == "chat.completion.chunk"


def test_a_client_disconnect_cancels_the_generation(server: Server, client: openai.OpenAI) -> None:
    before = metric(server, "requests_cancelled_total")
    tokens_before = metric(server, "completion_tokens_total")
    # sampled hot, NTP (one token a forward), up to 480 tokens: long enough to be cut off
    stream = client.chat.completions.create(
        model="demo",
        messages=[{"role": "user", "content": "sort 9 8 7"}],
        stream=True,
        temperature=5.0,
        seed=1,
        max_tokens=480,
        extra_body={"setblock": {"mode": "ntp"}},
    )
    next(iter(stream))
    stream.close()  # hang up after the first chunk
    deadline = time.time() + 20
    while metric(server, "requests_cancelled_total") == before and time.time() < deadline:
        time.sleep(0.05)
    assert metric(server, "requests_cancelled_total") == before + 1
    assert metric(server, "completion_tokens_total") - tokens_before < 480
    r = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": PROMPTS[0]}], extra_body=SBD)
    assert r.choices[0].message.content == cli(PROMPTS[0])  # the next request works


def test_concurrent_load_is_answered_or_refused_never_lost(server: Server) -> None:
    expected = {p: cli(p) for p in PROMPTS}

    def one(i: int) -> tuple[int, str, str]:
        p = PROMPTS[i % len(PROMPTS)]
        stream = i % 2 == 0
        body = {"messages": [{"role": "user", "content": p}], "stream": stream, **SBD}
        if not stream:
            code, out = http(server, "POST", "/v1/chat/completions", json.dumps(body).encode())
            text = out["choices"][0]["message"]["content"] if code == 200 else ""
            return code, p, text
        c = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
        try:
            chunks = c.chat.completions.create(model="demo", messages=body["messages"], stream=True, extra_body=SBD)
            return 200, p, "".join(x.choices[0].delta.content or "" for x in chunks if x.choices)
        except openai.RateLimitError:
            return 429, p, ""

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(64)))
    codes = [c for c, _, _ in results]
    assert set(codes) <= {200, 429}, codes
    assert codes.count(200) >= 8
    for code, p, text in results:
        if code == 200:
            assert text == expected[p], (p, text)
    assert metric(server, "requests_rejected_total") == codes.count(429)
