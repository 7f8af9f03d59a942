"""Janus-Pro image understanding and text-to-image generation, in Rust.

>>> import janus_rs
>>> model = janus_rs.JanusPro.load("deepseek-ai/Janus-Pro-1B")   # or a local folder
>>> model.understand("cat.png", "What is in this image?")
>>> images = model.generate("A red apple on a wooden table", parallel_size=4, seed=7)
>>> janus_rs.quantize("deepseek-ai/Janus-Pro-1B", "janus-pro-1b-q4k", "q4k")  # loads fast later

See ``help(janus_rs.JanusPro)``.
"""

from ._janus_rs import (
    DEFAULT_MODEL,
    Cancelled,
    InputError,
    JanusError,
    JanusPro,
    MissingFileError,
    TextStream,
    __version__,
    quantize,
)

__all__ = [
    "DEFAULT_MODEL",
    "Cancelled",
    "InputError",
    "JanusError",
    "JanusPro",
    "MissingFileError",
    "TextStream",
    "__version__",
    "quantize",
]
