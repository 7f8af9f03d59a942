"""Where Janus-Pro models live, and the loader's cache.

Model folders are looked up under ComfyUI's ``models/Janus-Pro/`` (the folder
other Janus node packs use), registered with ``folder_paths`` under the name
``Janus-Pro`` so that ``extra_model_paths.yaml`` entries (``Janus-Pro: path``)
add more places. A model folder is any folder holding a ``config.json``, one
or two levels down (``Janus-Pro/Janus-Pro-1B`` or ``Janus-Pro/deepseek-ai/Janus-Pro-1B``).

The hub ids ``deepseek-ai/Janus-Pro-1B`` and ``deepseek-ai/Janus-Pro-7B`` are
always offered: they resolve to ``Janus-Pro/Janus-Pro-1B`` (…-7B) when that
folder exists, and are downloaded there on first use otherwise.

Loaded models are cached by (model folder, device, dtype, quant) in a weak-value
map: the entry lives exactly as long as something (ComfyUI's output cache of
the loader node) holds the ``JanusRSModel``, so unloading the node's output
frees the model.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import sys
import threading
import weakref

import folder_paths

log = logging.getLogger("ComfyUI-Janus-RS")

FOLDER_NAME = "Janus-Pro"
HUB_MODELS = ("deepseek-ai/Janus-Pro-1B", "deepseek-ai/Janus-Pro-7B")
DEVICES = ("auto", "cpu", "cuda", "metal")
DTYPES = ("auto", "f32", "bf16", "f16")
QUANTS = ("none", "q8_0", "q4k")
_PARTIAL_DIR = ".downloading"


def register_folder() -> None:
    """Adds ``models/Janus-Pro`` as the default ``Janus-Pro`` folder, keeping
    any paths ``extra_model_paths.yaml`` already registered for that name."""
    default = os.path.join(folder_paths.models_dir, FOLDER_NAME)
    try:
        folder_paths.add_model_folder_path(FOLDER_NAME, default, is_default=True)
    except TypeError:  # ComfyUI before `is_default`
        paths = folder_paths.folder_names_and_paths.setdefault(FOLDER_NAME, ([], set()))[0]
        if default in paths:
            paths.remove(default)
        paths.insert(0, default)


def model_roots() -> list[str]:
    """Every registered ``Janus-Pro`` folder, the default one first."""
    try:
        return list(folder_paths.get_folder_paths(FOLDER_NAME))
    except KeyError:
        return [os.path.join(folder_paths.models_dir, FOLDER_NAME)]


def _is_model_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json"))


def _subdirs(path: str) -> list[str]:
    try:
        names = os.listdir(path)
    except OSError:
        return []
    return sorted(n for n in names if not n.startswith(".") and os.path.isdir(os.path.join(path, n)))


def local_models() -> dict[str, str]:
    """Model name (``/``-separated, relative to its root) -> folder path."""
    found: dict[str, str] = {}
    for root in model_roots():
        for name in _subdirs(root):
            path = os.path.join(root, name)
            if _is_model_dir(path):
                found.setdefault(name, path)
                continue
            for inner in _subdirs(path):
                if _is_model_dir(os.path.join(path, inner)):
                    found.setdefault(f"{name}/{inner}", os.path.join(path, inner))
    return found


def model_choices() -> list[str]:
    """The loader's ``model`` combo: local model folders, then the hub ids."""
    local = sorted(local_models())
    return local + [hub for hub in HUB_MODELS if hub not in local]


def _hub_target(hub_id: str) -> str | None:
    """An existing folder for a hub id: ``Janus-Pro/<name>`` in any root."""
    name = hub_id.split("/", 1)[1]
    for root in model_roots():
        for candidate in (os.path.join(root, name), os.path.join(root, *hub_id.split("/"))):
            if _is_model_dir(candidate):
                return candidate
    return None


def resolve_model(choice: str) -> str:
    """The folder (or, failing a download, hub id) to load for a combo value."""
    local = local_models()
    if choice in local:
        return local[choice]
    if choice in HUB_MODELS:
        existing = _hub_target(choice)
        return existing if existing is not None else download(choice)
    raise ValueError(
        f"model {choice!r} not found: put Janus-Pro model folders under "
        f"{' or '.join(model_roots())}, or pick one of {', '.join(HUB_MODELS)}"
    )


def download(hub_id: str) -> str:
    """Downloads a hub model into ``<default Janus-Pro folder>/<name>``.

    The files go to ``.downloading/<name>`` first (resumed if interrupted) and
    the folder is moved into place once complete, so a half-downloaded model
    never shows up in the model list. Without ``huggingface_hub`` the hub id
    itself is returned, for janus_rs to fetch into the Hugging Face cache.
    """
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        log.warning("huggingface_hub is not installed; letting janus_rs fetch %s", hub_id)
        return hub_id
    name = hub_id.split("/", 1)[1]
    root = model_roots()[0]
    final = os.path.join(root, name)
    partial = os.path.join(root, _PARTIAL_DIR, name)
    os.makedirs(partial, exist_ok=True)
    log.info("downloading %s into %s", hub_id, final)
    try:
        snapshot_download(
            repo_id=hub_id,
            local_dir=partial,
            allow_patterns=["*.json", "*.safetensors", "*.bin", "*.gguf", "*.txt", "*.model"],
        )
    except Exception as exc:
        raise RuntimeError(
            f"could not download {hub_id} ({exc}); without network access, put the model folder at {final}"
        ) from exc
    if not _is_model_dir(partial):
        raise RuntimeError(f"the download of {hub_id} has no config.json")
    if os.path.exists(final):  # an empty or broken folder in the way
        shutil.rmtree(final)
    os.replace(partial, final)
    return final


