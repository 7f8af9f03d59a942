"""`janus serve` driven by the official `openai` client (a client nobody here
wrote), on loopback with the tiny fixture: answers and images equal the
janus_rs library's."""

import base64
import io
import os
import subprocess
import time

import numpy as np
import pytest

openai = pytest.importorskip("openai", reason="the openai package is installed by python/test.sh")
from PIL import Image  # noqa: E402

JANUS_BIN = os.environ.get("JANUS_BIN")


@pytest.fixture(scope="module")
def server(fixture_dir):
    if not JANUS_BIN:
        pytest.skip("JANUS_BIN (the janus binary) is set by python/test.sh")
    proc = subprocess.Popen(
        [JANUS_BIN, "serve", "--model", str(fixture_dir), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert "listening on http://" in line, line + proc.stderr.read()
        url = line.strip().rsplit(" ", 1)[-1]
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        deadline = time.monotonic() + 60
        while True:  # /health turns 200 once the model is loaded
            try:
                client.models.list()
                break
            except openai.APIStatusError as e:
                assert e.status_code == 503
                assert time.monotonic() < deadline, "the model never loaded"
                time.sleep(0.05)
        yield client
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0, proc.stderr.read()


def data_url(path):
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def test_chat_with_an_image_equals_the_library(server, model, fixture_dir):
    image = fixture_dir / "images" / "wide.png"
    question = "Describe this image in detail."
    want = model.understand(image, question, max_new_tokens=12)
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": data_url(image)}},
                {"type": "text", "text": question},
            ],
        }
    ]
    r = server.chat.completions.create(model="janus", messages=messages, max_tokens=12)
    assert r.choices[0].message.content == want
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 12

    chunks = server.chat.completions.create(model="janus", messages=messages, max_tokens=12, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want

    # Sampling with a seed: the library's answer with the same seed.
    sampled = model.understand(image, question, max_new_tokens=12, temperature=0.8, seed=5)
    r = server.chat.completions.create(model="janus", messages=messages, max_tokens=12, temperature=0.8, seed=5)
    assert r.choices[0].message.content == sampled


def test_images_generate_equals_the_library(server, model):
    want = model.generate("a red apple", parallel_size=2, seed=3)
    r = server.images.generate(model="janus", prompt="a red apple", n=2, response_format="b64_json", extra_body={"seed": 3})
    assert len(r.data) == 2
    for d, img in zip(r.data, want):
        got = Image.open(io.BytesIO(base64.b64decode(d.b64_json))).convert("RGB")
        assert np.array_equal(np.asarray(got), np.asarray(img))


def test_errors_are_openai_errors(server):
    with pytest.raises(openai.BadRequestError) as e:
        server.chat.completions.create(model="janus", messages=[{"role": "user", "content": "hi"}], n=2)
    assert e.value.body["param"] == "n"
