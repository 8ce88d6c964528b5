"""Drives a running gateway with the official OpenAI and Anthropic Python SDKs.

Usage: python sdk_checks.py BASE_URL KEY LIMITED_KEY
Prints one JSON line per check: {"check": name, "ok": bool, "detail": str}. The node end-to-end
suite starts the gateway (in workerd or the Spin host) and asserts on every line.
"""

import json
import sys
import traceback

import anthropic
import openai

BASE, KEY, LIMITED_KEY = sys.argv[1], sys.argv[2], sys.argv[3]
oa = openai.OpenAI(base_url=f"{BASE}/v1", api_key=KEY, max_retries=0)
an = anthropic.Anthropic(base_url=BASE, api_key=KEY, max_retries=0)
TOOL = {"type": "function", "function": {"name": "lookup", "description": "Look it up",
                                         "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}
A_TOOL = {"name": "lookup", "description": "Look it up", "input_schema": TOOL["function"]["parameters"]}
CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


def expect(cond, detail):
    if not cond:
        raise AssertionError(detail)


def raises(exc_type, fn):
    try:
        fn()
    except exc_type as e:
        return e
    raise AssertionError(f"expected {exc_type.__name__}")


@check
def openai_chat_each_provider():
    for model in ["sim-chat", "claude", "gemini", "azure", "bedrock", "mock"]:
        c = oa.chat.completions.create(model=model, messages=[{"role": "user", "content": f"py {model}"}])
        expect(c.choices[0].message.content.endswith(f"py {model}"), f"{model}: {c.choices[0].message.content!r}")
        expect(c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens, f"{model}: usage {c.usage}")


@check
def openai_stream_each_provider():
    for model in ["sim-chat", "claude", "gemini", "azure", "bedrock", "mock"]:
        s = oa.chat.completions.create(model=model, messages=[{"role": "user", "content": f"py stream {model}"}],
                                       stream=True, stream_options={"include_usage": True})
        text, usage = "", None
        for chunk in s:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            usage = chunk.usage or usage
        expect(text.endswith(f"py stream {model}"), f"{model}: {text!r}")
        expect(usage is not None and usage.completion_tokens > 0, f"{model}: usage {usage}")


@check
def openai_tools_through_anthropic():
    c = oa.chat.completions.create(model="claude", messages=[{"role": "user", "content": "find"}], tools=[TOOL])
    call = c.choices[0].message.tool_calls[0]
    expect(c.choices[0].finish_reason == "tool_calls" and call.function.name == "lookup", str(c))
    expect(json.loads(call.function.arguments) == {"query": "Simulated answer to: find"}, call.function.arguments)


@check
def openai_models():
    ids = [m.id for m in oa.models.list()]
    expect("sim-chat" in ids and "claude" in ids, str(ids))


@check
def openai_error_classes():
    e = raises(openai.AuthenticationError, lambda: openai.OpenAI(base_url=f"{BASE}/v1", api_key="sk-bad", max_retries=0)
               .chat.completions.create(model="mock", messages=[{"role": "user", "content": "x"}]))
    expect(e.status_code == 401 and e.code == "invalid_api_key" and e.request_id.startswith("req_"), repr(e))
    raises(openai.NotFoundError, lambda: oa.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}]))
    raises(openai.BadRequestError, lambda: oa.chat.completions.create(model="mock", messages=[]))
    e = raises(openai.InternalServerError, lambda: oa.chat.completions.create(model="sim-chat", messages=[{"role": "user", "content": "x sim:status=503"}]))
    expect(e.status_code == 502, repr(e))
    limited = openai.OpenAI(base_url=f"{BASE}/v1", api_key=LIMITED_KEY, max_retries=0)
    def over_limit():
        for _ in range(10):
            limited.chat.completions.create(model="mock", messages=[{"role": "user", "content": "x"}])
    e = raises(openai.RateLimitError, over_limit)
    expect(int(e.response.headers["retry-after"]) >= 1, repr(e.response.headers))


@check
def openai_embeddings_base64_and_float():
    expected = lambda t: [(len(t) + d) / 100 for d in range(4)]
    close = lambda a, b: len(a) == len(b) and all(abs(x - y) < 1e-6 for x, y in zip(a, b))
    e = oa.embeddings.create(model="sim-embed", input=["hello", "edge gateway"])  # base64 by default
    expect(close(e.data[0].embedding, expected("hello")) and close(e.data[1].embedding, expected("edge gateway")), str(e.data))
    f = oa.embeddings.create(model="sim-embed", input="hi", encoding_format="float")
    expect(close(f.data[0].embedding, expected("hi")), str(f.data))


