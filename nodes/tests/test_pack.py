"""ComfyUI-Janus-RS, tested the way ComfyUI uses it: imported from a
custom_nodes folder, node definitions validated, and the example workflows
executed on the tiny fixture model (16 image tokens, 16x16 images)."""

import gc
import inspect
import json
import re
import shutil
import subprocess
import sys
import types

import janus_rs  # the pack needs it: no skipping without it
import numpy as np
import pytest

import harness
from harness import EXAMPLES, PACK_DIR, TINY, TINY_TOKENS


EXPECTED_NODES = {
    "JanusRSModelLoader",
    "JanusRSImageUnderstanding",
    "JanusRSImageGeneration",
    "JanusRSVQEncode",
    "JanusRSVQDecode",
}
# Node ids of the existing Janus packs (CY-Chenyue/ComfyUI-Janus-Pro and
# its forks): ComfyUI keeps one class per id, so these must stay unused.
OTHER_PACKS_IDS = {
    "JanusModelLoader",
    "JanusImageUnderstanding",
    "JanusImageGeneration",
    "JanusProModelLoader",
    "JanusProImageUnderstanding",
    "JanusProImageGeneration",
}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}


def image_array(value) -> np.ndarray:
    """An IMAGE as numpy (a torch tensor where torch is installed)."""
    return value.numpy() if hasattr(value, "numpy") and not isinstance(value, np.ndarray) else np.asarray(value)


# --- importing and node definitions ---------------------------------------


def test_pack_imports_like_comfyui(env):
    module = env.module
    assert module.__name__ == str(env.custom_nodes / harness.PACK_FOLDER_NAME).replace(".", "_x_")
    assert set(module.NODE_CLASS_MAPPINGS) == EXPECTED_NODES
    assert set(module.NODE_DISPLAY_NAME_MAPPINGS) == EXPECTED_NODES
    assert not set(module.NODE_CLASS_MAPPINGS) & OTHER_PACKS_IDS
    for node_id, name in module.NODE_DISPLAY_NAME_MAPPINGS.items():
        assert node_id.startswith("JanusRS") and name.strip()


@pytest.mark.parametrize("node_id", sorted(EXPECTED_NODES))
def test_input_types_are_valid(env, node_id):
    cls = env.module.NODE_CLASS_MAPPINGS[node_id]
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"} and spec["required"]
    for name, entry in {**spec["required"], **spec.get("optional", {})}.items():
        assert isinstance(entry, tuple) and 1 <= len(entry) <= 2, name
        kind = entry[0]
        opts = entry[1] if len(entry) == 2 else {}
        assert isinstance(opts, dict)
        if isinstance(kind, list):
            assert kind and all(isinstance(v, str) for v in kind), name
            assert opts.get("default", kind[0]) in kind
        else:
            assert isinstance(kind, str) and kind.isupper(), name
        if kind in ("INT", "FLOAT"):
            assert opts["min"] <= opts["default"] <= opts["max"], name
            if kind == "INT":
                assert all(isinstance(opts[k], int) for k in ("min", "max", "default"))
        if kind == "STRING":
            assert isinstance(opts.get("default", ""), str)
    assert cls.CATEGORY == "Janus-RS"
    assert isinstance(cls.RETURN_TYPES, tuple) and all(isinstance(t, str) for t in cls.RETURN_TYPES)
    assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES)
    assert len(getattr(cls, "OUTPUT_IS_LIST", cls.RETURN_TYPES)) == len(cls.RETURN_TYPES)
    function = getattr(cls, cls.FUNCTION)
    params = inspect.signature(function).parameters
    for name in {**spec["required"], **spec.get("optional", {})}:
        assert name in params, f"{cls.FUNCTION}() does not take {name}"
    assert isinstance(cls.DESCRIPTION, str) and cls.DESCRIPTION.strip()


