"""A small ComfyUI stand-in for the pack's tests.

- ``comfy_stub/`` holds ``folder_paths`` and ``comfy.utils`` /
  ``comfy.model_management`` stand-ins (no torch: the pack's IMAGE helpers
  then use numpy arrays where ComfyUI has torch tensors).
- ``ComfyEnv`` lays out a ComfyUI-like tree (``models/Janus-Pro``, ``input``,
  ``output``, ``custom_nodes``), links the pack into ``custom_nodes`` and
  imports it exactly as ComfyUI's ``nodes.load_custom_node`` does.
- ``ComfyEnv.run(prompt)`` validates and executes an API-format workflow the
  way ComfyUI's executor does (inputs checked against ``INPUT_TYPES``, only
  the nodes that output nodes need, list outputs mapped over downstream
  nodes), with stand-ins for the core nodes the examples use
  (LoadImage, SaveImage, PreviewAny).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import types
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PACK_DIR = HERE.parent
REPO = PACK_DIR.parent
TINY = REPO / "tests" / "fixtures" / "tiny"
EXAMPLES = PACK_DIR / "examples"
PACK_FOLDER_NAME = "ComfyUI-Janus-RS"
TINY_TOKENS = 16  # image tokens of the tiny fixture (576 for the real models)

sys.path.insert(0, str(HERE / "comfy_stub"))

# The stand-ins, importable as ComfyUI's own modules from here on.
import comfy.model_management  # noqa: E402
import comfy.utils  # noqa: E402
import folder_paths  # noqa: E402


# --- core nodes the example workflows use ---------------------------------


class LoadImage:
    @classmethod
    def INPUT_TYPES(cls):
        files = sorted(f for f in os.listdir(folder_paths.get_input_directory()) if f.endswith((".png", ".jpg")))
        return {"required": {"image": (files, {"image_upload": True})}}

    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load_image"
    CATEGORY = "image"

    def load_image(self, image):
        from PIL import Image

        with Image.open(folder_paths.get_annotated_filepath(image)) as img:
            rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
        return (rgb[None], np.zeros((1, 64, 64), dtype=np.float32))


class SaveImage:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})}}

    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True
    CATEGORY = "image"

    def save_images(self, images, filename_prefix="ComfyUI"):
        from PIL import Image

        out = []
        arr = np.asarray(images)
        for index, image in enumerate(arr):
            name = f"{filename_prefix}_{index:05}_.png"
            Image.fromarray(np.clip(255.0 * image, 0, 255).astype(np.uint8)).save(
                os.path.join(folder_paths.get_output_directory(), name)
            )
            out.append({"filename": name, "subfolder": "", "type": "output"})
        return {"ui": {"images": out}}


class PreviewAny:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"source": ("*", {})}}

    RETURN_TYPES = ()
    FUNCTION = "main"
    OUTPUT_NODE = True
    CATEGORY = "utils"

    def main(self, source=None):
        return {"ui": {"text": (source if isinstance(source, str) else json.dumps(source),)}}


CORE_NODES = {"LoadImage": LoadImage, "SaveImage": SaveImage, "PreviewAny": PreviewAny}


# --- the environment -------------------------------------------------------


class WorkflowError(Exception):
    """A prompt that ComfyUI's validation would refuse."""


def reset_comfy() -> None:
    """The stand-ins' global state as ComfyUI starts: no Cancel pending, CPU device."""
    comfy.model_management.interrupt_current_processing(False)
    comfy.model_management.torch_device = types.SimpleNamespace(type="cpu", index=None)
    comfy.utils.set_progress_bar_global_hook(None)


