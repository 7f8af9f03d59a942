"""Type stubs of janus_rs (the native module is janus_rs._janus_rs)."""

import os
import threading
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Protocol, Sequence, Union, final

import numpy as np
import numpy.typing as npt

try:
    from PIL.Image import Image as _PILImage
except ImportError:  # Pillow is optional
    _PILImage = Any  # type: ignore[misc,assignment]

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

__version__: str
DEFAULT_MODEL: str
"""The model load() uses when none is named: "deepseek-ai/Janus-Pro-1B"."""

class _Event(Protocol):
    def is_set(self) -> bool: ...

_ImageLike = Union[_PILImage, npt.NDArray[np.uint8], str, "os.PathLike[str]", bytes]
"""A PIL image, a numpy uint8 array (HxW, HxWx3 or HxWx4), a path or encoded image bytes."""

_Images = Union[_ImageLike, Sequence[_ImageLike], None]
_Message = Mapping[str, Any]
"""{"role": "<|User|>" | "<|Assistant|>", "content": str, "images": [_ImageLike, ...]}"""

_Progress = Callable[[int, int], Any]
"""progress(step, total), called after every generated token."""

_CancelEvent = Union[threading.Event, _Event]

def quantize(
    model: Union[str, "os.PathLike[str]"],
    out: Union[str, "os.PathLike[str]"],
    quant: str = "q4k",
    *,
    offline: bool = False,
    progress: Optional[_Progress] = None,
    cancel_event: Optional[_CancelEvent] = None,
) -> str:
    """Saves a quantised copy of a model folder or hub id into the folder `out` (config, tokenizer and a
    model.gguf of "q8_0" | "q4k" blocks) and returns the path of model.gguf; JanusPro.load(out) then loads it
    in that quantisation without quantising again. progress(step, total) is called after each tensor;
    cancel_event or Ctrl-C stops it, leaving no partial file."""

class JanusError(Exception):
    """Base class of every error raised by janus_rs."""

class Cancelled(JanusError):
    """A call stopped early: cancel(), its cancel_event, or a closed stream."""

class InputError(JanusError, ValueError):
    """An argument, image or config value is unusable."""

class MissingFileError(JanusError, FileNotFoundError):
    """A model folder, model file or image file does not exist."""

@final
class TextStream(Iterator[str]):
    """Pieces of an answer as they are generated; "".join(stream) is the answer."""

    def __iter__(self) -> "TextStream": ...
    def __next__(self) -> str: ...
    def close(self) -> None:
        """Stops the generation and ends the iteration."""
    def cancel(self) -> None:
        """Stops the generation; the next next() raises Cancelled."""
    def read(self) -> str:
        """The remaining pieces, joined."""
    def __enter__(self) -> "TextStream": ...
    def __exit__(self, *args: object) -> bool: ...