def test_node_options_match_the_issue(env):
    nodes = env.module.NODE_CLASS_MAPPINGS
    loader = nodes["JanusRSModelLoader"].INPUT_TYPES()["required"]
    assert list(loader) == ["model", "device", "dtype"]
    assert loader["device"][0] == ["auto", "cpu", "cuda", "metal"]
    optional = nodes["JanusRSModelLoader"].INPUT_TYPES()["optional"]
    assert optional["quant"][0] == ["none", "q8_0", "q4k"] and optional["quant"][1]["default"] == "none"
    understand = nodes["JanusRSImageUnderstanding"].INPUT_TYPES()["required"]
    assert understand["question"][1]["multiline"]
    assert [understand[k][1]["default"] for k in ("temperature", "top_p", "max_new_tokens")] == [0.1, 0.95, 512]
    assert nodes["JanusRSImageUnderstanding"].OUTPUT_IS_LIST == (True,)
    generate = nodes["JanusRSImageGeneration"].INPUT_TYPES()["required"]
    assert generate["prompt"][1]["multiline"]
    cfg = generate["cfg_weight"][1]
    assert (cfg["min"], cfg["max"], cfg["step"], cfg["default"]) == (1.0, 10.0, 0.5, 5.0)
    assert generate["temperature"][1]["default"] == 1.0
    assert nodes["JanusRSImageGeneration"].RETURN_TYPES == ("IMAGE",)
    assert nodes["JanusRSVQEncode"].RETURN_TYPES == ("JANUS_RS_CODES",)
    assert nodes["JanusRSVQDecode"].INPUT_TYPES()["required"]["codes"] == ("JANUS_RS_CODES",)


def test_pack_has_no_model_code_dependencies():
    """The pack's work is janus_rs's: no torch model code, transformers or
    DeepSeek's janus package; torch only as ComfyUI's IMAGE type, in images.py."""
    for path in PACK_DIR.glob("*.py"):
        source = path.read_text()
        for banned in (r"^\s*(import|from)\s+transformers", r"^\s*(import|from)\s+janus\b", r"attrdict", r"\.cuda\("):
            assert not re.search(banned, source, re.MULTILINE), f"{path.name}: {banned}"
        if path.name != "images.py":
            assert not re.search(r"^\s*(import|from)\s+torch", source, re.MULTILINE), path.name


# --- model folders ---------------------------------------------------------


def test_model_folders(tmp_path):
    comfy_env = harness.ComfyEnv(tmp_path / "ComfyUI")
    # As extra_model_paths.yaml does before custom nodes load.
    extra = tmp_path / "shared-models" / "janus"
    (extra / "owner").mkdir(parents=True)
    (extra / "owner" / "my-janus").symlink_to(TINY, target_is_directory=True)
    harness.folder_paths.add_model_folder_path("Janus-Pro", str(extra))
    comfy_env.install_model("tiny")
    (comfy_env.janus_dir / "not-a-model").mkdir()
    (comfy_env.janus_dir / ".downloading" / "Janus-Pro-7B").mkdir(parents=True)
    (comfy_env.janus_dir / ".downloading" / "Janus-Pro-7B" / "config.json").write_text("{}")
    module = comfy_env.load_pack()

    assert harness.folder_paths.get_folder_paths("Janus-Pro") == [str(comfy_env.janus_dir), str(extra)]
    choices = module.NODE_CLASS_MAPPINGS["JanusRSModelLoader"].INPUT_TYPES()["required"]["model"][0]
    assert choices == ["owner/my-janus", "tiny", "deepseek-ai/Janus-Pro-1B", "deepseek-ai/Janus-Pro-7B"]
    loaded = module.NODE_CLASS_MAPPINGS["JanusRSModelLoader"]().load("owner/my-janus", "cpu", "f32")[0]
    assert loaded.path == str(extra / "owner" / "my-janus")


def test_hub_model_is_downloaded_into_the_janus_pro_folder(env, monkeypatch):
    calls = []

    def snapshot_download(repo_id, local_dir, **kwargs):
        calls.append((repo_id, local_dir))
        for name in (
            "config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "processor_config.json",
            "preprocessor_config.json",
            "model.safetensors",
        ):
            shutil.copy(TINY / name, f"{local_dir}/{name}")
        return local_dir

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=snapshot_download))
    loader = env.module.NODE_CLASS_MAPPINGS["JanusRSModelLoader"]()
    model = loader.load("deepseek-ai/Janus-Pro-1B", "auto", "auto")[0]
    target = env.janus_dir / "Janus-Pro-1B"
    assert calls == [("deepseek-ai/Janus-Pro-1B", str(env.janus_dir / ".downloading" / "Janus-Pro-1B"))]
    assert (target / "config.json").is_file() and model.path == str(target)
    assert not (env.janus_dir / ".downloading" / "Janus-Pro-1B").exists()
    assert "Janus-Pro-1B" in loader.INPUT_TYPES()["required"]["model"][0]
    del model
    gc.collect()
    loader.load("deepseek-ai/Janus-Pro-1B", "cpu", "f32")  # found on disk now
    assert len(calls) == 1


def test_without_huggingface_hub_janus_rs_downloads_from_hf_endpoint(env, monkeypatch, tmp_path):
    # tests/fake_hub.py stands in for the hub (as a mirror set in HF_ENDPOINT).
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in (
        "config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
        "processor_config.json", "preprocessor_config.json", "model.safetensors",
    ):
        shutil.copy(TINY / name, repo / name)
    hub = subprocess.Popen(
        [sys.executable, str(harness.REPO / "tests" / "fake_hub.py"), "--repo", f"deepseek-ai/Janus-Pro-1B={repo}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{hub.stdout.readline().strip()}")
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
        for var in ("HF_HUB_OFFLINE", "HF_TOKEN"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not installed
        model = env.module.NODE_CLASS_MAPPINGS["JanusRSModelLoader"]().load("deepseek-ai/Janus-Pro-1B", "cpu", "f32")[0]
        assert model.path == "deepseek-ai/Janus-Pro-1B"
        expected = janus_rs.JanusPro.load(str(TINY)).generate_tokens("A red apple", seed=5)
        assert np.array_equal(model.model.generate_tokens("A red apple", seed=5), expected)
    finally:
        hub.kill()
        hub.wait()


def test_failed_download_says_where_to_put_the_model(env, monkeypatch):
    def snapshot_download(repo_id, local_dir, **kwargs):
        raise OSError("no network")

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=snapshot_download))
    loader = env.module.NODE_CLASS_MAPPINGS["JanusRSModelLoader"]()
    with pytest.raises(RuntimeError, match="put the model folder at .*Janus-Pro-7B"):
        loader.load("deepseek-ai/Janus-Pro-7B", "cpu", "f32")
    assert "Janus-Pro-7B" not in loader.INPUT_TYPES()["required"]["model"][0]


def test_missing_or_wrong_janus_rs_names_the_package_and_command(env, monkeypatch):
    loader = env.module.NODE_CLASS_MAPPINGS["JanusRSModelLoader"]()
    command = re.escape(f'"{sys.executable}" -m pip install "janus-rs>=0.1,<0.2"')
    monkeypatch.setitem(sys.modules, "janus_rs", None)  # import fails as when not installed
    with pytest.raises(RuntimeError, match=r"needs the Python package janus-rs \(module janus_rs\).*" + command):
        loader.load("tiny", "cpu", "f32")
    monkeypatch.setitem(sys.modules, "janus_rs", types.SimpleNamespace(__version__="0.2.0"))
    with pytest.raises(RuntimeError, match=r"needs janus-rs>=0.1,<0.2, but janus-rs 0.2.0 is installed: run " + command):
        loader.load("tiny", "cpu", "f32")


# --- devices, dtypes and the cache ----------------------------------------


def test_auto_device_follows_comfyui(env):
    store = sys.modules[env.module.__name__ + ".model_store"]
    mm = harness.comfy.model_management
    for device, expected in [
        (types.SimpleNamespace(type="cpu", index=None), "cpu"),
        (types.SimpleNamespace(type="cuda", index=0), "cuda"),
        (types.SimpleNamespace(type="cuda", index=1), "cuda:1"),
        (types.SimpleNamespace(type="mps", index=None), "metal"),
    ]:
        mm.torch_device = device
        assert store.auto_device() == expected
    assert store.resolve_dtype("auto", "cpu") == "f32"
    assert store.resolve_dtype("auto", "cuda") == "bf16"
    assert store.resolve_dtype("f16", "cpu") == "f16"


