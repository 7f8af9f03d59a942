"""Bad inputs raise the documented exceptions and never crash the interpreter."""

import errno
import shutil

import numpy as np
import pytest

import janus_rs


def test_exception_hierarchy():
    assert issubclass(janus_rs.Cancelled, janus_rs.JanusError)
    assert issubclass(janus_rs.InputError, janus_rs.JanusError)
    assert issubclass(janus_rs.InputError, ValueError)
    assert issubclass(janus_rs.MissingFileError, janus_rs.JanusError)
    assert issubclass(janus_rs.MissingFileError, FileNotFoundError)
    assert issubclass(janus_rs.JanusError, Exception)


def test_load_errors(tmp_path, fixture_dir):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError) as e:
        janus_rs.JanusPro.load(str(missing))
    assert isinstance(e.value, janus_rs.MissingFileError)
    assert e.value.filename == str(missing)
    assert e.value.errno == errno.ENOENT
    assert str(e.value) == f"model folder not found: {missing}"
    with pytest.raises(FileNotFoundError):
        janus_rs.JanusPro.load(missing)  # os.PathLike
    with pytest.raises(ValueError, match="device"):
        janus_rs.JanusPro.load(str(fixture_dir), device="tpu")
    with pytest.raises(ValueError, match="dtype"):
        janus_rs.JanusPro.load(str(fixture_dir), dtype="int3")
    with pytest.raises(ValueError, match="quantisation \"q3\""):
        janus_rs.JanusPro.load(str(fixture_dir), quant="q3")
    with pytest.raises(TypeError):
        janus_rs.JanusPro.load(42)
    # A folder without config.json
    (tmp_path / "empty").mkdir()
    with pytest.raises(janus_rs.JanusError, match="config.json"):
        janus_rs.JanusPro.load(str(tmp_path / "empty"))


