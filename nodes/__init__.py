"""ComfyUI-Janus-RS: Janus-Pro image understanding and text-to-image in
ComfyUI, computed by janus_rs (Rust; no torch model code, no transformers).

ComfyUI imports this folder from ``custom_nodes/`` and reads the mappings.
"""

from .janus_nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from .model_store import register_folder

register_folder()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