def test_auto_device_falls_back_to_the_cpu(env):
    """ComfyUI on a GPU with a CPU-only janus_rs build: auto still loads."""
    harness.comfy.model_management.torch_device = types.SimpleNamespace(type="cuda", index=0)
    loaded = env.module.NODE_CLASS_MAPPINGS["JanusRSModelLoader"]().load("tiny", "auto", "auto")[0]
    try:  # what this janus_rs build can do on CUDA (a CPU-only build in CI)
        janus_rs.JanusPro.load(str(TINY), device="cuda", dtype="bf16")
        want = ("cuda", "bf16")
    except Exception:
        want = ("cpu", "f32")
    assert (loaded.device, loaded.dtype) == want
    assert loaded.model.device.split(":")[0] == want[0] and loaded.model.dtype == want[1]


def test_loader_caches_and_frees(env):
    import weakref

    store = sys.modules[env.module.__name__ + ".model_store"]
    loader = env.module.NODE_CLASS_MAPPINGS["JanusRSModelLoader"]()
    first = loader.load("tiny", "cpu", "f32")[0]
    assert loader.load("tiny", "auto", "auto")[0] is first  # auto = cpu/f32 here
    assert isinstance(first.model, janus_rs.JanusPro)
    assert store.cached_models() == [first]
    ref = weakref.ref(first)
    del first  # ComfyUI dropping the loader node's output
    gc.collect()
    assert ref() is None and store.cached_models() == []
    with pytest.raises(ValueError, match="not found"):
        loader.load("no-such-model", "cpu", "f32")
    with pytest.raises(ValueError, match="unknown quant 'q3'"):
        loader.load("tiny", "cpu", "f32", "q3")


def test_loader_quantises_on_request(env):
    loader = env.module.NODE_CLASS_MAPPINGS["JanusRSModelLoader"]()
    exact = loader.load("tiny", "cpu", "f32")[0]
    quantised = loader.load("tiny", "cpu", "f32", "q8_0")[0]
    assert quantised is not exact and quantised.quant == "q8_0"
    assert quantised.model.quant == "q8_0" and exact.model.quant == "none"
    assert loader.load("tiny", "auto", "auto", "q8_0")[0] is quantised


def test_loader_takes_a_saved_quantised_folder(env):
    janus_rs.quantize(harness.TINY, env.janus_dir / "tiny-q8_0", "q8_0")
    loader = env.module.NODE_CLASS_MAPPINGS["JanusRSModelLoader"]()
    choices = loader.INPUT_TYPES()["required"]["model"][0]
    assert "tiny-q8_0" in choices
    saved = loader.load("tiny-q8_0", "cpu", "f32")[0]
    assert saved.quant == "q8_0" and saved.model.quant == "q8_0"
    with pytest.raises(janus_rs.InputError, match="holds q8_0 weights"):
        loader.load("tiny-q8_0", "cpu", "f32", "q4k")


# --- the example workflows ------------------------------------------------


def test_generate_workflow(env):
    prompt = harness.load_api_workflow("janus_rs_generate.api.json")
    result = env.run(prompt)
    images = image_array(result["outputs"]["2"][0][0])
    batch = prompt["2"]["inputs"]["batch_size"]
    assert images.shape == (batch, 16, 16, 3) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0 and images.std() > 0
    # One tick per image token (576 for the real models), for the whole batch.
    assert env.ticks == [(step, TINY_TOKENS) for step in range(1, TINY_TOKENS + 1)]
    saved = result["ui"]["3"][0]["images"]
    assert len(saved) == batch and all((env.base / "output" / s["filename"]).is_file() for s in saved)
    # The node hands its inputs to janus_rs unchanged: same pixels as a direct call.
    model = janus_rs.JanusPro.load(str(TINY), device="cpu", dtype="f32")
    inputs = prompt["2"]["inputs"]
    direct = model.generate_array(
        inputs["prompt"],
        parallel_size=batch,
        cfg_weight=inputs["cfg_weight"],
        temperature=inputs["temperature"],
        seed=inputs["seed"],
    )
    assert np.array_equal(np.rint(images * 255).astype(np.uint8), np.asarray(direct))


