"""Loading a hub id: the download path against tests/fake_hub.py, a stand-in
of the Hugging Face hub's HTTP API on loopback reached through HF_ENDPOINT
(as a mirror is), with HF_TOKEN."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import janus_rs

FAKE_HUB = Path(__file__).resolve().parents[2] / "tests" / "fake_hub.py"
FILES = [
    "config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "processor_config.json", "preprocessor_config.json", "model.safetensors",
]


@pytest.fixture
def hub(tmp_path, fixture_dir):
    """The tiny model served as acme/tiny-janus, token "secret"; yields its URL."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in FILES:
        shutil.copy(fixture_dir / name, repo / name)
    proc = subprocess.Popen(
        [sys.executable, str(FAKE_HUB), "--repo", f"acme/tiny-janus={repo}", "--token", "secret",
         "--fail-once", "model.safetensors"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        yield f"http://127.0.0.1:{proc.stdout.readline().strip()}"
    finally:
        proc.kill()
        proc.wait()


def test_a_hub_id_downloads_from_hf_endpoint_with_hf_token(hub, tmp_path, monkeypatch, expected, fixture_dir):
    for var in ["HF_HUB_OFFLINE", "HF_HOME", "HF_TOKEN_PATH"]:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", hub)
    monkeypatch.setenv("HF_TOKEN", "secret")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    c = expected["cases"]["understand.single"]
    question = c["conversation"][0]["content"].replace("<image_placeholder>\n", "")
    image = fixture_dir / c["conversation"][0]["images"][0]
    model = janus_rs.JanusPro.load("acme/tiny-janus")
    assert model.understand(image, question, max_new_tokens=12) == c["answer"]

    with pytest.raises(janus_rs.InputError, match=r'hub model "acme/missing" \(or one of its files\) was not found at ' + hub):
        janus_rs.JanusPro.load("acme/missing")
    monkeypatch.setenv("HF_TOKEN", "wrong")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "other-cache"))
    with pytest.raises(janus_rs.InputError, match="refused access to hub model \"acme/tiny-janus\": set HF_TOKEN"):
        janus_rs.JanusPro.load("acme/tiny-janus")
