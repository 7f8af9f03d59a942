#!/usr/bin/env python3
"""Side-by-side CPU benchmark: PyTorch (transformers' JanusForConditionalGeneration,
random weights of the same size) against `janus bench`, in one invocation.

    python bench/bench_torch.py --config tests/fixtures/reference/Janus-Pro-1B/config.json \
        --janus target/release/janus --threads 2 --steps 8 [--out bench/results.json]

Each PyTorch dtype (f32, bf16) and each janus configuration runs in its own
process, so every peak RSS is that configuration's own. The workloads mirror
`janus bench` (janus/src/bench.rs): ViT encode of one 384x384 image (+ aligner),
a 620-token understanding prefill (14 text + 576 image + 30 text embeddings)
with the last position's text logits, greedy decoding per token, one CFG
text-to-image step (parallel 1, 4 and 16: LM step + generation head + CFG mix +
sampling + next embeddings), and the VQ decode of one 24x24 code grid. Timed
stages take the best of `--reps` runs after one warm-up; per-token stages
average `--steps` steps after one warm-up step. `--rounds N` runs the whole
set N times in turn and keeps each configuration's best times, so that a
change in the machine's memory bandwidth between configurations does not
decide a ratio.

Needs torch and transformers (>= 5) in the running Python; not part of CI.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def janus_hf_config(path):
    """transformers' JanusConfig with the sizes of a Janus-Pro config.json."""
    from transformers import JanusConfig

    with open(path) as f:
        cfg = json.load(f)
    # The released 7B config leaves LlamaConfig's defaults unwritten (the
    # official code fills them in: hidden 4096, MLP 11008, 32 heads).
    lang = {"hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32, **cfg["language_config"]}
    hidden = lang["hidden_size"]
    text = dict(
        model_type="llama",
        hidden_size=hidden,
        intermediate_size=lang["intermediate_size"],
        num_hidden_layers=lang["num_hidden_layers"],
        num_attention_heads=lang["num_attention_heads"],
        num_key_value_heads=lang.get("num_key_value_heads", lang["num_attention_heads"]),
        vocab_size=lang["vocab_size"],
        max_position_embeddings=lang.get("max_position_embeddings", 16384),
        rms_norm_eps=lang.get("rms_norm_eps", 1e-6),
    )
    gen = cfg["gen_head_config"]["params"]
    vq = dict(
        embed_dim=cfg["gen_vision_config"]["params"].get("n_embed", 8),
        num_embeddings=cfg["gen_vision_config"]["params"].get("image_token_size", 16384),
        projection_dim=gen["image_token_embed"],
        image_token_embed_dim=hidden,
    )
    vision = dict(projection_dim=hidden)  # siglip_large_patch16_384 is the default
    return JanusConfig(text_config=text, vision_config=vision, vq_config=vq)


def rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(args):
    import torch
    from transformers import DynamicCache, JanusForConditionalGeneration

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[args.worker]
    config = janus_hf_config(args.config)
    t = time.perf_counter()
    torch.set_default_dtype(dtype)
    model = JanusForConditionalGeneration(config).eval()
    torch.set_default_dtype(torch.float32)
    load_s = time.perf_counter() - t
    inner = model.model
    lm = inner.language_model
    vocab = config.text_config.vocab_size
    steps, reps = args.steps, args.reps
    res = {"dtype": args.worker, "quant": "torch", "threads": torch.get_num_threads(), "load_s": load_s,
           "cpu": torch.backends.cpu.get_cpu_capability().lower()}

    def best(f):
        f()
        b = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            f()
            b = min(b, time.perf_counter() - t)
        return b

    with torch.inference_mode():
        g = torch.Generator().manual_seed(11)
        pixels = (torch.rand((1, 3, 384, 384), generator=g) * 2 - 1).to(dtype)
        enc = lambda: inner.aligner(inner.vision_model(pixels).last_hidden_state)
        img = enc()
        res["vit_encode_s"] = best(enc)

        ids = torch.randint(100, vocab - 1000, (44,), generator=g)
        te = lm.embed_tokens(ids)
        embeds = torch.cat([te[:14], img[0], te[14:]], 0).unsqueeze(0)
        n = embeds.shape[1]
        res["und_prefill_tokens"] = n
        state = {}

        def prefill():
            cache = DynamicCache(config=config.text_config)
            h = lm(inputs_embeds=embeds, cache=cache, use_cache=True).last_hidden_state
            state["cache"] = cache
            state["next"] = model.lm_head(h[:, -1]).argmax(-1)

        lm(inputs_embeds=embeds[:, :64], cache=DynamicCache(config=config.text_config), use_cache=True)
        b = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            prefill()
            b = min(b, time.perf_counter() - t)
        res["und_prefill_s"] = b

        def decode():
            e = lm.embed_tokens(state["next"].view(1, 1))
            h = lm(inputs_embeds=e, cache=state["cache"], use_cache=True).last_hidden_state
            state["next"] = model.lm_head(h[:, -1]).argmax(-1)

        decode()
        t = time.perf_counter()
        for _ in range(steps):
            decode()
        res["und_decode_token_s"] = (time.perf_counter() - t) / steps

        def t2i(parallel):
            prompt = torch.randint(100, vocab - 1000, (24,), generator=torch.Generator().manual_seed(5))
            uncond = prompt.clone()
            uncond[1:-1] = 100_002 if vocab > 100_002 else 0
            rows = torch.stack([prompt, uncond] * parallel)
            cache = DynamicCache(config=config.text_config)
            sg = torch.Generator().manual_seed(7)

            def step(h):
                scores = inner.generation_head(h[:, -1]).float()
                cond, unc = scores[0::2], scores[1::2]
                mixed = unc + 5.0 * (cond - unc)
                nxt = torch.multinomial(torch.softmax(mixed, -1), 1, generator=sg).squeeze(-1)
                nxt = torch.stack([nxt, nxt], 1).reshape(-1, 1)
                return model.prepare_embeddings_for_image_generation(nxt)

            t = time.perf_counter()
            e = step(lm(inputs_embeds=lm.embed_tokens(rows), cache=cache, use_cache=True).last_hidden_state)
            pre = time.perf_counter() - t
            e = step(lm(inputs_embeds=e, cache=cache, use_cache=True).last_hidden_state)
            t = time.perf_counter()
            for _ in range(steps):
                e = step(lm(inputs_embeds=e, cache=cache, use_cache=True).last_hidden_state)
            return pre, (time.perf_counter() - t) / steps

        res["t2i_prefill_s"], res["t2i_step_s"] = t2i(1)
        _, res["t2i_step_p4_s"] = t2i(4)
        _, res["t2i_step_p16_s"] = t2i(16)

        codes = torch.randint(0, config.vq_config.num_embeddings, (1, 576), generator=g)
        res["vq_decode_s"] = best(lambda: inner.vqmodel.decode(codes))
    res["full_image_s"] = res["t2i_prefill_s"] + 576 * res["t2i_step_s"] + res["vq_decode_s"]
    res["peak_rss_bytes"] = rss_bytes()
    res["steps"] = steps
    print(json.dumps(res))


def quality(args):
    """PyTorch's own logit errors on the random model, as janus reports its
    reduced precisions against its f32: the understanding prefill's last
    text logits and the first CFG logits of one image, (1) with the f32
    weights rounded to bf16 and (2) computed in bf16 against f32 on those
    rounded weights; and (2) for one decoded image. Shows how much this
    random-weight model amplifies rounding on the reference's side."""
    import torch
    from transformers import DynamicCache, JanusForConditionalGeneration

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = janus_hf_config(args.config)
    model = JanusForConditionalGeneration(config).eval()
    inner = model.model
    lm = inner.language_model
    vocab = config.text_config.vocab_size
    g = torch.Generator().manual_seed(11)
    pixels = torch.rand((1, 3, 384, 384), generator=g) * 2 - 1
    ids = torch.randint(100, vocab - 1000, (44,), generator=g)
    prompt = torch.randint(100, vocab - 1000, (24,), generator=torch.Generator().manual_seed(5))
    uncond = prompt.clone()
    uncond[1:-1] = 100_002 if vocab > 100_002 else 0
    rows = torch.stack([prompt, uncond])

    def logits(dtype):
        with torch.inference_mode():
            img = inner.aligner(inner.vision_model(pixels.to(dtype)).last_hidden_state)
            te = lm.embed_tokens(ids)
            embeds = torch.cat([te[:14], img[0], te[14:]], 0).unsqueeze(0)
            cache = DynamicCache(config=config.text_config)
            h = lm(inputs_embeds=embeds, cache=cache, use_cache=True).last_hidden_state
            und = model.lm_head(h[:, -1]).float()
            cache = DynamicCache(config=config.text_config)
            h = lm(inputs_embeds=lm.embed_tokens(rows), cache=cache, use_cache=True).last_hidden_state
            scores = inner.generation_head(h[:, -1]).float()
            cfg = scores[1] + 5.0 * (scores[0] - scores[1])
            return und, cfg

    codes = torch.randint(0, config.vq_config.num_embeddings, (1, 576), generator=g)

    def image():
        with torch.inference_mode():
            return inner.vqmodel.decode(codes).float()

    rel = lambda a, b: float((a - b).norm() / a.norm())
    und, cfg = logits(torch.float32)
    # The weights rounded to bf16 (about 0.1 % per weight), still in f32.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).to(torch.float32))
    und_w, cfg_w = logits(torch.float32)
    img_w = image()
    # Then bf16 compute on those same weights: janus's bf16 column measures
    # this (its checkpoint is bf16, so its f32 and bf16 weights are equal).
    model.to(torch.bfloat16)
    und16, cfg16 = logits(torch.bfloat16)
    img16 = image()
    print(json.dumps({
        "und_logits_rel_l2": rel(und_w, und16),
        "t2i_logits_rel_l2": rel(cfg_w, cfg16),
        "vq_image_rel_l2": rel(img_w, img16),
        "weights_bf16_und_logits_rel_l2": rel(und, und_w),
        "weights_bf16_t2i_logits_rel_l2": rel(cfg, cfg_w),
    }))


KEYS = [
    ("vit_encode_s", "ViT encode (1 image)"),
    ("und_prefill_s", "understanding prefill (620 tok)"),
    ("und_decode_token_s", "understanding decode / token"),
    ("t2i_step_s", "t2i step, CFG, parallel 1"),
    ("t2i_step_p4_s", "t2i step, CFG, parallel 4"),
    ("t2i_step_p16_s", "t2i step, CFG, parallel 16"),
    ("vq_decode_s", "VQ decode / image"),
    ("full_image_s", "full image (estimate)"),
    ("load_s", "load (torch: random init)"),
    ("peak_rss_bytes", "peak RSS (GB)"),
]


def fmt(k, v):
    if v is None:
        return "-"
    if k == "peak_rss_bytes":
        return f"{v / 1e9:.2f}"
    return f"{v:.3f}" if v < 100 else f"{v:.0f}"


def best_of_rounds(results):
    """One configuration's results over several rounds: the shortest time
    of each timed key, the highest peak RSS."""
    out = dict(results[0])
    for k, v in out.items():
        if not isinstance(v, (int, float)) or k in ("threads", "steps", "und_prefill_tokens"):
            continue
        values = [r[k] for r in results if isinstance(r.get(k), (int, float))]
        if k.endswith("_s"):
            out[k] = min(values)
        elif k.endswith("_bytes"):
            out[k] = max(values)
    if all(k in out for k in ("t2i_prefill_s", "t2i_step_s", "vq_decode_s")):
        # The estimate from the best parts, as each round computes it (576 codes).
        out["full_image_s"] = out["t2i_prefill_s"] + 576 * out["t2i_step_s"] + out["vq_decode_s"]
    return out


def run_json(cmd):
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    out = subprocess.run(cmd, stdout=subprocess.PIPE, check=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--janus", default="target/release/janus")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--out", help="write all results as JSON here")
    ap.add_argument("--torch-dtypes", default="f32,bf16")
    ap.add_argument("--janus-configs", default="f32/none,bf16/none,bf16/q8_0,bf16/q4k")
    ap.add_argument("--no-quality", action="store_true", help="skip PyTorch's own bf16-vs-f32 logit error")
    ap.add_argument(
        "--rounds", type=int, default=1,
        help="run every configuration this many times, in turn, and keep each one's best times: "
        "the memory-bound steps follow the machine's bandwidth, which can change between configurations",
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker == "quality":
        return quality(args)
    if args.worker:
        return worker(args)

    common = ["--threads", str(args.threads), "--steps", str(args.steps)]
    torch_cmds = [
        [sys.executable, __file__, "--worker", d, "--config", args.config, "--reps", str(args.reps)] + common
        for d in args.torch_dtypes.split(",") if d
    ]
    janus_cmds = [
        [args.janus, "bench", "--config", args.config, "--dtype", c.split("/")[0], "--quant", c.split("/")[1],
         "--json", "--reps", str(args.reps)] + common
        for c in args.janus_configs.split(",") if c
    ]
    rounds = [[run_json(cmd) for cmd in torch_cmds + janus_cmds] for _ in range(max(args.rounds, 1))]
    merged = [best_of_rounds([r[i] for r in rounds]) for i in range(len(torch_cmds + janus_cmds))]
    torch_res, ours = merged[: len(torch_cmds)], merged[len(torch_cmds):]
    cols = [("torch " + r["dtype"], r) for r in torch_res] + [(f"janus {r['dtype']} {r['quant']}", r) for r in ours]
    lines = ["| workload | " + " | ".join(c for c, _ in cols) + " |", "| --- |" + " ---: |" * len(cols)]
    for k, name in KEYS:
        lines.append(f"| {name} | " + " | ".join(fmt(k, r.get(k)) for _, r in cols) + " |")
    lines.append("| CPU kernels | " + " | ".join(r.get("cpu", "-") for _, r in cols) + " |")
    lines.append("")
    # Ratio: PyTorch's better (lower) of f32/bf16 over ours; > 1 means janus is faster.
    lines.append("| speed-up vs PyTorch's better | " + " | ".join(c for c, _ in cols[len(torch_res):]) + " |")
    lines.append("| --- |" + " ---: |" * len(ours))
    for k, name in KEYS:
        if k in ("load_s",):
            continue
        best = min(r[k] for r in torch_res)
        if k == "peak_rss_bytes":
            ref = next((r[k] for r in torch_res if r["dtype"] == "f32"), best)
            lines.append("| peak RSS vs torch f32 | " + " | ".join(f"{r[k] / ref:.2f}x" for r in ours) + " |")
        else:
            lines.append(f"| {name} | " + " | ".join(f"{best / r[k]:.2f}x" for r in ours) + " |")
    def e(r, k):
        # Absent when no f32 run of the same weights left its reference.
        return "-" if r.get(k) is None else f"{r[k]:.2e}"

    err = [f"{e(r, 'und_logits_rel_l2')} / {e(r, 't2i_logits_rel_l2')}" for r in ours]
    lines.append("| logits rel. L2 vs f32 (und / t2i) | " + " | ".join(err) + " |")
    err = [e(r, "vq_image_rel_l2") for r in ours]
    lines.append("| VQ image rel. L2 vs f32 | " + " | ".join(err) + " |")
    torch_quality = None
    if not args.no_quality:
        torch_quality = run_json([sys.executable, __file__, "--worker", "quality", "--config", args.config] + common)
        lines.append("")
        q = torch_quality
        lines.append(
            "PyTorch on its own random model (und / t2i logits rel. L2): bf16 compute vs f32, "
            f"same bf16 weights {q['und_logits_rel_l2']:.2e} / {q['t2i_logits_rel_l2']:.2e}; "
            f"f32 weights rounded to bf16 {q['weights_bf16_und_logits_rel_l2']:.2e} / "
            f"{q['weights_bf16_t2i_logits_rel_l2']:.2e}; VQ image, bf16 compute vs f32 on the same "
            f"bf16 weights {q.get('vq_image_rel_l2', 0):.2e}"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {"torch": torch_res, "janus": ours, "torch_quality": torch_quality, "table": table, "rounds": rounds},
                f, indent=1,
            )


if __name__ == "__main__":
    main()