def test_understand_workflow(env):
    prompt = harness.load_api_workflow("janus_rs_understand.api.json")
    result = env.run(prompt)
    answers = result["outputs"]["3"][0]
    assert result["ui"]["4"] == [{"text": (answers[0],)}]
    # The node hands the loaded image and its options to janus_rs unchanged.
    from PIL import Image

    inputs = {k: v for k, v in prompt["3"]["inputs"].items() if k not in ("model", "image", "question")}
    pixels = np.asarray(Image.open(TINY / "images" / "square.png").convert("RGB"))
    model = janus_rs.JanusPro.load(str(TINY), device="cpu", dtype="f32")
    assert answers == [model.understand(pixels, prompt["3"]["inputs"]["question"], **inputs)]
    max_new = prompt["3"]["inputs"]["max_new_tokens"]
    assert env.ticks and env.ticks[-1] == (max_new, max_new)
    steps = [value for value, _ in env.ticks]
    assert steps == sorted(steps)


def test_understanding_answers_every_image_of_the_batch(env):
    from PIL import Image

    node = env.module.NODE_CLASS_MAPPINGS["JanusRSImageUnderstanding"]()
    model = env.module.NODE_CLASS_MAPPINGS["JanusRSModelLoader"]().load("tiny", "cpu", "f32")[0]
    pixels = [
        np.asarray(Image.open(TINY / "images" / name).convert("RGB").resize((32, 24)))
        for name in ("square.png", "wide.png")
    ]
    batch = np.stack(pixels).astype(np.float32) / 255.0
    kwargs = {"seed": 3, "temperature": 0.0, "top_p": 0.95, "max_new_tokens": 12}
    (answers,) = node.understand(model, batch, "What is this?", **kwargs)
    assert len(answers) == 2
    direct = [model.model.understand(p, "What is this?", **kwargs) for p in pixels]
    assert answers == direct
    assert env.ticks[-1] == (24, 24)  # both answers on one bar of 2 x max_new_tokens


def test_vq_roundtrip_workflow(env):
    prompt = harness.load_api_workflow("janus_rs_vq_roundtrip.api.json")
    result = env.run(prompt)
    codes = result["outputs"]["3"][0][0]
    assert codes.shape == (1, TINY_TOKENS) and np.issubdtype(codes.dtype, np.integer)
    images = image_array(result["outputs"]["4"][0][0])
    assert images.shape == (1, 16, 16, 3) and images.dtype == np.float32
    assert len(result["ui"]["5"][0]["images"]) == 1
    # The codes and pixels janus_rs gives for the loaded image.
    from PIL import Image

    model = janus_rs.JanusPro.load(str(TINY), device="cpu", dtype="f32")
    pixels = np.asarray(Image.open(TINY / "images" / "square.png").convert("RGB"))
    want = model.vq_encode(pixels)
    np.testing.assert_array_equal(np.asarray(codes)[0], want)
    decoded = model.vq_decode(want)
    assert np.array_equal(np.rint(images[0] * 255).astype(np.uint8), decoded)


@pytest.mark.parametrize("name", ["janus_rs_generate", "janus_rs_understand", "janus_rs_vq_roundtrip"])
def test_ui_workflows_match_api_workflows(env, name):
    ui = json.loads((EXAMPLES / f"{name}.json").read_text())
    api = json.loads((EXAMPLES / f"{name}.api.json").read_text())
    assert ui["version"] and {link[0] for link in ui["links"]} <= set(range(1, ui["last_link_id"] + 1))
    converted = harness.ui_to_api(ui, env.node_classes)
    assert converted == {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in api.items()}
    env.validate(harness.load_api_workflow(f"{name}.api.json"))
    # Saved before the loader had its optional quant widget: still the same.
    for node in ui["nodes"]:
        if node["type"] == "JanusRSModelLoader":
            node["widgets_values"] = node["widgets_values"][:3]
    assert harness.ui_to_api(ui, env.node_classes) == converted