def test_image_errors(model, tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        model.understand(str(tmp_path / "missing.png"), "What?")
    assert isinstance(e.value, janus_rs.MissingFileError)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"definitely not a png")
    with pytest.raises(ValueError, match="not an image"):
        model.understand(str(bad), "What?")
    with pytest.raises(TypeError):
        model.understand(42, "What?")
    with pytest.raises(TypeError):
        model.vq_encode(object())
    with pytest.raises(ValueError, match="uint8"):
        model.vq_encode(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        model.vq_encode(np.zeros((8, 8, 5), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        model.vq_encode(np.zeros((8,), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        model.vq_encode(np.zeros((0, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="size 0x0"):
        model.understand(np.zeros((0, 0, 3), np.uint8), "What?")


def test_prompt_errors(model, fixture_dir):
    img = str(fixture_dir / "images" / "square.png")
    with pytest.raises(ValueError, match="placeholder"):
        model.understand(None, "<image_placeholder> what is this?")
    with pytest.raises(ValueError, match="placeholder"):
        model.chat([{"role": "<|User|>", "content": "no placeholder", "images": [img]}])
    with pytest.raises(ValueError, match="empty"):
        model.generate_array("   ")
    with pytest.raises(ValueError, match="context of 1024"):
        model.understand(None, "x" * 5000)  # longer than the tiny model's context


def test_option_errors(model):
    q = "What is a cat?"
    # Each refused for its own reason: the message names the option.
    for kwargs, reason in [
        (dict(max_new_tokens=-1), "max_new_tokens"),
        (dict(temperature=-0.5), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(top_p=0.0), "top-p"),
        (dict(top_p=1.5), "top-p"),
        (dict(seed=-1), "seed"),
        (dict(seed=2**64), "seed"),
    ]:
        with pytest.raises(ValueError, match=reason):
            model.understand(None, q, **kwargs)
    for kwargs, reason in [
        (dict(parallel_size=0), "parallel size"),
        (dict(parallel_size=-3), "parallel size"),
        (dict(cfg_weight=float("inf")), "cfg weight"),
        (dict(temperature=-1.0), "temperature"),
    ]:
        with pytest.raises(ValueError, match=reason):
            model.generate_tokens("a cat", **kwargs)
    with pytest.raises(TypeError):
        model.generate_tokens("a cat", parallel_size="two")
    with pytest.raises(TypeError):
        model.generate_tokens("a cat", 2)  # options are keyword-only


def test_conversation_errors(model):
    with pytest.raises(TypeError):
        model.chat("hello")
    with pytest.raises(ValueError, match="empty"):
        model.chat([])
    with pytest.raises(TypeError):
        model.chat(["hello"])
    with pytest.raises(ValueError, match="role"):
        model.chat([{"content": "hello"}])
    with pytest.raises(TypeError):
        model.chat([{"role": "<|User|>", "content": 3}])
    with pytest.raises(TypeError):
        model.chat([{"role": "<|User|>", "content": "<image_placeholder>", "images": "a.png"}])


def test_vq_errors(model):
    n = model.image_token_count
    with pytest.raises(ValueError, match="codes"):
        model.vq_decode(np.zeros(n - 1, np.int64))
    with pytest.raises(ValueError, match="range"):
        model.vq_decode(np.full(n, model.codebook_size, np.int64))
    with pytest.raises(ValueError, match="range"):
        model.vq_decode(np.full(n, -1))
    with pytest.raises(ValueError, match="integers"):
        model.vq_decode(np.zeros(n, np.float32))
    with pytest.raises(ValueError, match="shape"):
        model.vq_decode(np.zeros((1, 1, n), np.int64))


def test_generate_without_pillow_message(model, monkeypatch, expected, expected_tensors):
    import builtins
    import sys

    real_import = builtins.__import__

    def no_pil(name, *args, **kwargs):
        if name == "PIL" or name.startswith("PIL."):
            raise ImportError("no Pillow")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pil)
    for mod in [m for m in sys.modules if m == "PIL" or m.startswith("PIL.")]:
        monkeypatch.delitem(sys.modules, mod)
    with pytest.raises(ImportError, match="generate_array"):
        model.generate("a cat", temperature=0)
    # generate_array never needs Pillow: the fixture's pixels with it blocked.
    c = expected["cases"]["t2i.cat_cfg1"]
    pixels = model.generate_array(c["prompt"], cfg_weight=c["cfg_weight"], temperature=0)
    monkeypatch.undo()
    assert pixels.shape == (1, 16, 16, 3)
    assert np.abs(pixels.astype(int) - expected_tensors["t2i.cat_cfg1.pixels_u8"]).max() <= 1


def test_callback_exception_propagates_and_model_stays_usable(model, expected):
    class Boom(Exception):
        pass

    def progress(step, total):
        if step == 3:
            raise Boom("from the callback")

    with pytest.raises(Boom, match="from the callback"):
        model.generate_tokens("a cat", temperature=0, progress=progress)
    with pytest.raises(Boom):
        model.understand(None, "What is a cat?", max_new_tokens=8, progress=progress)
    with pytest.raises(Boom):
        list(model.stream_understand(None, "What is a cat?", max_new_tokens=8, progress=progress))
    with pytest.raises(TypeError):
        model.generate_tokens("a cat", temperature=0, progress=lambda: None)  # wrong arity
    # Still usable: the fixture's greedy image tokens and answer.
    c = expected["cases"]["t2i.cat_cfg1"]
    assert model.generate_tokens(c["prompt"], cfg_weight=c["cfg_weight"], temperature=0).tolist() == c["image_tokens"]
    t = expected["cases"]["understand.text"]
    assert model.understand(None, t["conversation"][0]["content"], max_new_tokens=12) == t["answer"]


def test_bad_model_files_raise_input_error(fixture_dir, tmp_path):
    # Every unreadable file of a model folder is the caller's input: InputError.
    for name in ["processor_config.json", "tokenizer.json", "config.json"]:
        folder = tmp_path / name.replace(".", "_")
        shutil.copytree(fixture_dir, folder, ignore=shutil.ignore_patterns("bin-bf16", "images"))
        (folder / name).write_text("{ not json")
        with pytest.raises(janus_rs.InputError, match=name.replace(".", r"\.")):
            janus_rs.JanusPro.load(str(folder))
