"""janus_rs.ray on a local two-CPU Ray cluster: two actors give the
single-process results, a dead actor's rows are redone once, bad rows are
error rows, and the command line writes every row."""

import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
import ray
import ray.data

import janus_rs
import janus_rs.ray as jr

from conftest import IMAGE_NAMES


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def images(fixture_dir, tmp_path_factory):
    """40 image rows cycling the fixture's images, one of them corrupt."""
    folder = tmp_path_factory.mktemp("images")
    paths = [str(fixture_dir / "images" / f"{IMAGE_NAMES[i % len(IMAGE_NAMES)]}.png") for i in range(40)]
    corrupt = folder / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG but not really")
    paths[17] = str(corrupt)
    return paths


CAPTION = dict(question="What is in the image?", max_new_tokens=6, temperature=0.7, seed=2, batch_size=4)


def caption_rows(fixture_dir, images, captioner=jr.Captioner):
    ds = ray.data.from_items([{"id": i, "image": p} for i, p in enumerate(images)], override_num_blocks=10)
    ds = ds.map_batches(
        captioner,
        fn_constructor_kwargs=dict(model=str(fixture_dir), **CAPTION),
        batch_size=4,
        compute=ray.data.ActorPoolStrategy(size=2),
        num_cpus=1,
        batch_format="numpy",
    )
    return sorted(ds.take_all(), key=lambda r: r["id"])


def single_process_captions(model, images):
    """Each good image's answer and token ids from this process's model."""
    options = {k: v for k, v in CAPTION.items() if k not in ("question", "batch_size")}
    single = {}
    for p in set(images):
        if "corrupt" not in p:
            (row,) = model.understand_batch([p], CAPTION["question"], **options)
            assert row["answer"] == model.understand(p, CAPTION["question"], **options)
            single[p] = row
    return single


def test_two_actors_caption_as_one_process(cluster, model, fixture_dir, images):
    rows = caption_rows(fixture_dir, images)
    assert [r["id"] for r in rows] == list(range(40)), "every row once"
    single = single_process_captions(model, images)
    for r in rows:
        if r["id"] == 17:
            assert "not an image" in r["error"] and r["answer"] is None
        else:
            assert r["error"] is None
            assert r["answer"] == single[r["image"]]["answer"], r["id"]
            assert json.loads(r["token_ids"]) == single[r["image"]]["token_ids"], r["id"]


class DiesOnce(jr.Captioner):
    """Kills its worker process on its first batch while the marker file exists."""

    def __call__(self, batch):
        marker = os.environ.get("JANUS_TEST_DIE_MARKER")
        if marker and os.path.exists(marker):
            os.remove(marker)
            os._exit(1)
        return super().__call__(batch)


def test_a_dead_actor_is_restarted_and_every_row_comes_once(cluster, model, fixture_dir, images, tmp_path):
    marker = tmp_path / "die"
    marker.write_text("once")
    os.environ["JANUS_TEST_DIE_MARKER"] = str(marker)
    # Workers inherit the variable through the job's runtime environment.
    ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"JANUS_TEST_DIE_MARKER": str(marker)}})
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        rows = caption_rows(fixture_dir, images, DiesOnce)
    finally:
        del os.environ["JANUS_TEST_DIE_MARKER"]
    assert not marker.exists(), "an actor died"
    assert [r["id"] for r in rows] == list(range(40)), "every row exactly once"
    assert [r["id"] for r in rows if r["error"] is not None] == [17]
    # The redone rows are answered as the rest: as by one process.
    single = single_process_captions(model, images)
    assert all(r["answer"] == single[r["image"]]["answer"] for r in rows if r["id"] != 17)


def test_two_actors_render_as_one_process(cluster, model, fixture_dir):
    prompts = [f"a cat number {i}" for i in range(19)] + [""]
    ds = ray.data.from_items(
        [{"row": i, "prompt": p, "seed": 100 + i, "n": 1 + i % 2} for i, p in enumerate(prompts)],
        override_num_blocks=5,
    )
    ds = ds.map_batches(
        jr.Renderer,
        fn_constructor_kwargs=dict(model=str(fixture_dir), batch_size=3),
        batch_size=4,
        compute=ray.data.ActorPoolStrategy(size=2),
        num_cpus=1,
        batch_format="numpy",
    )
    rows = sorted(ds.take_all(), key=lambda r: r["row"])
    assert [r["row"] for r in rows] == list(range(20))
    assert "empty" in rows[19]["error"]
    for r in rows[:19]:
        i = r["row"]
        codes = model.generate_tokens(prompts[i], parallel_size=1 + i % 2, seed=100 + i)
        assert np.array_equal(np.array(json.loads(r["codes"])), codes), i
        pngs = np.stack([np.asarray(Image.open(io.BytesIO(bytes(p))).convert("RGB")) for p in r["png"]])
        assert np.array_equal(pngs, model.vq_decode(codes)), i