# --- Cancel ----------------------------------------------------------------


def cancel_at(env, step):
    def on_tick(value, total):
        if value == step:
            harness.comfy.model_management.interrupt_current_processing(True)

    env.on_tick = on_tick


def test_interrupt_stops_generation(env):
    cancel_at(env, 5)
    with pytest.raises(harness.comfy.model_management.InterruptProcessingException):
        env.run(harness.load_api_workflow("janus_rs_generate.api.json"))
    assert env.ticks[-1][0] == 5 and len(env.ticks) == 5
    # The model is still usable after the cancelled run: the pixels of a direct call.
    env.on_tick, env.ticks = None, []
    prompt = harness.load_api_workflow("janus_rs_generate.api.json")
    images = image_array(env.run(prompt)["outputs"]["2"][0][0])
    assert env.ticks == [(step, TINY_TOKENS) for step in range(1, TINY_TOKENS + 1)]
    inputs = prompt["2"]["inputs"]
    direct = janus_rs.JanusPro.load(str(TINY), device="cpu", dtype="f32").generate_array(
        inputs["prompt"],
        parallel_size=inputs["batch_size"],
        cfg_weight=inputs["cfg_weight"],
        temperature=inputs["temperature"],
        seed=inputs["seed"],
    )
    assert np.array_equal(np.rint(images * 255).astype(np.uint8), direct)


def test_interrupt_stops_understanding(env):
    cancel_at(env, 3)
    with pytest.raises(harness.comfy.model_management.InterruptProcessingException):
        env.run(harness.load_api_workflow("janus_rs_understand.api.json"))
    assert [value for value, _ in env.ticks] == [1, 2, 3]


# --- images and packaging --------------------------------------------------


def test_image_conversion(env):
    images = sys.modules[env.module.__name__ + ".images"]
    batch = np.random.default_rng(0).random((2, 5, 7, 3), dtype=np.float32)
    out = images.to_uint8_list(batch)
    assert len(out) == 2 and out[0].shape == (5, 7, 3) and out[0].dtype == np.uint8
    assert np.array_equal(out[1], np.rint(batch[1] * 255).astype(np.uint8))
    # One image without its batch axis; gray replicated to RGB; alpha dropped.
    assert [a.tolist() for a in images.to_uint8_list(batch[0])] == [out[0].tolist()]
    gray = images.to_uint8_list(batch[..., :1])
    assert [g.tolist() for g in gray] == [np.repeat(o[..., :1], 3, axis=-1).tolist() for o in out]
    alpha = np.concatenate([batch, np.zeros_like(batch[..., :1])], axis=-1)
    assert [a.tolist() for a in images.to_uint8_list(alpha)] == [o.tolist() for o in out]
    with pytest.raises(ValueError):
        images.to_uint8_list(np.ones((4, 4), np.float32))
    back = images.from_uint8(np.stack(out))
    if images.torch_module() is None:
        assert isinstance(back, np.ndarray)
    back = image_array(back)
    assert back.dtype == np.float32 and back.shape == (2, 5, 7, 3)
    assert np.array_equal(images.to_uint8_list(back)[0], out[0])  # lossless round trip


def test_packaging_metadata():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    meta = tomllib.loads((PACK_DIR / "pyproject.toml").read_text())
    # One version for the workspace, the wheel and the pack.
    assert meta["project"]["version"] == janus_rs.__version__
    comfy = meta["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] and comfy["Icon"]
    lines = (PACK_DIR / "requirements.txt").read_text().splitlines()
    requirements = [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]
    names = [re.split(r"[<>=!~ \[;]", r, maxsplit=1)[0].lower() for r in requirements]
    assert names == ["huggingface_hub"] and names == [d.lower() for d in meta["project"]["dependencies"]]
    # Nothing that ComfyUI pins itself; janus-rs comes by hand until it is on PyPI.
    assert not {"numpy", "pillow", "torch", "janus-rs"} & set(names)
    for path in EXAMPLES.glob("*.json"):
        json.loads(path.read_text())