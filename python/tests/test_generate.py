"""Text-to-image: argmax image tokens and pixels equal the official implementation's."""

import numpy as np
import pytest

import janus_rs

CASES = ["t2i.apple", "t2i.cat_cfg1"]


def opts(c):
    return dict(parallel_size=c["parallel_size"], cfg_weight=c["cfg_weight"], temperature=c["temperature"])


@pytest.mark.parametrize("case", CASES)
def test_image_tokens_match_fixture(model, expected, case):
    c = expected["cases"][case]
    tokens = model.generate_tokens(c["prompt"], **opts(c))
    assert tokens.dtype == np.int64
    assert tokens.shape == (c["parallel_size"], model.image_token_count)
    assert tokens.tolist() == c["image_tokens"]


@pytest.mark.parametrize("case", CASES)
def test_pixels_match_fixture(model, expected, expected_tensors, fixture_dir, case):
    from PIL import Image

    c = expected["cases"][case]
    pixels = model.generate_array(c["prompt"], **opts(c))
    size = model.generated_image_size
    assert pixels.dtype == np.uint8
    assert pixels.shape == (c["parallel_size"], size, size, 3) == (c["parallel_size"], 16, 16, 3)
    want = expected_tensors[f"{case}.pixels_u8"]
    # The Rust parity tests allow one level (f32 rounding at floor()); same here.
    assert np.abs(pixels.astype(int) - want).max() <= 1
    assert (pixels != want).mean() < 0.01
    name = case.split(".", 1)[1]
    for i in range(c["parallel_size"]):
        png = np.asarray(Image.open(fixture_dir / f"t2i_{name}_{i}.png").convert("RGB"))
        assert np.abs(pixels[i].astype(int) - png).max() <= 1
    # generate_array is exactly generate_tokens + vq_decode.
    tokens = model.generate_tokens(c["prompt"], **opts(c))
    assert np.array_equal(model.vq_decode(tokens), pixels)


def test_generate_returns_pil_images(model, expected):
    from PIL import Image

    c = expected["cases"]["t2i.apple"]
    images = model.generate(c["prompt"], **opts(c))
    assert isinstance(images, list) and len(images) == 2
    pixels = model.generate_array(c["prompt"], **opts(c))
    for img, arr in zip(images, pixels):
        assert isinstance(img, Image.Image)
        assert img.mode == "RGB" and img.size == (16, 16)
        assert np.array_equal(np.asarray(img), arr)


def test_progress_sees_every_step(model, expected):
    c = expected["cases"]["t2i.cat_cfg1"]
    seen = []
    model.generate_array(c["prompt"], **opts(c), progress=lambda step, total: seen.append((step, total)))
    n = model.image_token_count
    assert seen == [(i, n) for i in range(1, n + 1)]
    seen.clear()
    model.generate_tokens(c["prompt"], **opts(c), progress=lambda *a: seen.append(a))
    assert seen == [(i, n) for i in range(1, n + 1)]


def test_sampling_is_reproducible_with_a_seed(model):
    a = model.generate_tokens("A blue bird", parallel_size=2, temperature=1.0, seed=123)
    b = model.generate_tokens("A blue bird", parallel_size=2, temperature=1.0, seed=123)
    c = model.generate_tokens("A blue bird", parallel_size=2, temperature=1.0, seed=124)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.array_equal(
        model.generate_array("A blue bird", parallel_size=2, seed=123), model.vq_decode(a)
    )


def test_vq_decode_matches_fixture(model, expected_tensors):
    codes = expected_tensors["vq.decode.codes"]
    decoded = expected_tensors["vq.decode.image"]  # float [n, 3, S, S] in [-1, 1]
    want = np.floor(np.clip((decoded + 1) / 2 * 255, 0, 255)).astype(np.uint8).transpose(0, 2, 3, 1)
    got = model.vq_decode(codes)
    assert got.shape == want.shape and got.dtype == np.uint8
    assert np.abs(got.astype(int) - want).max() <= 1
    # One row: [T] -> [S, S, 3]; any integer dtype and plain lists work.
    assert np.array_equal(model.vq_decode(codes[0]), got[0])
    assert np.array_equal(model.vq_decode(codes.astype(np.uint16).tolist()), got)
    assert np.array_equal(model.vq_decode(codes.astype(np.int32)), got)
    assert model.vq_decode(np.zeros((0, model.image_token_count), np.int64)).shape == (0, 16, 16, 3)


def test_vq_encode_matches_fixture(model, expected_tensors):
    # The fixture's encoder input: one 16x16 image (the generation size, so
    # not resized) in [-1, 1], to uint8 as vq_encode scales it back.
    image = expected_tensors["vq.encode.input"][0].transpose(1, 2, 0)
    pixels = np.round((image + 1) * 127.5).astype(np.uint8)
    codes = model.vq_encode(pixels)
    assert codes.dtype == np.int64 and codes.shape == (model.image_token_count,)
    assert codes.tolist() == expected_tensors["vq.encode.indices"][0].tolist()


def test_vq_encode_round_trip(model, fixture_dir):
    from PIL import Image

    codes = model.vq_encode(fixture_dir / "images" / "square.png")
    assert codes.dtype == np.int64 and codes.shape == (model.image_token_count,)
    assert ((codes >= 0) & (codes < model.codebook_size)).all()
    pixels = model.vq_decode(codes)
    assert pixels.shape == (16, 16, 3)
    # A non-square image is encoded as its centred square crop.
    wide = np.asarray(Image.open(fixture_dir / "images" / "wide.png").convert("RGB"))  # 200 x 120
    h, w = wide.shape[:2]
    centre = wide[:, (w - h) // 2 : (w - h) // 2 + h]
    assert model.vq_encode(fixture_dir / "images" / "wide.png").tolist() == model.vq_encode(centre).tolist()
    assert model.vq_encode(centre).tolist() != model.vq_encode(wide[:, :h]).tolist()


def test_generate_many_batches_prompts_without_changing_images(model, expected):
    c = expected["cases"]["t2i.apple"]
    prompts = ["a cat", c["prompt"], "Hi"]
    one_by_one = model.generate_many(prompts, parallel_size=2, batch_size=1, seed=5)
    seen = []
    together = model.generate_many(
        prompts, parallel_size=2, batch_size=6, seed=5, progress=lambda s, t: seen.append((s, t))
    )
    assert [len(images) for images in together] == [2, 2, 2]
    assert all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for pa, pb in zip(together, one_by_one)
        for a, b in zip(pa, pb)
    )
    n = model.image_token_count
    assert seen == [(i, n) for i in range(1, n + 1)], "one batch of six images"
    # Greedy: the fixture's apple images, from a batch holding all three prompts.
    greedy = model.generate_many(prompts, parallel_size=2, batch_size=6, temperature=0)
    expected_pngs = model.generate(c["prompt"], parallel_size=2, temperature=0)
    for a, b in zip(greedy[1], expected_pngs):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(janus_rs.InputError, match="batch_size"):
        model.generate_many(prompts, batch_size=0)
    with pytest.raises(janus_rs.InputError, match="empty"):
        model.generate_many([])