@check
def openai_cut_stream_raises():
    def consume():
        for _ in oa.chat.completions.create(model="sim-chat", messages=[{"role": "user", "content": "a b c sim:cut=2"}], stream=True):
            pass
    raises(openai.APIError, consume)


@check
def anthropic_messages_each_provider():
    for model in ["claude", "sim-chat", "gemini", "azure", "bedrock", "mock"]:
        m = an.messages.create(model=model, max_tokens=100, system="Be brief.", messages=[{"role": "user", "content": f"py {model}"}])
        expect(m.type == "message" and m.content[0].text.endswith(f"py {model}"), f"{model}: {m}")
        expect(m.stop_reason == "end_turn" and m.usage.output_tokens > 0, f"{model}: {m}")


@check
def anthropic_stream_each_provider():
    for model in ["claude", "sim-chat", "gemini", "azure", "bedrock", "mock"]:
        with an.messages.stream(model=model, max_tokens=100, messages=[{"role": "user", "content": f"py stream {model}"}]) as s:
            text = "".join(s.text_stream)
            final = s.get_final_message()
        expect(text.endswith(f"py stream {model}"), f"{model}: {text!r}")
        expect(final.usage.output_tokens > 0 and final.stop_reason == "end_turn", f"{model}: {final}")


@check
def anthropic_tools_through_openai_provider():
    m = an.messages.create(model="sim-chat", max_tokens=100, tools=[A_TOOL], messages=[{"role": "user", "content": "find"}])
    use = next(b for b in m.content if b.type == "tool_use")
    expect(m.stop_reason == "tool_use" and use.name == "lookup" and use.input == {"query": "Simulated answer to: find"}, str(m))
    with an.messages.stream(model="sim-chat", max_tokens=100, tools=[A_TOOL], messages=[{"role": "user", "content": "find"}]) as s:
        final = s.get_final_message()
    use = next(b for b in final.content if b.type == "tool_use")
    expect(use.input == {"query": "Simulated answer to: find"}, str(final))


@check
def anthropic_error_classes():
    e = raises(anthropic.AuthenticationError, lambda: anthropic.Anthropic(base_url=BASE, api_key="sk-bad", max_retries=0)
               .messages.create(model="mock", max_tokens=10, messages=[{"role": "user", "content": "x"}]))
    expect(e.status_code == 401 and (e.request_id or "").startswith("req_"), repr(e))
    raises(anthropic.NotFoundError, lambda: an.messages.create(model="nope", max_tokens=10, messages=[{"role": "user", "content": "x"}]))
    raises(anthropic.BadRequestError, lambda: an.messages.create(model="mock", max_tokens=10, messages=[]))
    e = raises(anthropic.InternalServerError, lambda: an.messages.create(model="claude", max_tokens=10, messages=[{"role": "user", "content": "x sim:status=500"}]))
    expect(e.status_code == 502, repr(e))
    limited = anthropic.Anthropic(base_url=BASE, api_key=LIMITED_KEY, max_retries=0)
    def over_limit():
        for _ in range(10):
            limited.messages.create(model="mock", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    e = raises(anthropic.RateLimitError, over_limit)
    expect(e.status_code == 429 and int(e.response.headers["retry-after"]) >= 1, repr(e))


@check
def anthropic_count_tokens():
    n = an.messages.count_tokens(model="claude", messages=[{"role": "user", "content": "count these four words"}])
    expect(n.input_tokens == 7, str(n))
    n = an.messages.count_tokens(model="mock", messages=[{"role": "user", "content": "count these four words"}])
    expect(n.input_tokens > 0, str(n))


@check
def anthropic_cut_stream_raises():
    def consume():
        with an.messages.stream(model="claude", max_tokens=10, messages=[{"role": "user", "content": "a b c sim:cut=2"}]) as s:
            for _ in s.text_stream:
                pass
    raises(anthropic.APIError, consume)


for fn in CHECKS:
    try:
        fn()
        print(json.dumps({"check": fn.__name__, "ok": True, "detail": ""}), flush=True)
    except Exception as e:  # every failure is reported, not just the first
        detail = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"
        print(json.dumps({"check": fn.__name__, "ok": False, "detail": detail}), flush=True)
