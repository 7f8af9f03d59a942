"""The ComfyUI nodes of ComfyUI-Janus-RS. All model work is done by janus_rs."""

from __future__ import annotations

import numpy as np

from . import model_store
from .images import from_uint8, to_uint8_list
from .progress import ComfyProgress

CATEGORY = "Janus-RS"
MODEL = "JANUS_RS_MODEL"
CODES = "JANUS_RS_CODES"
SEED_MAX = 0xFFFFFFFFFFFFFFFF


def _seed_input(default: int = 42):
    return ("INT", {"default": default, "min": 0, "max": SEED_MAX, "control_after_generate": True})


class JanusRSModelLoader:
    """Loads a Janus-Pro model (folder under models/Janus-Pro, or a hub id
    downloaded there on first use)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (
                    model_store.model_choices(),
                    {"tooltip": "a folder under models/Janus-Pro, or a hub id (downloaded there on first use)"},
                ),
                "device": (list(model_store.DEVICES), {"default": "auto", "tooltip": "auto: ComfyUI's device"}),
                "dtype": (
                    list(model_store.DTYPES),
                    {"default": "auto", "tooltip": "auto: f32 on the CPU, bf16 on a GPU"},
                ),
            },
            # Optional, so workflows saved before it existed still load.
            "optional": {
                "quant": (
                    list(model_store.QUANTS),
                    {
                        "default": "none",
                        "tooltip": "quantise while loading: q8_0 (about 2.8 GB for the 1B model, "
                        "faster decoding) or q4k (about 1.9 GB); none keeps the exact weights. "
                        "A folder saved by `janus quantize` loads in its own quantisation with none",
                    },
                ),
            },
        }

    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "Loads a Janus-Pro model into janus_rs (cached by model, device, dtype and quant)."

    def load(self, model, device="auto", dtype="auto", quant="none"):
        return (model_store.load(model, device, dtype, quant),)


class JanusRSImageUnderstanding:
    """Answers a question about every image of the batch."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL,),
                "image": ("IMAGE",),
                "question": ("STRING", {"multiline": True, "default": "Describe this image in detail."}),
                "seed": _seed_input(),
                "temperature": (
                    "FLOAT",
                    {"default": 0.1, "min": 0.0, "max": 2.0, "step": 0.05, "tooltip": "0: greedy"},
                ),
                "top_p": ("FLOAT", {"default": 0.95, "min": 0.0, "max": 1.0, "step": 0.05}),
                "max_new_tokens": ("INT", {"default": 512, "min": 1, "max": 4096, "step": 1}),
            }
        }

    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("text",)
    OUTPUT_IS_LIST = (True,)
    FUNCTION = "understand"
    CATEGORY = CATEGORY
    DESCRIPTION = "Image understanding: one answer per image of the batch (a list of strings)."

    def understand(self, model, image, question, seed=42, temperature=0.1, top_p=0.95, max_new_tokens=512):
        images = to_uint8_list(image)
        progress = ComfyProgress(max_new_tokens, calls=len(images), follow_total=False)
        answers = []
        for index, pixels in enumerate(images):
            progress.start(index)
            answers.append(
                progress.run(
                    model.model.understand,
                    pixels,
                    question,
                    max_new_tokens=int(max_new_tokens),
                    temperature=float(temperature),
                    top_p=float(top_p),
                    seed=int(seed),
                )
            )
        progress.finish()
        return (answers,)


class JanusRSImageGeneration:
    """Text-to-image: a batch of images for one prompt."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL,),
                "prompt": (
                    "STRING",
                    {"multiline": True, "default": "A close-up photo of a red apple on a wooden table."},
                ),
                "seed": _seed_input(),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 16, "tooltip": "images generated in parallel"}),
                "cfg_weight": ("FLOAT", {"default": 5.0, "min": 1.0, "max": 10.0, "step": 0.5}),
                "temperature": (
                    "FLOAT",
                    {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05, "tooltip": "0: argmax"},
                ),
            }
        }

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    FUNCTION = "generate"
    CATEGORY = CATEGORY
    DESCRIPTION = "Text-to-image with Janus-Pro: IMAGE [batch, 384, 384, 3]."

    def generate(self, model, prompt, seed=42, batch_size=1, cfg_weight=5.0, temperature=1.0):
        progress = ComfyProgress(model.model.image_token_count)  # 576 for Janus-Pro
        pixels = progress.run(
            model.model.generate_array,
            prompt,
            parallel_size=int(batch_size),
            cfg_weight=float(cfg_weight),
            temperature=float(temperature),
            seed=int(seed),
        )
        return (from_uint8(pixels),)


class JanusRSVQEncode:
    """IMAGE -> VQ codes (centre square crop, resized to the generation size)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": (MODEL,), "image": ("IMAGE",)}}

    RETURN_TYPES = (CODES,)
    RETURN_NAMES = ("codes",)
    FUNCTION = "encode"
    CATEGORY = CATEGORY
    DESCRIPTION = "Encodes images into Janus-Pro's VQ codes ([batch, 576] for 384x384)."

    def encode(self, model, image):
        rows = [np.asarray(model.model.vq_encode(pixels)).reshape(-1) for pixels in to_uint8_list(image)]
        return (np.stack(rows).astype(np.int64),)


class JanusRSVQDecode:
    """VQ codes -> IMAGE."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": (MODEL,), "codes": (CODES,)}}

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    FUNCTION = "decode"
    CATEGORY = CATEGORY
    DESCRIPTION = "Decodes Janus-Pro VQ codes into images."

    def decode(self, model, codes):
        codes = np.asarray(codes)
        if codes.ndim == 1:
            codes = codes[None]
        return (from_uint8(model.model.vq_decode(codes)),)


NODE_CLASS_MAPPINGS = {
    "JanusRSModelLoader": JanusRSModelLoader,
    "JanusRSImageUnderstanding": JanusRSImageUnderstanding,
    "JanusRSImageGeneration": JanusRSImageGeneration,
    "JanusRSVQEncode": JanusRSVQEncode,
    "JanusRSVQDecode": JanusRSVQDecode,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "JanusRSModelLoader": "Janus-Pro Model Loader (janus-rs)",
    "JanusRSImageUnderstanding": "Janus-Pro Image Understanding (janus-rs)",
    "JanusRSImageGeneration": "Janus-Pro Image Generation (janus-rs)",
    "JanusRSVQEncode": "Janus-Pro VQ Encode (janus-rs)",
    "JanusRSVQDecode": "Janus-Pro VQ Decode (janus-rs)",
}
