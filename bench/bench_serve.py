"""Throughput of `janus serve` with concurrent requests against the same
requests one after another: chat tokens per second and images per minute at
concurrency 1, 2, 4 and 8 (the standard library only; no client package).

    python3 bench/bench_serve.py JANUS_BIN MODEL_DIR [--quant q8_0] [--dtype bf16]
        [--chat-tokens 64] [--chat-temperature 0.7] [--image-requests 4 (0: none)] [--levels 1,2,4,8]

MODEL_DIR: e.g. the real-size 1B with random weights that `janus bench`
caches, plus a tokenizer and processor configs (see BENCHMARKS.md). Random
weights never end an answer early, so every chat decodes --chat-tokens.
"""

import argparse
import json
import subprocess
import sys
import threading
import time
import urllib.request


def post(url, body):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=3600) as r:
        return json.loads(r.read())


def run_all(url, bodies):
    """Sends every body at once; returns the seconds until the last answer."""
    out = [None] * len(bodies)

    def one(i):
        out[i] = post(url, bodies[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(bodies))]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("janus")
    p.add_argument("model")
    p.add_argument("--quant", default="q8_0")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--chat-tokens", type=int, default=64)
    p.add_argument("--chat-temperature", type=float, default=0.7)
    p.add_argument("--image-requests", type=int, default=4)
    p.add_argument("--levels", default="1,2,4,8")
    a = p.parse_args()
    server = subprocess.Popen(
        [a.janus, "serve", "--model", a.model, "--quant", a.quant, "--dtype", a.dtype, "--port", "0",
         "--max-batch", "8"],
        stdout=subprocess.PIPE, text=True)
    base = server.stdout.readline().strip().rsplit(" ", 1)[-1]
    while True:
        try:
            urllib.request.urlopen(base + "/health")
            break
        except Exception:
            time.sleep(0.5)
    try:
        chat = base + "/v1/chat/completions"
        body = lambda i: {"messages": [{"role": "user", "content": f"Tell me a story number {i}."}],  # noqa: E731
                          "max_tokens": a.chat_tokens, "temperature": a.chat_temperature, "seed": i}
        post(chat, body(0))  # warm-up
        one, _ = run_all(chat, [body(0)])
        print(f"chat, one request: {one:.1f} s, {a.chat_tokens / one:.2f} tokens/s", flush=True)
        for n in [int(x) for x in a.levels.split(",")]:
            t, outs = run_all(chat, [body(i) for i in range(n)])
            tokens = sum(o["usage"]["completion_tokens"] for o in outs)
            print(f"chat, {n} at once: {t:.1f} s, {tokens / t:.2f} tokens/s "
                  f"({tokens / t / (a.chat_tokens / one):.2f}x one)", flush=True)
        if a.image_requests == 0:
            return
        images = base + "/v1/images/generations"
        one, _ = run_all(images, [{"prompt": "a red apple", "seed": 0}])
        print(f"image, one request: {one:.1f} s", flush=True)
        n = a.image_requests
        t, _ = run_all(images, [{"prompt": f"a red apple {i}", "seed": i} for i in range(n)])
        print(f"image, {n} at once: {t:.1f} s ({t / one:.2f}x one; {n * 60 / t:.2f} images/min "
              f"against {60 / one:.2f})", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main())
