"""Images in every accepted form give identical results."""

import pathlib

import numpy as np
import pytest
from PIL import Image

from conftest import IMAGE_NAMES


def forms(path):
    """The same picture as str, pathlib.Path, PIL image and numpy array."""
    pil = Image.open(path)
    pil.load()
    return {
        "str": str(path),
        "pathlib": pathlib.Path(path),
        "pil": pil,
        "numpy": np.asarray(pil),
    }


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_vq_encode_same_for_every_form(model, fixture_dir, name):
    results = {k: model.vq_encode(v).tolist() for k, v in forms(fixture_dir / "images" / f"{name}.png").items()}
    assert all(r == results["str"] for r in results.values()), results


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_understand_same_for_every_form(model, expected, fixture_dir, name):
    c = expected["cases"]["understand.single"]  # wide.png, greedy, 12 tokens
    question = c["conversation"][0]["content"].replace("<image_placeholder>\n", "")
    answers = {
        k: model.understand(v, question, max_new_tokens=12)
        for k, v in forms(fixture_dir / "images" / f"{name}.png").items()
    }
    assert len(set(answers.values())) == 1, answers
    if name == "wide":
        assert answers["str"] == c["answer"]


def test_modes_and_layouts(model, fixture_dir):
    pil = Image.open(fixture_dir / "images" / "rgba.png")
    assert pil.mode == "RGBA"
    want = model.vq_encode(pil).tolist()
    arr = np.asarray(pil)
    # Non-contiguous and Fortran-ordered arrays are read element by element.
    assert model.vq_encode(np.asfortranarray(arr)).tolist() == want
    assert model.vq_encode(arr[:, ::-1][:, ::-1]).tolist() == want
    padded = np.zeros(arr.shape[:2] + (8,), np.uint8)
    padded[..., :4] = arr
    assert model.vq_encode(padded[..., :4]).tolist() == want
    # Alpha is dropped: RGBA and its RGB conversion agree.
    rgb = pil.convert("RGB")
    assert model.vq_encode(rgb).tolist() == want
    assert model.vq_encode(np.asarray(rgb)).tolist() == want

    gray = Image.open(fixture_dir / "images" / "gray.png").convert("L")
    g = np.asarray(gray)
    want_gray = model.vq_encode(gray).tolist()
    assert model.vq_encode(g).tolist() == want_gray
    assert model.vq_encode(g[..., None]).tolist() == want_gray
    assert model.vq_encode(np.asarray(gray.convert("LA"))).tolist() == want_gray
    assert model.vq_encode(gray.convert("RGB")).tolist() == want_gray

    # Other modes go through Pillow's RGB conversion.
    pal = rgb.convert("P")
    assert model.vq_encode(pal).tolist() == model.vq_encode(pal.convert("RGB")).tolist()


def test_read_only_array(model, fixture_dir):
    arr = np.asarray(Image.open(fixture_dir / "images" / "square.png").convert("RGB")).copy()
    want = model.vq_encode(arr).tolist()
    arr.setflags(write=False)
    assert model.vq_encode(arr).tolist() == want


@pytest.mark.parametrize("name", ["ycc420", "progressive", "restart", "gray"])
def test_jpeg_paths_read_as_the_installed_pillow_does(model, fixture_dir, name):
    """A JPEG given by path is decoded as Pillow decodes it (libjpeg-turbo),
    so its codes are those of the PIL image; the image crate's decoder gave
    ycc420 a different code. Pillow here also agrees with the bytes stored
    beside the fixture."""
    path = fixture_dir.parent / "jpeg" / f"{name}.jpg"
    pil = Image.open(path).convert("RGB")
    stored = Image.open(path.with_name(f"{name}.pillow.png")).convert("RGB")
    assert np.array_equal(np.asarray(pil), np.asarray(stored))
    assert model.vq_encode(str(path)).tolist() == model.vq_encode(pil).tolist()
