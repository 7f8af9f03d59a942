import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness


@pytest.fixture
def env(tmp_path):
    """A fresh ComfyUI-like tree with the tiny model under models/Janus-Pro/tiny
    and example.png in input/, and the pack imported from custom_nodes/."""
    comfy_env = harness.ComfyEnv(tmp_path / "ComfyUI")
    comfy_env.install_model("tiny")
    comfy_env.add_input_image("example.png", harness.TINY / "images" / "square.png")
    comfy_env.load_pack()
    yield comfy_env
    harness.reset_comfy()
