"""Image understanding: greedy answers equal the official implementation's."""

import pytest

from conftest import absolute_conversation

CASES = ["understand.single", "understand.multi", "understand.text"]


@pytest.mark.parametrize("case", CASES)
def test_chat_matches_fixture(model, expected, fixture_dir, case):
    c = expected["cases"][case]
    conversation = absolute_conversation(c["conversation"], fixture_dir)
    answer = model.chat(conversation, max_new_tokens=c["max_new_tokens"])
    assert answer == c["answer"]


def test_understand_single_image_matches_fixture(model, expected, fixture_dir):
    c = expected["cases"]["understand.single"]
    path = fixture_dir / c["conversation"][0]["images"][0]
    # question_conversation puts "<image_placeholder>\n" before the question.
    question = c["conversation"][0]["content"].replace("<image_placeholder>\n", "")
    assert model.understand(path, question, max_new_tokens=12) == c["answer"]
    assert model.understand([path], question, max_new_tokens=12) == c["answer"]
    # A question that places the placeholder itself is taken as is.
    assert model.understand(str(path), c["conversation"][0]["content"], max_new_tokens=12) == c["answer"]


def test_understand_text_only_matches_fixture(model, expected):
    c = expected["cases"]["understand.text"]
    question = c["conversation"][0]["content"]
    assert model.understand(None, question, max_new_tokens=12) == c["answer"]
    assert model.understand([], question, max_new_tokens=12) == c["answer"]


def test_understand_multi_image_question(model, expected, fixture_dir):
    c = expected["cases"]["understand.multi"]
    first = c["conversation"][0]
    paths = [fixture_dir / p for p in first["images"]]
    one_turn = [dict(first, images=[str(p) for p in paths]), {"role": "<|Assistant|>", "content": ""}]
    want = model.chat(one_turn, max_new_tokens=8)
    assert model.understand(paths, first["content"], max_new_tokens=8) == want
    assert model.understand(tuple(paths), first["content"], max_new_tokens=8) == want


def test_chat_images_in_any_form(model, expected, fixture_dir):
    from PIL import Image
    import numpy as np

    c = expected["cases"]["understand.multi"]
    conversation = absolute_conversation(c["conversation"], fixture_dir)
    a, b = conversation[0]["images"]
    conversation[0]["images"] = [Image.open(a), np.asarray(Image.open(b))]
    assert model.chat(conversation, max_new_tokens=12) == c["answer"]


def test_chat_role_aliases_and_implicit_assistant_turn(model, expected, fixture_dir):
    c = expected["cases"]["understand.single"]
    conversation = absolute_conversation(c["conversation"], fixture_dir)
    short = [dict(conversation[0], role="user")]  # no trailing assistant turn
    assert model.chat(short, max_new_tokens=12) == c["answer"]


def test_max_new_tokens_and_progress(model, expected):
    c = expected["cases"]["understand.text"]
    steps = []
    answer = model.understand(
        None, c["conversation"][0]["content"], max_new_tokens=12, progress=lambda s, t: steps.append((s, t))
    )
    assert answer == c["answer"]
    # Every token is reported, EOS or not (the fixture's 12 greedy ids have none).
    assert steps == [(i, 12) for i in range(1, 13)]
    # Fewer tokens: the start of the same greedy answer.
    short = model.understand(None, c["conversation"][0]["content"], max_new_tokens=3)
    assert short and short != c["answer"] and c["answer"].startswith(short)
    assert model.understand(None, c["conversation"][0]["content"], max_new_tokens=0) == ""


def test_sampling_is_reproducible_with_a_seed(model, expected):
    q = expected["cases"]["understand.text"]["conversation"][0]["content"]
    sampled = dict(max_new_tokens=16, temperature=1.0, top_p=0.9)
    a = model.understand(None, q, seed=11, **sampled)
    b = model.understand(None, q, seed=11, **sampled)
    assert a == b
    # Sampled, not greedy; another seed draws another answer; the stream draws the same.
    assert a != model.understand(None, q, max_new_tokens=16)
    assert a != model.understand(None, q, seed=12, **sampled)
    assert "".join(model.stream_understand(None, q, seed=11, **sampled)) == a


@pytest.mark.parametrize("case", CASES)
def test_stream_chat_joins_to_the_answer(model, expected, fixture_dir, case):
    c = expected["cases"][case]
    conversation = absolute_conversation(c["conversation"], fixture_dir)
    pieces = list(model.stream_chat(conversation, max_new_tokens=c["max_new_tokens"]))
    assert all(isinstance(p, str) and p for p in pieces)
    assert len(pieces) > 1, "the answer should arrive in several pieces"
    assert "".join(pieces) == c["answer"]


def test_stream_understand_joins_to_the_answer(model, expected, fixture_dir):
    c = expected["cases"]["understand.single"]
    path = fixture_dir / c["conversation"][0]["images"][0]
    question = "Describe this image in detail."
    steps = []
    stream = model.stream_understand(path, question, max_new_tokens=12, progress=lambda s, t: steps.append(s))
    pieces = list(stream)
    assert "".join(pieces) == model.understand(path, question, max_new_tokens=12) == c["answer"]
    assert steps == list(range(1, 13))
    # Exhausted: stays exhausted.
    assert list(stream) == []
    with model.stream_understand(None, "What is a cat?", max_new_tokens=12) as s:
        assert s.read() == expected["cases"]["understand.text"]["answer"]


def test_stream_close_stops_early(model):
    stream = model.stream_understand(None, "What is a cat?", max_new_tokens=400)
    first = next(stream)
    assert first and model.understand(None, "What is a cat?", max_new_tokens=12).startswith(first)
    stream.close()
    assert list(stream) == []


def test_sampling_options_reach_the_sampler(model, expected, fixture_dir):
    # Options that were ignored would give the greedy answer every time.
    c = expected["cases"]["understand.single"]
    path = fixture_dir / c["conversation"][0]["images"][0]
    question = c["conversation"][0]["content"].replace("<image_placeholder>\n", "")

    def answer(**options):
        return model.understand(path, question, max_new_tokens=12, **options)

    assert answer() == c["answer"]
    hot = [answer(temperature=1.0, top_p=1.0, seed=s) for s in range(4)]
    assert any(h != c["answer"] for h in hot), hot
    assert len(set(hot)) > 1, hot  # the seed reaches the sampler
    assert answer(temperature=1.0, top_p=1.0, seed=2) == hot[2]  # and fixes the draw
    # A tiny top-p keeps only the most likely token: greedy again.
    assert answer(temperature=1.0, top_p=1e-6, seed=3) == c["answer"]
