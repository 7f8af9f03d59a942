"""Batch inference on a Ray cluster with Ray Data: caption images and render
prompts with janus_rs model actors (no torch in the workers).

Needs Ray Data (``pip install 'janus-rs[ray]'``). The classes are callables
for ``ray.data.Dataset.map_batches``; each actor loads the model once::

    import ray, janus_rs.ray as jr
    ds = ray.data.from_items([{"image": p} for p in paths])
    ds = ds.map_batches(jr.Captioner, fn_constructor_kwargs={"model": "deepseek-ai/Janus-Pro-1B",
                        "question": "Describe this image."}, batch_size=8,
                        compute=ray.data.ActorPoolStrategy(size=4))

A bad row (an unreadable image, an empty prompt) gets an ``error`` column and
the job goes on. Ray restarts an actor that dies and runs its batches again,
so every input row is in the output once. The command line reads a folder,
list, parquet or prompt file and writes JSON lines, parquet or images::

    python -m janus_rs.ray caption --input photos/ --question "Describe this image." \\
        --output captions.jsonl --actors 4 [--address auto]
    python -m janus_rs.ray generate --input prompts.jsonl --output renders/ --actors 4
"""

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import numpy as np

import janus_rs

__all__ = ["Captioner", "Renderer", "read_images", "read_prompts", "main"]

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}


def _column(values: Any) -> List[Any]:
    """A batch column as a list of plain Python values (Ray hands numpy arrays)."""
    out = []
    for v in values:
        if isinstance(v, np.generic):
            v = v.item()
        out.append(v)
    return out


def _error(value: Any) -> Optional[str]:
    """An error column's value: its text, or None for a row without one
    (Ray hands a column of only missing values as NaN, not None)."""
    return value if isinstance(value, str) else None


def _object_array(values: List[Any]) -> np.ndarray:
    """A column of ragged values (lists, bytes, None) that numpy must not broadcast."""
    arr = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        arr[i] = v
    return arr


class Captioner:
    """Answers ``question`` about the image of every row: adds ``answer``,
    ``token_ids`` (as JSON text) and ``error`` columns to the batch.

    The image column holds paths, encoded image bytes or uint8 arrays (as
    ``ray.data.read_images`` gives). Options as ``JanusPro.understand``.
    """

    def __init__(
        self,
        model: str = janus_rs.DEFAULT_MODEL,
        *,
        question: str,
        device: str = "cpu",
        dtype: str = "f32",
        quant: str = "none",
        image_column: str = "image",
        batch_size: int = 8,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        top_p: float = 0.95,
        seed: Optional[int] = None,
    ) -> None:
        self.model = janus_rs.JanusPro.load(model, device=device, dtype=dtype, quant=quant)
        self.question = question
        self.image_column = image_column
        self.options: Dict[str, Any] = dict(
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
        )

    def __call__(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        images = _column(batch[self.image_column])
        results = self.model.understand_batch(images, self.question, **self.options)
        out = {k: v for k, v in batch.items()}
        out["answer"] = _object_array([r["answer"] for r in results])
        out["token_ids"] = _object_array([None if r["error"] else json.dumps(r["token_ids"]) for r in results])
        out["error"] = _object_array([r["error"] for r in results])
        return out


class Renderer:
    """Generates the images of every row's prompt: adds ``png`` (a list of
    PNG files as bytes), ``codes`` (JSON text) and ``error`` columns.

    A row's ``seed`` and ``n`` columns, when present, override ``seed`` and
    ``n``; image i of a row equals ``generate(prompt, seed=seed)``'s image i.
    A row whose ``error`` column is already set (a malformed input line) is
    not rendered and keeps its error.
    """

    def __init__(
        self,
        model: str = janus_rs.DEFAULT_MODEL,
        *,
        device: str = "cpu",
        dtype: str = "f32",
        quant: str = "none",
        prompt_column: str = "prompt",
        seed: int = 0,
        n: int = 1,
        batch_size: int = 8,
        cfg_weight: float = 5.0,
        temperature: float = 1.0,
    ) -> None:
        self.model = janus_rs.JanusPro.load(model, device=device, dtype=dtype, quant=quant)
        self.prompt_column = prompt_column
        self.seed = seed
        self.n = n
        self.options: Dict[str, Any] = dict(batch_size=batch_size, cfg_weight=cfg_weight, temperature=temperature)

    def __call__(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        prompts = [str(p) for p in _column(batch[self.prompt_column])]
        seeds = _column(batch["seed"]) if "seed" in batch else [self.seed] * len(prompts)
        counts = _column(batch["n"]) if "n" in batch else [self.n] * len(prompts)
        given = [_error(e) for e in _column(batch["error"])] if "error" in batch else [None] * len(prompts)
        run = [i for i, e in enumerate(given) if e is None]
        rendered = self.model.generate_batch(
            [prompts[i] for i in run], seeds=[seeds[i] for i in run], n=[counts[i] for i in run], **self.options
        )
        results: List[Dict[str, Any]] = [{"png": [], "codes": [], "error": e} for e in given]
        for i, r in zip(run, rendered):
            results[i] = r
        out = {k: v for k, v in batch.items()}
        out["png"] = _object_array([r["png"] for r in results])
        out["codes"] = _object_array([None if r["error"] else json.dumps(r["codes"]) for r in results])
        out["error"] = _object_array([r["error"] for r in results])
        return out


def read_images(spec: str) -> List[Dict[str, Any]]:
    """Rows {"image": path} of a folder (subfolders included, sorted) or a
    list file (one path per line, relative to the list)."""
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        return [{"image": str(p)} for p in files]
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [{"image": str(path.parent / line)} for line in lines if line and not line.startswith("#")]


def read_prompts(path: str, seed: int = 0, n: int = 1) -> List[Dict[str, Any]]:
    """Rows {"row", "prompt", "seed", "n"} of a prompt file: ``.jsonl`` lines
    {"prompt", "seed"?, "n"?} or one prompt per line; a row without a seed
    takes ``seed`` plus its row number, as ``janus batch generate``. A
    malformed line becomes a row with an ``error``."""
    rows = []
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    for i, line in enumerate(lines):
        row: Dict[str, Any] = {"row": i, "prompt": line.strip(), "seed": seed + i, "n": n, "error": None}
        if path.endswith(".jsonl"):
            try:
                item = json.loads(line)
                row["prompt"] = str(item["prompt"])
                row["seed"] = int(item.get("seed", seed + i))
                row["n"] = int(item.get("n", n))
            except (ValueError, KeyError, TypeError, AttributeError):
                row.update(prompt="", error='not a JSON object with a "prompt"')
        rows.append(row)
    return rows


def _dataset(rows: List[Dict[str, Any]], spec: str) -> Any:
    import ray.data

    if spec.endswith(".parquet") or (Path(spec).is_dir() and any(Path(spec).glob("*.parquet"))):
        return ray.data.read_parquet(spec)
    return ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), 64)))


