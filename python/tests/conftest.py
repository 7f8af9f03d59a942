"""Shared fixtures: the tiny Janus-Pro test model of tests/fixtures/tiny and its
expected outputs (from the official Python implementation)."""

import json
import os
import struct
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import janus_rs

FIXTURE = Path(
    os.environ.get("JANUS_TINY_FIXTURE", Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "tiny")
)
IMAGE_NAMES = ["wide", "tall", "square", "small", "gray", "rgba"]


def read_safetensors(path):
    """The tensors of a .safetensors file as numpy arrays (no extra package needed)."""
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    dtypes = {"U8": np.uint8, "I64": np.int64, "F32": np.float32, "I32": np.int32}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        buf = data[8 + n + start : 8 + n + end]
        out[name] = np.frombuffer(buf, dtype=dtypes[info["dtype"]]).reshape(info["shape"])
    return out


@pytest.fixture(scope="session")
def fixture_dir():
    assert (FIXTURE / "config.json").exists(), f"tiny fixture not found at {FIXTURE}"
    return FIXTURE


@pytest.fixture(scope="session")
def model(fixture_dir):
    return janus_rs.JanusPro.load(str(fixture_dir))


@pytest.fixture(scope="session")
def expected(fixture_dir):
    return json.loads((fixture_dir / "expected.json").read_text())


@pytest.fixture(scope="session")
def expected_tensors(fixture_dir):
    return read_safetensors(fixture_dir / "expected.safetensors")


def absolute_conversation(conversation, fixture_dir):
    """The fixture's conversation with image paths made absolute."""
    return [
        {**m, "images": [str(fixture_dir / p) for p in m["images"]]} if "images" in m else dict(m)
        for m in conversation
    ]


def serve(fixture_dir, *flags):
    """Runs `janus serve` (JANUS_BIN) on a free loopback port with the model
    folder; yields its URL once the model is loaded, then stops it."""
    janus_bin = os.environ.get("JANUS_BIN")
    if not janus_bin:
        pytest.skip("JANUS_BIN (the janus binary) is set by python/test.sh")
    proc = subprocess.Popen(
        [janus_bin, "serve", "--model", str(fixture_dir), "--port", "0", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert "listening on http://" in line, line + proc.stderr.read()
        url = line.strip().rsplit(" ", 1)[-1]
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url + "/health")
                break
            except Exception:
                assert time.monotonic() < deadline, "the model never loaded"
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
