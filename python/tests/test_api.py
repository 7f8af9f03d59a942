"""The module's surface: docstrings, signatures, type stubs, metadata."""

import ast
import inspect
import pathlib

import numpy as np
import pytest

import janus_rs

PUBLIC = [
    "load", "understand", "chat", "stream_understand", "stream_chat", "generate", "generate_many", "generate_array",
    "generate_tokens", "vq_encode", "vq_decode", "cancel",
]


def test_metadata(model):
    # The workspace's version (the wheel's, the node pack's and `janus --version`'s).
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    cargo = tomllib.loads((pathlib.Path(__file__).parents[2] / "Cargo.toml").read_text())
    assert janus_rs.__version__ == cargo["workspace"]["package"]["version"]
    assert janus_rs.DEFAULT_MODEL == "deepseek-ai/Janus-Pro-1B"
    assert model.device == "cpu" and model.dtype == "f32" and model.quant == "none"
    assert model.image_token_count == 16 and model.generated_image_size == 16 and model.codebook_size == 256
    assert repr(model).startswith("JanusPro(source='")


def test_quantised_model_runs(fixture_dir, model, expected):
    q = janus_rs.JanusPro.load(str(fixture_dir), quant="q8_0")
    assert q.quant == "q8_0" and repr(q).endswith("dtype='f32', quant='q8_0')")
    # Close to, but not necessarily the same as, the exact model: q8_0's
    # rounding stays below the greedy margins of these two fixture cases
    # (min_greedy_margin 0.12 and 0.067), so their official answers hold.
    c = expected["cases"]["understand.single"]
    image = fixture_dir / c["conversation"][0]["images"][0]
    question = c["conversation"][0]["content"].replace("<image_placeholder>\n", "")
    assert q.understand(image, question, max_new_tokens=12) == c["answer"]
    t = expected["cases"]["t2i.apple"]
    options = dict(parallel_size=t["parallel_size"], cfg_weight=t["cfg_weight"], temperature=0)
    tokens = q.generate_tokens(t["prompt"], **options)
    assert tokens.tolist() == t["image_tokens"]
    images = q.generate(t["prompt"], **options)
    size = model.generated_image_size
    assert [img.size for img in images] == [(size, size)] * t["parallel_size"]
    assert np.array_equal(np.stack([np.asarray(img) for img in images]), q.vq_decode(tokens))


def test_quantize_saves_a_folder_that_loads_quantised(fixture_dir, tmp_path):
    steps = []
    out = tmp_path / "tiny-q8_0"
    path = janus_rs.quantize(fixture_dir, out, "q8_0", progress=lambda s, t: steps.append((s, t)))
    assert path == str(out / "model.gguf")
    assert steps and steps == [(i, len(steps)) for i in range(1, len(steps) + 1)]
    saved = janus_rs.JanusPro.load(out)
    assert saved.quant == "q8_0"
    direct = janus_rs.JanusPro.load(str(fixture_dir), quant="q8_0")
    image = str(fixture_dir / "images" / "wide.png")
    question = "Describe this image."
    assert saved.understand(image, question, max_new_tokens=6) == direct.understand(image, question, max_new_tokens=6)
    with pytest.raises(janus_rs.InputError, match="holds q8_0 weights"):
        janus_rs.JanusPro.load(out, quant="q4k")
    with pytest.raises(janus_rs.InputError, match="q8_0 or q4k"):
        janus_rs.quantize(fixture_dir, tmp_path / "none", "none")
    with pytest.raises(janus_rs.InputError, match="unknown"):
        janus_rs.quantize(fixture_dir, tmp_path / "q3", "q3")


def test_quantize_cancels_without_leaving_a_file(fixture_dir, tmp_path):
    import threading

    event = threading.Event()
    out = tmp_path / "cancelled"

    def progress(step, total):
        if step == 3:
            event.set()

    with pytest.raises(janus_rs.Cancelled):
        janus_rs.quantize(fixture_dir, out, "q8_0", progress=progress, cancel_event=event)
    assert list(out.iterdir()) == []

    def failing(step, total):
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        janus_rs.quantize(fixture_dir, out, "q8_0", progress=failing)
    assert list(out.iterdir()) == []


def test_help_is_useful():
    for name in PUBLIC:
        fn = getattr(janus_rs.JanusPro, name)
        assert fn.__doc__ and len(fn.__doc__) > 40, name
        assert fn.__text_signature__, name
    sig = inspect.signature(janus_rs.JanusPro.generate)
    assert sig.parameters["parallel_size"].default == 1
    assert sig.parameters["cfg_weight"].default == 5.0
    assert sig.parameters["parallel_size"].kind is inspect.Parameter.KEYWORD_ONLY
    assert inspect.signature(janus_rs.JanusPro.load).parameters["model"].default == janus_rs.DEFAULT_MODEL
    assert "progress" in janus_rs.JanusPro.generate.__doc__
    assert janus_rs.JanusPro.__doc__ and janus_rs.TextStream.__doc__


def stub_classes():
    pkg = pathlib.Path(janus_rs.__file__).parent
    assert (pkg / "py.typed").exists()
    tree = ast.parse((pkg / "__init__.pyi").read_text())
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}


def test_stubs_match_the_module():
    classes = stub_classes()
    for name in janus_rs.__all__:
        if isinstance(getattr(janus_rs, name), type):
            assert name in classes, name
    stub = {n.name: n for n in classes["JanusPro"].body if isinstance(n, ast.FunctionDef)}
    runtime = [n for n in dir(janus_rs.JanusPro) if not n.startswith("_")]
    assert sorted(stub) == sorted(runtime)
    for name in PUBLIC:
        args = stub[name].args
        stub_params = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs if a.arg != "self"]
        params = [p for p in inspect.signature(getattr(janus_rs.JanusPro, name)).parameters if p != "self"]
        assert stub_params == params, name
    stream_stub = {n.name for n in classes["TextStream"].body if isinstance(n, ast.FunctionDef)}
    assert {n for n in dir(janus_rs.TextStream) if not n.startswith("_")} <= stream_stub


def test_stubs_pass_mypy_stubtest():
    """mypy's stubtest compares the .pyi with the module (skipped without mypy)."""
    import subprocess
    import sys

    import pytest

    pytest.importorskip("mypy.stubtest")
    run = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "janus_rs"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=pathlib.Path(janus_rs.__file__).parents[2],  # away from the source tree
    )
    assert run.returncode == 0, run.stdout + run.stderr
