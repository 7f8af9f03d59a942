"""Stand-in for ComfyUI's ``comfy`` package: ``comfy.utils`` and
``comfy.model_management`` as far as node packs use them, without torch."""