def _write_jsonl(rows: Iterable[Dict[str, Any]], path: str, drop: Iterable[str] = ()) -> int:
    """Writes rows as JSON lines through a temporary file; returns how many failed."""
    tmp = path + ".partial"
    failed = 0
    with open(tmp, "w") as f:
        for row in rows:
            row = {k: v for k, v in row.items() if k not in drop}
            for key in ("token_ids", "codes"):
                if isinstance(row.get(key), str):
                    row[key] = json.loads(row[key])
            row["error"] = _error(row.get("error"))
            failed += row["error"] is not None
            f.write(json.dumps(row, default=_plain) + "\n")
    os.replace(tmp, path)
    return failed


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, bytes):
        return None
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _arguments(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m janus_rs.ray", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="job", required=True)
    for name in ("caption", "generate"):
        p = sub.add_parser(name)
        p.add_argument("--input", required=True, help="folder, list file, parquet (caption) or prompt file")
        p.add_argument("--output", required=True, help="caption: .jsonl file or parquet folder; generate: folder")
        p.add_argument("--model", default=janus_rs.DEFAULT_MODEL)
        p.add_argument("--device", default="cpu")
        p.add_argument("--dtype", default="f32")
        p.add_argument("--quant", default="none")
        p.add_argument("--actors", type=int, default=1, help="model actors (each loads the model once)")
        p.add_argument("--cpus-per-actor", type=float, default=1.0)
        p.add_argument("--batch-size", type=int, default=8, help="rows per batch (and decoded together)")
        p.add_argument("--address", default=None, help="Ray cluster address (default: start a local one)")
        p.add_argument("--seed", type=int, default=None)
        p.add_argument("--temperature", type=float, default=None)
        if name == "caption":
            p.add_argument("--question", required=True)
            p.add_argument("--max-new-tokens", type=int, default=512)
            p.add_argument("--top-p", type=float, default=0.95)
        else:
            p.add_argument("--n", type=int, default=1, help="images per prompt without its own n")
            p.add_argument("--cfg-weight", type=float, default=5.0)
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    """The command line; returns the exit status (3 when rows failed)."""
    args = _arguments(argv)
    import ray
    import ray.data

    ray.init(address=args.address, ignore_reinit_error=True, log_to_driver=False)
    common = dict(model=args.model, device=args.device, dtype=args.dtype, quant=args.quant,
                  batch_size=args.batch_size)
    compute = ray.data.ActorPoolStrategy(size=args.actors)
    if args.job == "caption":
        options = dict(common, question=args.question, max_new_tokens=args.max_new_tokens, top_p=args.top_p,
                       seed=args.seed, temperature=args.temperature or 0.0)
        rows = [] if args.input.endswith(".parquet") else read_images(args.input)
        ds = _dataset(rows, args.input).map_batches(
            Captioner, fn_constructor_kwargs=options, batch_size=args.batch_size, compute=compute,
            num_cpus=args.cpus_per_actor, batch_format="numpy")
        if args.output.endswith(".jsonl"):
            failed = _write_jsonl(ds.iter_rows(), args.output)
        else:
            ds.write_parquet(args.output)
            failed = sum(1 for r in ray.data.read_parquet(args.output).iter_rows() if _error(r["error"]) is not None)
    else:
        options = dict(common, cfg_weight=args.cfg_weight, temperature=1.0 if args.temperature is None
                       else args.temperature)
        rows = read_prompts(args.input, seed=args.seed or 0, n=args.n)
        ds = _dataset(rows, args.input).map_batches(
            Renderer, fn_constructor_kwargs=options, batch_size=args.batch_size, compute=compute,
            num_cpus=args.cpus_per_actor, batch_format="numpy")
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)

        def written() -> Iterable[Dict[str, Any]]:
            for row in ds.iter_rows():
                files = []
                for k, png in enumerate(row.get("png") or []):
                    name = f"{int(row['row']):05}-{k}.png"
                    (out / (name + ".partial")).write_bytes(bytes(png))
                    os.replace(out / (name + ".partial"), out / name)
                    files.append(name)
                yield {**row, "files": files}

        failed = _write_jsonl(written(), str(out / "manifest.jsonl"), drop=("png",))
    print(f"{failed} row(s) failed", file=sys.stderr)
    return 3 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
