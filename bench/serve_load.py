"""Load test of an OpenAI-compatible server on loopback: N clients, each streaming R
completions one after another, all at once. Prints one JSON line: time to first token
(p50, p99), per-stream and aggregate generated tokens/s, and the server's peak RSS.

Usage: serve_load.py URL PID --clients N [--requests R] [--max-tokens T]
URL: the server's base (http://127.0.0.1:PORT); PID: its process, for VmHWM.
Works against `arq serve` and `llama-server` alike (/v1/completions, stream, usage).
"""
import argparse
import http.client
import json
import statistics
import threading
import time
import urllib.parse

PROMPTS = [
    "Once upon a time, in a small village by the sea,",
    "The history of the bicycle begins",
    "Here is a recipe for a simple tomato soup:",
    "The three most important rules of good writing are",
    "In the year 2050, cities will",
    "A short guide to keeping houseplants alive:",
    "The museum opened its doors at nine, and",
    "Dear diary, today I learned that",
]


def stream_one(host, port, prompt, max_tokens, seed):
    body = json.dumps({
        "model": "m", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8, "top_p": 0.95, "top_k": 40, "min_p": 0.05,
        "seed": seed, "stream": True, "stream_options": {"include_usage": True},
        # both: stop only at max_tokens (llama-server's extension, which arq accepts)
        "ignore_eos": True,
    })
    conn = http.client.HTTPConnection(host, port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    first = None
    tokens = chunks = 0
    buf = b""
    while True:
        chunk = resp.read1(65536)
        if not chunk:
            break
        buf += chunk
        while b"\n\n" in buf:
            ev, buf = buf.split(b"\n\n", 1)
            for line in ev.split(b"\n"):
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                d = json.loads(line[6:])
                choice = d["choices"][0] if d.get("choices") else None
                if choice and choice.get("finish_reason") is None:
                    chunks += 1  # one chunk per token, on both servers
                if choice and choice.get("text") and first is None:
                    first = time.perf_counter() - t0
                if d.get("usage"):
                    tokens = d["usage"]["completion_tokens"]
    conn.close()
    return first, tokens or chunks, time.perf_counter() - t0


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("pid", type=int)
    ap.add_argument("--clients", type=int, required=True)
    ap.add_argument("--requests", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64)
    a = ap.parse_args()
    u = urllib.parse.urlparse(a.url)
    results, lock = [], threading.Lock()

    def client(c):
        for r in range(a.requests):
            out = stream_one(u.hostname, u.port, PROMPTS[(c + r) % len(PROMPTS)], a.max_tokens, 1000 * c + r)
            with lock:
                results.append(out)

    # One warm-up request, not counted.
    stream_one(u.hostname, u.port, PROMPTS[0], 4, 0)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(a.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttft = sorted(r[0] for r in results)
    tokens = sum(r[1] for r in results)
    per_stream = statistics.median(r[1] / r[2] for r in results)
    p99 = ttft[min(len(ttft) - 1, int(round(0.99 * (len(ttft) - 1))))]
    print(json.dumps({
        "clients": a.clients, "requests": len(results), "tokens": tokens, "wall_s": round(wall, 3),
        "ttft_p50_ms": round(1e3 * statistics.median(ttft), 1), "ttft_p99_ms": round(1e3 * p99, 1),
        "aggregate_tok_s": round(tokens / wall, 2), "per_stream_tok_s": round(per_stream, 2),
        "peak_rss_mib": peak_rss_mib(a.pid),
    }))


if __name__ == "__main__":
    main()
