"""Next-keystroke latency of `arq serve`'s /v1/next with prefix reuse: a text of about
200 tokens is sent once (cold), then grown one character at a time, as a keyboard
would; each call feeds only what the slot's cache lacks. Prints one JSON line: the cold
call, and medians of the model time the server reports (`ms`) and of the client's wall
time per keystroke, with the tokens reused.

Usage: serve_keystroke.py URL
"""
import http.client
import json
import statistics
import sys
import time
import urllib.parse

TEXT = (
    "The old lighthouse stood at the edge of the cliff, its white paint peeling after decades of "
    "salt wind. Every evening the keeper climbed the spiral stairs, one hundred and twelve of them, "
    "to light the lamp that warned ships away from the rocks below. He had done this for thirty years, "
    "through storms that shook the glass and calm nights when the sea lay flat as a mirror. The village "
    "children thought he was a ghost, because they only ever saw his lantern moving in the tower "
    "window. But the fishermen knew better: they owed their lives to him, and each spring they left "
    "baskets of bread and smoked fish at the door of his small stone cottage. One morning a letter "
    "arrived, sealed with red wax, and the keeper read it twice before he sat down. It came from a "
    "lawyer in the capital, who wrote that the lighthouse would be replaced by an automatic beacon before "
    "the end of the year, and that the keeper was free to retire with a small pension and the thanks of "
    "the government. He folded the letter, put on his coat, and walked down to the harbour, where"
)
TYPED = " on the old wooden bench by the window and"


def call(conn, text):
    t0 = time.perf_counter()
    conn.request("POST", "/v1/next", json.dumps({"text": text, "top": 5}), {"Content-Type": "application/json"})
    r = json.loads(conn.getresponse().read())
    return r, 1e3 * (time.perf_counter() - t0)


def main():
    u = urllib.parse.urlparse(sys.argv[1])
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    cold, cold_wall = call(conn, TEXT)
    model_ms, wall_ms, fed = [], [], []
    for i in range(1, len(TYPED) + 1):
        r, wall = call(conn, TEXT + TYPED[:i])
        model_ms.append(r["ms"])
        wall_ms.append(wall)
        fed.append(r["prompt_tokens"] - r["cached_tokens"])
    print(json.dumps({
        "prompt_tokens": cold["prompt_tokens"], "cold_ms": round(cold["ms"], 2), "cold_wall_ms": round(cold_wall, 2),
        "keystrokes": len(TYPED), "keystroke_model_ms_p50": round(statistics.median(model_ms), 2),
        "keystroke_wall_ms_p50": round(statistics.median(wall_ms), 2),
        "keystroke_wall_ms_max": round(max(wall_ms), 2), "tokens_fed_p50": statistics.median(fed),
        "tokens_fed_max": max(fed),
    }))


if __name__ == "__main__":
    main()