@final
class JanusPro:
    """A Janus-Pro model loaded by the Rust runtime; thread-safe, GIL released while computing."""

    @staticmethod
    def load(
        model: Union[str, "os.PathLike[str]"] = "deepseek-ai/Janus-Pro-1B",
        device: str = "cpu",
        dtype: str = "f32",
        quant: str = "none",
    ) -> "JanusPro":
        """Loads a model folder (released layout) or hub id; device "cpu" | "cuda[:N]" | "metal"; dtype "f32" | "bf16" | "f16"; quant "none" | "q8_0" | "q4k".

        A folder saved by quantize() loads in its own quantisation (quant "none" or that one)."""
    @property
    def source(self) -> str: ...
    @property
    def device(self) -> str: ...
    @property
    def dtype(self) -> str: ...
    @property
    def quant(self) -> str: ...
    @property
    def image_token_count(self) -> int:
        """VQ codes per generated image (576 for Janus-Pro)."""
    @property
    def generated_image_size(self) -> int:
        """Side in pixels of generated images (384 for Janus-Pro)."""
    @property
    def codebook_size(self) -> int: ...
    def understand(
        self,
        images: _Images,
        question: str,
        *,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        top_p: float = 0.95,
        seed: Optional[int] = None,
        progress: Optional[_Progress] = None,
        cancel_event: Optional[_CancelEvent] = None,
    ) -> str:
        """Answers a question about zero or more images (temperature 0: greedy)."""
    def chat(
        self,
        conversation: Sequence[_Message],
        *,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        top_p: float = 0.95,
        seed: Optional[int] = None,
        progress: Optional[_Progress] = None,
        cancel_event: Optional[_CancelEvent] = None,
    ) -> str:
        """Answers a conversation in the official format."""
    def stream_understand(
        self,
        images: _Images,
        question: str,
        *,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        top_p: float = 0.95,
        seed: Optional[int] = None,
        progress: Optional[_Progress] = None,
        cancel_event: Optional[_CancelEvent] = None,
    ) -> TextStream:
        """As understand(), as an iterator of text pieces."""
    def stream_chat(
        self,
        conversation: Sequence[_Message],
        *,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        top_p: float = 0.95,
        seed: Optional[int] = None,
        progress: Optional[_Progress] = None,
        cancel_event: Optional[_CancelEvent] = None,
    ) -> TextStream:
        """As chat(), as an iterator of text pieces."""
    def generate(
        self,
        prompt: str,
        *,
        parallel_size: int = 1,
        cfg_weight: float = 5.0,
        temperature: float = 1.0,
        seed: Optional[int] = None,
        progress: Optional[_Progress] = None,
        cancel_event: Optional[_CancelEvent] = None,
    ) -> List[_PILImage]:
        """Generates parallel_size RGB PIL images for a prompt (needs Pillow; temperature 0: argmax)."""
    def generate_many(
        self,
        prompts: Sequence[str],
        *,
        parallel_size: int = 1,
        batch_size: Optional[int] = None,
        cfg_weight: float = 5.0,
        temperature: float = 1.0,
        seed: Optional[int] = None,
        progress: Optional[_Progress] = None,
        cancel_event: Optional[_CancelEvent] = None,
    ) -> List[List[_PILImage]]:
        """parallel_size images for each prompt, one list per prompt, run batch_size images at a time (default
        parallel_size; on the CPU a batch may span prompts). Image k of the call is seeded from seed and k."""
    def understand_batch(
        self,
        images: Sequence[Union[_ImageLike, Sequence[_ImageLike]]],
        question: str,
        *,
        batch_size: int = 8,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        top_p: float = 0.95,
        seed: Optional[int] = None,
        progress: Optional[_Progress] = None,
        cancel_event: Optional[_CancelEvent] = None,
    ) -> List[Dict[str, Any]]:
        """The answer to question about each row of images, batch_size rows decoded together: one dict per row,
        {"answer": str, "token_ids": [int], "error": None} or {"answer": None, "token_ids": [], "error": str}."""
    def generate_batch(
        self,
        prompts: Sequence[str],
        *,
        seeds: Optional[Sequence[int]] = None,
        n: Union[int, Sequence[int], None] = None,
        batch_size: int = 8,
        cfg_weight: float = 5.0,
        temperature: float = 1.0,
        progress: Optional[_Progress] = None,
        cancel_event: Optional[_CancelEvent] = None,
    ) -> List[Dict[str, Any]]:
        """n images of each prompt, seeded as generate(prompt, seed=seeds[row]): one dict per prompt,
        {"codes": [[int]], "png": [bytes], "error": None} or {"codes": [], "png": [], "error": str}."""
    def generate_array(
        self,
        prompt: str,
        *,
        parallel_size: int = 1,
        cfg_weight: float = 5.0,
        temperature: float = 1.0,
        seed: Optional[int] = None,
        progress: Optional[_Progress] = None,
        cancel_event: Optional[_CancelEvent] = None,
    ) -> npt.NDArray[np.uint8]:
        """As generate(), as a uint8 array [parallel_size, S, S, 3]."""
    def generate_tokens(
        self,
        prompt: str,
        *,
        parallel_size: int = 1,
        cfg_weight: float = 5.0,
        temperature: float = 1.0,
        seed: Optional[int] = None,
        progress: Optional[_Progress] = None,
        cancel_event: Optional[_CancelEvent] = None,
    ) -> npt.NDArray[np.int64]:
        """The VQ codes generate() decodes: int64 [parallel_size, image_token_count]."""
    def vq_encode(self, image: _ImageLike) -> npt.NDArray[np.int64]:
        """VQ codes [image_token_count] of an image's centred square crop."""
    def vq_decode(self, codes: npt.ArrayLike) -> npt.NDArray[np.uint8]:
        """Pixels of VQ codes: [T] -> [S, S, 3], [n, T] -> [n, S, S, 3] (uint8)."""
    def cancel(self) -> int:
        """Cancels every call running on this model; returns how many."""
