"""`janus serve` driven by the official `openai` client (a client nobody here
wrote), on loopback with the tiny fixture: answers and images equal the
janus_rs library's."""

import base64
import io

import numpy as np
import pytest

openai = pytest.importorskip("openai", reason="the openai package is installed by python/test.sh")
from PIL import Image  # noqa: E402

from conftest import serve  # noqa: E402


@pytest.fixture(scope="module")
def server(fixture_dir):
    for url in serve(fixture_dir):
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


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
