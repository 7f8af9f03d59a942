"""Conversions between ComfyUI's IMAGE and the uint8 arrays janus_rs takes.

ComfyUI passes images as torch tensors ``[B, H, W, C]`` float32 in 0..1.
Everything in this pack works on numpy; torch is touched only here, at the
edges:

- ``to_uint8_list`` accepts a torch tensor *or* anything numpy can read
  (a float array ``[B, H, W, C]`` or ``[H, W, C]``) and returns one
  ``H x W x 3`` uint8 array per image of the batch.
- ``from_uint8`` turns ``[B, H, W, 3]`` uint8 back into an IMAGE: a torch
  tensor when torch can be imported (always, inside ComfyUI), else the
  float32 numpy array itself.

So the nodes run unchanged in ComfyUI and in the test harness, where no
torch is installed and numpy arrays stand in for tensors.
"""

from __future__ import annotations

import numpy as np

_TORCH = None
_TORCH_LOOKED_UP = False


def torch_module():
    """torch if it can be imported (ComfyUI always has it), else None."""
    global _TORCH, _TORCH_LOOKED_UP
    if not _TORCH_LOOKED_UP:
        try:
            import torch
        except ImportError:
            torch = None
        _TORCH, _TORCH_LOOKED_UP = torch, True
    return _TORCH


def as_numpy(value) -> np.ndarray:
    """A torch tensor (any device, any float dtype) or array-like as numpy."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        tensor = value.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.float()  # bf16/f16 have no numpy dtype
        return tensor.numpy()
    return np.asarray(value)


def to_uint8_list(images) -> list[np.ndarray]:
    """An IMAGE batch as a list of contiguous ``H x W x 3`` uint8 arrays."""
    arr = as_numpy(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        raise ValueError(f"expected an IMAGE batch [B, H, W, C], got shape {tuple(arr.shape)}")
    if arr.shape[0] == 0:
        raise ValueError("the IMAGE batch is empty")
    channels = arr.shape[-1]
    if channels == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif channels == 4:
        arr = arr[..., :3]
    elif channels != 3:
        raise ValueError(f"expected 1, 3 or 4 channels, got {channels}")
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    return [np.ascontiguousarray(a) for a in arr]


def from_uint8(pixels):
    """``[B, H, W, 3]`` (or ``[H, W, 3]``) uint8 as an IMAGE, float32 in 0..1."""
    arr = np.asarray(pixels)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected [B, H, W, 3] pixels, got shape {tuple(arr.shape)}")
    out = np.ascontiguousarray(arr, dtype=np.float32) / np.float32(255.0)
    torch = torch_module()
    return torch.from_numpy(out) if torch is not None else out
