"""Checks the pack in a running ComfyUI (not part of CI; see ../README.md).

    python nodes/tests/check_real_comfyui.py [--url http://127.0.0.1:8188] [--model tiny]

With ComfyUI started as ``python main.py --cpu``, the pack in
``custom_nodes/`` and a model folder under ``models/Janus-Pro/<model>``
(and an ``example.png`` in ComfyUI's ``input/``): reads ``/object_info``,
checks every JanusRS node is listed, queues each example API workflow with
its loader set to ``--model``, waits for each in ``/history`` and prints what
came out. Then the Cancel check: a long understanding run (the example
image repeated 4096 times) is queued and ``/interrupt`` posted two seconds
into it; it must end as interrupted within seconds. Exits non-zero if
anything is missing, a workflow fails or Cancel does not stop the run.
Standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
import uuid
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NODES = [
    "JanusRSModelLoader",
    "JanusRSImageUnderstanding",
    "JanusRSImageGeneration",
    "JanusRSVQEncode",
    "JanusRSVQDecode",
]


def call(url: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        body = response.read()
    return json.loads(body) if body.strip() else {}


def wait(url: str, prompt_id: str, timeout: float) -> dict | None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        history = call(url, f"/history/{prompt_id}").get(prompt_id)
        if history and history.get("status", {}).get("completed") is not None:
            return history
        time.sleep(0.2)
    return None


def cancel_check(url: str, model: str) -> bool:
    """Cancel (``POST /interrupt``, as the UI's button) stops a running node."""
    prompt = {
        "1": {"class_type": "JanusRSModelLoader", "inputs": {"model": model, "device": "auto", "dtype": "auto"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "3": {"class_type": "RepeatImageBatch", "inputs": {"image": ["2", 0], "amount": 4096}},
        "4": {
            "class_type": "JanusRSImageUnderstanding",
            "inputs": {
                "model": ["1", 0],
                "image": ["3", 0],
                "question": "Describe this image.",
                "seed": 1,
                "temperature": 0.0,
                "top_p": 0.95,
                "max_new_tokens": 512,
            },
        },
        "5": {"class_type": "PreviewAny", "inputs": {"source": ["4", 0]}},
    }
    queued = call(url, "/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})
    prompt_id = queued["prompt_id"]
    time.sleep(2.0)
    started = time.time()
    call(url, "/interrupt", {})
    history = wait(url, prompt_id, 60)
    if history is None:
        print("cancel: the run did not stop within 60 s of /interrupt")
        return False
    messages = dict(history["status"].get("messages", []))
    stopped = time.time() - started
    node = messages.get("execution_interrupted", {}).get("node_type")
    print(
        f"cancel: status {history['status'].get('status_str')}, interrupted in {node}, "
        f"stopped {stopped:.2f} s after /interrupt"
    )
    return node == "JanusRSImageUnderstanding"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="http://127.0.0.1:8188")
    parser.add_argument("--model", default="tiny", help="a folder name under models/Janus-Pro")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    ok = True

    info = call(args.url, "/object_info")
    for name in NODES:
        node = info.get(name)
        if node is None:
            print(f"MISSING from /object_info: {name}")
            ok = False
            continue
        print(f"/object_info: {name} ({node['display_name']}, category {node['category']}) outputs {node['output']}")
    choices = info.get("JanusRSModelLoader", {}).get("input", {}).get("required", {}).get("model", [[]])[0]
    print(f"model choices: {choices}")
    if args.model not in choices:
        print(f"model {args.model!r} is not offered: put it under models/Janus-Pro/")
        return 1

    client_id = str(uuid.uuid4())
    for path in sorted(EXAMPLES.glob("*.api.json")):
        prompt = json.loads(path.read_text())
        for node in prompt.values():
            if node["class_type"] == "JanusRSModelLoader":
                node["inputs"]["model"] = args.model
        queued = call(args.url, "/prompt", {"prompt": prompt, "client_id": client_id})
        if queued.get("node_errors"):
            print(f"{path.name}: refused: {queued['node_errors']}")
            ok = False
            continue
        history = wait(args.url, queued["prompt_id"], args.timeout)
        if history is None:
            print(f"{path.name}: not finished after {args.timeout}s")
            ok = False
            continue
        status = history["status"]
        done = status.get("completed") and status.get("status_str") == "success"
        print(f"{path.name}: {status.get('status_str')}")
        for node_id, output in history.get("outputs", {}).items():
            for image in output.get("images", []):
                print(
                    f"  node {node_id} saved {image['type']}/{image['subfolder']}/{image['filename']}".replace(
                        "//", "/"
                    )
                )
            for text in output.get("text", []):
                print(f"  node {node_id} text: {text[:120]!r}")
        if not done:
            for kind, message in status.get("messages", []):
                if kind == "execution_error":
                    print(f"  error: {message.get('exception_type')}: {message.get('exception_message')}")
            ok = False
    ok = cancel_check(args.url, args.model) and ok
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