def test_the_command_line_writes_every_row(fixture_dir, tmp_path, model):
    folder = tmp_path / "imgs"
    shutil.copytree(fixture_dir / "images", folder)
    (folder / "broken.png").write_text("no")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a cat", "seed": 5, "n": 2}\nnot json\n{"prompt": "a dog"}\n')
    ray.shutdown()  # the command starts its own local cluster
    common = ["--model", str(fixture_dir), "--actors", "2", "--batch-size", "2"]
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    run = lambda *a: subprocess.run([sys.executable, "-m", "janus_rs.ray", *a, *common], env=env,  # noqa: E731
                                    capture_output=True, text=True, timeout=300)
    out = run("caption", "--input", str(folder), "--question", "What?", "--max-new-tokens", "4",
              "--output", str(tmp_path / "cap.jsonl"))
    assert out.returncode == 3, out.stderr[-2000:]
    lines = [json.loads(x) for x in (tmp_path / "cap.jsonl").read_text().splitlines()]
    lines.sort(key=lambda x: x["image"])
    assert [x["image"] for x in lines] == sorted(str(p) for p in folder.iterdir())
    for x in lines:
        if x["image"].endswith("broken.png"):
            assert "not an image" in x["error"] and x["answer"] is None
        else:  # greedy (the command's default), 4 tokens
            assert x["error"] is None
            assert x["answer"] == model.understand(x["image"], "What?", max_new_tokens=4), x["image"]
    out = run("generate", "--input", str(prompts), "--output", str(tmp_path / "gen"))
    assert out.returncode == 3, out.stderr[-2000:]
    manifest = [json.loads(x) for x in (tmp_path / "gen" / "manifest.jsonl").read_text().splitlines()]
    by_row = {m["row"]: m for m in manifest}
    assert by_row[1]["error"].startswith("not a JSON object")
    assert by_row[0]["files"] == ["00000-0.png", "00000-1.png"] and by_row[2]["seed"] == 2
    assert sorted(by_row) == [0, 1, 2] and by_row[1]["files"] == []
    # The written images: generate_array's with the row's seed and count
    # (the command's defaults: temperature 1, cfg weight 5).
    for row, prompt, seed, n in [(0, "a cat", 5, 2), (2, "a dog", 2, 1)]:
        m = by_row[row]
        assert m["error"] is None and m["files"] == [f"{row:05}-{k}.png" for k in range(n)], m
        written = np.stack([np.asarray(Image.open(tmp_path / "gen" / f).convert("RGB")) for f in m["files"]])
        assert np.array_equal(written, model.generate_array(prompt, parallel_size=n, seed=seed)), row


def test_a_parquet_of_image_bytes_is_captioned(fixture_dir, tmp_path, model):
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = ["wide", "tall", "small"]
    data = [(fixture_dir / "images" / f"{n}.png").read_bytes() for n in names] + [b"not an image"]
    pq.write_table(pa.table({"id": list(range(4)), "image": data}), tmp_path / "images.parquet")
    ray.shutdown()  # the command starts its own local cluster
    out = subprocess.run(
        [sys.executable, "-m", "janus_rs.ray", "caption", "--input", str(tmp_path / "images.parquet"),
         "--output", str(tmp_path / "cap.jsonl"), "--question", "What?", "--max-new-tokens", "5",
         "--model", str(fixture_dir), "--actors", "1", "--batch-size", "2"],
        env=dict(os.environ, RAY_AUTH_MODE="disabled"), capture_output=True, text=True, timeout=300)
    assert out.returncode == 3, out.stderr[-2000:]
    rows = sorted((json.loads(x) for x in (tmp_path / "cap.jsonl").read_text().splitlines()), key=lambda r: r["id"])
    assert [r["id"] for r in rows] == [0, 1, 2, 3]
    for r, blob in zip(rows[:3], data):
        assert r["answer"] == model.understand(blob, "What?", max_new_tokens=5)
        assert r["image"] is None, "image bytes are not written into the JSON lines"
    assert "image" in rows[3]["error"]
