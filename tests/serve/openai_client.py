"""`arq serve` spoken to by the official `openai` Python client (and curl), as a user's
app would: model list, completions and chat completions, streamed and not, logprobs,
stop strings, seeds, usage, and the client's own exceptions for bad requests.

Usage: openai_client.py BASE_URL   (e.g. http://127.0.0.1:8080/v1, a chat model)
Prints one PASS/FAIL line per check and a cargo-style `test result:` line.
"""
import json
import subprocess
import sys

import openai
from openai import OpenAI

base = sys.argv[1]
client = OpenAI(base_url=base, api_key="unused", max_retries=0)
passed = failed = 0


def check(name, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
        print(f"openai: PASS {name}")
    else:
        failed += 1
        print(f"openai: FAIL {name} {detail}")


models = client.models.list()
model = models.data[0].id
check("models.list names the served model", len(models.data) == 1 and model, models)

c = client.completions.create(model=model, prompt="Once upon a time", max_tokens=24, temperature=0)
text = c.choices[0].text
check("completion has text and usage", len(text) > 0 and c.usage.completion_tokens == 24, c)
check("finish_reason is length", c.choices[0].finish_reason == "length", c.choices[0].finish_reason)

stream = client.completions.create(model=model, prompt="Once upon a time", max_tokens=24, temperature=0, stream=True)
streamed = "".join(ch.choices[0].text for ch in stream if ch.choices)
check("streamed completion equals the whole one (greedy)", streamed == text, (streamed, text))

a = client.completions.create(model=model, prompt="The weather", max_tokens=20, temperature=0.9, seed=11)
b = client.completions.create(model=model, prompt="The weather", max_tokens=20, temperature=0.9, seed=11)
check("the same seed samples the same text", a.choices[0].text == b.choices[0].text, (a.choices[0].text, b.choices[0].text))

chat = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "What is the capital of France?"}],
    max_tokens=16, temperature=0, logprobs=True, top_logprobs=3,
)
answer = chat.choices[0].message.content
check("chat answers through the model's template", "Paris" in answer, answer)
lp = chat.choices[0].logprobs.content
check("chat logprobs: one per token, 3 alternatives each",
      len(lp) == chat.usage.completion_tokens and all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in lp),
      len(lp))

pieces, finish, usage = [], None, None
for ch in client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "What is the capital of France?"}],
    max_tokens=16, temperature=0, stream=True, stream_options={"include_usage": True},
):
    if ch.choices:
        pieces.append(ch.choices[0].delta.content or "")
        finish = ch.choices[0].finish_reason or finish
    if ch.usage:
        usage = ch.usage
check("streamed chat equals the whole answer", "".join(pieces) == answer, ("".join(pieces), answer))
check("streamed chat ends with a reason and usage", finish in ("stop", "length") and usage and usage.total_tokens > 0, (finish, usage))
check("a repeated conversation reuses the cached prompt",
      usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens > 0, usage)

s = client.completions.create(model=model, prompt="1, 2, 3, 4,", max_tokens=30, temperature=0, stop=[" 7"])
check("a stop string ends the text before it", s.choices[0].finish_reason == "stop" and " 7" not in s.choices[0].text, s.choices[0])

try:
    client.completions.create(model=model, prompt="x", max_tokens=5, n=2)
    check("n=2 is refused", False)
except openai.BadRequestError as e:
    check("n=2 is refused with BadRequestError", "n = 1" in str(e), e)
try:
    client.chat.completions.create(model=model, messages=[{"role": "wizard", "content": "x"}])
    check("an unknown role is refused", False)
except openai.BadRequestError as e:
    check("an unknown role is refused with BadRequestError", "wizard" in str(e), e)

# curl, as the README shows it: no content type, a streamed chat.
out = subprocess.run(
    ["curl", "-sS", "-N", f"{base}/chat/completions", "-d",
     json.dumps({"messages": [{"role": "user", "content": "Hi"}], "stream": True, "max_tokens": 8, "temperature": 0})],
    capture_output=True, text=True, timeout=120,
)
lines = [l for l in out.stdout.splitlines() if l.startswith("data: ")]
check("curl -d streams chat chunks ending with [DONE]", len(lines) > 2 and lines[-1] == "data: [DONE]", out.stdout[-300:])

status = "ok" if failed == 0 else "FAILED"
print(f"test result: {status}. {passed} passed; {failed} failed; 0 ignored; 0 measured; 0 filtered out")
sys.exit(1 if failed else 0)