def auto_device() -> str:
    """ComfyUI's device as a janus_rs device name (cpu with ``--cpu``)."""
    try:
        import comfy.model_management as mm

        device = mm.get_torch_device()
    except Exception:  # no usable ComfyUI device: run on the CPU
        return "cpu"
    kind = getattr(device, "type", str(device))
    if kind == "cuda":
        index = getattr(device, "index", None)
        return "cuda" if not index else f"cuda:{index}"
    if kind == "mps":
        return "metal"
    return "cpu"


def resolve_dtype(dtype: str, device: str) -> str:
    if dtype != "auto":
        return dtype
    return "f32" if device == "cpu" else "bf16"


class JanusRSModel:
    """What a ``JANUS_RS_MODEL`` socket carries: a loaded ``janus_rs.JanusPro``
    and where it came from. Dropping the last reference frees the model."""

    def __init__(self, model, name: str, path: str, device: str, dtype: str, quant: str = "none"):
        self.model = model
        self.name = name
        self.path = path
        self.device = device
        self.dtype = dtype
        self.quant = quant

    def __repr__(self) -> str:
        return (
            f"JanusRSModel({self.name!r}, device={self.device!r}, dtype={self.dtype!r}, "
            f"quant={self.quant!r})"
        )


_cache: weakref.WeakValueDictionary[tuple, JanusRSModel] = weakref.WeakValueDictionary()
_lock = threading.RLock()  # re-entered by the CPU fallback


# The janus-rs releases this pack works with: the pack and the wheel share
# one version (scripts/release-notes checks it), and a minor release may
# change the API.
_MIN_VERSION, _MAX_VERSION = (0, 1), (0, 2)
JANUS_RS_REQUIREMENT = ">={}.{},<{}.{}".format(*_MIN_VERSION, *_MAX_VERSION)


def install_hint() -> str:
    """The command that installs a fitting janus-rs into ComfyUI's Python."""
    return (
        f'"{sys.executable}" -m pip install "janus-rs{JANUS_RS_REQUIREMENT}" '
        "(a wheel from the janus-rs releases page, or `pip install ./python` "
        "in a janus-rs checkout, until janus-rs is on PyPI)"
    )


def _version_tuple(version: str) -> tuple:
    parts = []
    for part in version.split(".")[:2]:
        digits = "".join(itertools.takewhile(str.isdigit, part))
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def janus_rs_module():
    try:
        import janus_rs
    except ImportError as exc:
        raise RuntimeError(
            "ComfyUI-Janus-RS needs the Python package janus-rs (module janus_rs), "
            f"which this Python cannot import ({exc}): run {install_hint()}"
        ) from exc
    version = getattr(janus_rs, "__version__", "0")
    if not _MIN_VERSION <= _version_tuple(version) < _MAX_VERSION:
        raise RuntimeError(
            f"ComfyUI-Janus-RS needs janus-rs{JANUS_RS_REQUIREMENT}, "
            f"but janus-rs {version} is installed: run {install_hint()}"
        )
    return janus_rs


def load(choice: str, device: str = "auto", dtype: str = "auto", quant: str = "none") -> JanusRSModel:
    """Loads (or returns the cached) model for a loader node's inputs."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r} (expected one of {', '.join(DEVICES)})")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r} (expected one of {', '.join(DTYPES)})")
    if quant not in QUANTS:
        raise ValueError(f"unknown quant {quant!r} (expected one of {', '.join(QUANTS)})")
    janus_rs = janus_rs_module()
    path = resolve_model(choice)
    real_device = auto_device() if device == "auto" else device
    real_dtype = resolve_dtype(dtype, real_device)
    key = (os.path.abspath(path) if os.path.isdir(path) else path, real_device, real_dtype, quant)
    with _lock:
        cached = _cache.get(key)
        if cached is not None:
            return cached
        try:
            model = janus_rs.JanusPro.load(path, device=real_device, dtype=real_dtype, quant=quant)
        except Exception as exc:
            if device != "auto" or real_device == "cpu":
                raise
            # janus_rs built without this GPU backend: the CPU always works.
            log.warning("loading %s on %s failed (%s); using the CPU", choice, real_device, exc)
            return load(choice, "cpu", "f32" if dtype == "auto" else dtype, quant)
        # A folder saved by `janus quantize` loads in its own quantisation.
        real_quant = model.quant
        wrapped = JanusRSModel(model, choice, path, real_device, real_dtype, real_quant)
        _cache[key] = wrapped
        log.info("loaded %s (%s, %s, quant %s)", choice, real_device, real_dtype, real_quant)
        weakref.finalize(
            wrapped, log.info, "freed %s (%s, %s, quant %s)", choice, real_device, real_dtype, real_quant
        )
        return wrapped


def cached_models() -> list[JanusRSModel]:
    """The models alive now (for tests and diagnostics)."""
    return list(_cache.values())