class ComfyEnv:
    def __init__(self, base: Path):
        self.base = Path(base)
        folder_paths.configure(str(self.base))
        self.custom_nodes = self.base / "custom_nodes"
        self.custom_nodes.mkdir(exist_ok=True)
        self.janus_dir = self.base / "models" / "Janus-Pro"
        self.janus_dir.mkdir(parents=True, exist_ok=True)
        self.ticks: list[tuple[int, int]] = []
        self.on_tick = None  # called with (value, total) after recording
        reset_comfy()
        comfy.utils.set_progress_bar_global_hook(self._hook)
        self.module = None

    def _hook(self, value, total, preview, node_id=None):
        self.ticks.append((value, total))
        if self.on_tick is not None:
            self.on_tick(value, total)

    def install_model(self, name: str = "tiny", src: Path = TINY) -> Path:
        target = self.janus_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(src, target_is_directory=True)
        return target

    def add_input_image(self, name: str, src: Path) -> None:
        (self.base / "input" / name).write_bytes(Path(src).read_bytes())

    def load_pack(self):
        """Imports the pack as ComfyUI's ``load_custom_node`` does: the folder
        in ``custom_nodes/``, its ``__init__.py`` run under a module name made
        from the path, then ``NODE_CLASS_MAPPINGS`` read."""
        module_path = str(self.custom_nodes / PACK_FOLDER_NAME)
        if not os.path.exists(module_path):
            os.symlink(PACK_DIR, module_path, target_is_directory=True)
        sys_module_name = module_path.replace(".", "_x_")
        spec = importlib.util.spec_from_file_location(sys_module_name, os.path.join(module_path, "__init__.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[sys_module_name] = module
        spec.loader.exec_module(module)
        self.module = module
        return module

    @property
    def node_classes(self) -> dict:
        return {**CORE_NODES, **self.module.NODE_CLASS_MAPPINGS}

    # --- execution, after ComfyUI's execution.py ---

    def validate(self, prompt: dict) -> None:
        classes = self.node_classes
        for node_id, node in prompt.items():
            cls = classes.get(node["class_type"])
            if cls is None:
                raise WorkflowError(f"node {node_id}: unknown class_type {node['class_type']!r}")
            spec = cls.INPUT_TYPES()
            declared = {**spec.get("required", {}), **spec.get("optional", {})}
            for name in node["inputs"]:
                if name not in declared:
                    raise WorkflowError(f"node {node_id}: unexpected input {name!r}")
            for name, (kind, *rest) in spec.get("required", {}).items():
                if name not in node["inputs"]:
                    raise WorkflowError(f"node {node_id}: required input {name!r} missing")
            for name, value in node["inputs"].items():
                kind, *rest = declared[name]
                opts = rest[0] if rest else {}
                if isinstance(value, list):  # a link [node_id, slot]
                    src_id, slot = value
                    if src_id not in prompt:
                        raise WorkflowError(f"node {node_id}: input {name!r} links to missing node {src_id}")
                    src_cls = classes[prompt[src_id]["class_type"]]
                    produced = src_cls.RETURN_TYPES[slot]
                    if kind != "*" and produced != kind:
                        raise WorkflowError(f"node {node_id}: input {name!r} wants {kind}, gets {produced}")
                    continue
                if isinstance(kind, list):
                    if value not in kind:
                        raise WorkflowError(f"node {node_id}: {name}={value!r} is not one of {kind}")
                elif kind in ("INT", "FLOAT"):
                    if isinstance(value, bool) or not isinstance(value, (int, float)):
                        raise WorkflowError(f"node {node_id}: {name}={value!r} is not a number")
                    if kind == "INT" and value != int(value):
                        raise WorkflowError(f"node {node_id}: {name}={value!r} is not an integer")
                    if "min" in opts and value < opts["min"] or "max" in opts and value > opts["max"]:
                        raise WorkflowError(f"node {node_id}: {name}={value!r} out of range")
                elif kind == "STRING":
                    if not isinstance(value, str):
                        raise WorkflowError(f"node {node_id}: {name}={value!r} is not a string")
                else:
                    raise WorkflowError(f"node {node_id}: input {name!r} of type {kind} needs a link")
        if not any(getattr(classes[n["class_type"]], "OUTPUT_NODE", False) for n in prompt.values()):
            raise WorkflowError("the prompt has no output node")

    def run(self, prompt: dict) -> dict:
        """Executes a prompt; returns {"outputs": {id: [list per slot]}, "ui": {id: ui}}."""
        self.validate(prompt)
        classes = self.node_classes
        outputs: dict = {}
        ui: dict = {}

        def execute(node_id: str):
            if node_id in outputs:
                return outputs[node_id]
            node = prompt[node_id]
            cls = classes[node["class_type"]]
            inputs = {}
            for name, value in node["inputs"].items():
                if isinstance(value, list):
                    src_id, slot = value
                    inputs[name] = execute(src_id)[slot]
                else:
                    inputs[name] = [value]
            comfy.model_management.throw_exception_if_processing_interrupted()
            obj = cls()
            fn = getattr(obj, cls.FUNCTION)
            if getattr(cls, "INPUT_IS_LIST", False):
                calls = [inputs]
            else:
                count = max((len(v) for v in inputs.values()), default=1)
                calls = [{k: v[min(i, len(v) - 1)] for k, v in inputs.items()} for i in range(count)]
            is_list = getattr(cls, "OUTPUT_IS_LIST", (False,) * len(cls.RETURN_TYPES))
            results = [[] for _ in cls.RETURN_TYPES]
            for kwargs in calls:
                ret = fn(**kwargs)
                if isinstance(ret, dict):
                    if "ui" in ret:
                        ui.setdefault(node_id, []).append(ret["ui"])
                    ret = ret.get("result", ())
                for slot, value in enumerate(ret):
                    if is_list[slot]:
                        results[slot].extend(value)
                    else:
                        results[slot].append(value)
            outputs[node_id] = results
            return results

        for node_id, node in prompt.items():
            if getattr(classes[node["class_type"]], "OUTPUT_NODE", False):
                execute(node_id)
        return {"outputs": outputs, "ui": ui}


# --- workflows -------------------------------------------------------------


def load_api_workflow(name: str, model: str = "tiny") -> dict:
    """An example API workflow with its loader pointed at ``model``."""
    prompt = json.loads((EXAMPLES / name).read_text())
    for node in prompt.values():
        if node["class_type"] == "JanusRSModelLoader":
            node["inputs"]["model"] = model
    return prompt


def ui_to_api(workflow: dict, node_classes: dict) -> dict:
    """A UI-format workflow as the API prompt the frontend would queue:
    links become [node_id, slot], widget values are matched to the widget
    inputs in ``INPUT_TYPES`` order (the seed's control_after_generate value
    after it skipped), as ComfyUI's frontend does."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) != 0:
            continue
        cls = node_classes[node["type"]]
        spec = cls.INPUT_TYPES()
        declared = {**spec.get("required", {}), **spec.get("optional", {})}
        inputs = {}
        linked = {}
        for socket in node.get("inputs", []):
            if socket.get("link") is not None:
                link = links[socket["link"]]
                linked[socket["name"]] = [str(link[1]), link[2]]
        values = list(node.get("widgets_values", []))
        for name, (kind, *rest) in declared.items():
            opts = rest[0] if rest else {}
            if name in linked:
                inputs[name] = linked[name]
                if not (isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN")):
                    continue
                values.pop(0)  # a widget converted to an input keeps its slot
                continue
            if isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN"):
                if not values and name in spec.get("optional", {}):
                    # Saved before this optional widget existed: the
                    # frontend gives it its default.
                    inputs[name] = opts.get("default", kind[0] if isinstance(kind, list) else None)
                    continue
                inputs[name] = values.pop(0)
                if opts.get("control_after_generate") or (kind == "INT" and name in ("seed", "noise_seed")):
                    values.pop(0)
                if isinstance(kind, list) and opts.get("image_upload"):
                    values.pop(0)  # the upload button's value
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt
