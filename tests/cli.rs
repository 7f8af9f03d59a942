//! The `janus` binary: fixture reproduction and one-line errors on bad input.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn janus(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_janus"))
        .args(args)
        .output()
        .expect("run janus")
}

fn stdout_json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "janus failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn version_is_the_workspace_version() {
    let out = janus(&["--version"]);
    assert!(out.status.success());
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"))
            .unwrap();
    let version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("janus {version}\n")
    );
}

#[test]
fn understand_reproduces_the_greedy_answer() {
    let json = expected_json();
    let case = &json["cases"]["understand.single"];
    let dir = fixture_dir();
    let image = dir.join("images/wide.png");
    let out = janus(&[
        "understand",
        "--model",
        s(&dir),
        "--image",
        s(&image),
        "--question",
        "Describe this image in detail.",
        "--max-new-tokens",
        "12",
        "--json",
    ]);
    let v = stdout_json(&out);
    assert_eq!(v["token_ids"], case["generated_ids"]);
    assert_eq!(v["answer"], case["answer"]);

    // Without --json the streamed text is the same answer.
    let out = janus(&[
        "understand",
        "--model",
        s(&dir),
        "--image",
        s(&image),
        "--question",
        "Describe this image in detail.",
        "--max-new-tokens",
        "12",
    ]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{}\n", case["answer"].as_str().unwrap())
    );
}

#[test]
fn understand_reads_a_conversation_file() {
    let json = expected_json();
    let case = &json["cases"]["understand.multi"];
    let tmp = tempfile::tempdir().unwrap();
    // Image paths are relative to the conversation file.
    std::fs::create_dir(tmp.path().join("images")).unwrap();
    for name in ["tall.png", "square.png"] {
        std::fs::copy(
            fixture_dir().join("images").join(name),
            tmp.path().join("images").join(name),
        )
        .unwrap();
    }
    let conv = tmp.path().join("conversation.json");
    std::fs::write(&conv, serde_json::to_string(&case["conversation"]).unwrap()).unwrap();
    let out = janus(&[
        "understand",
        "--model",
        s(&fixture_dir()),
        "--conversation",
        s(&conv),
        "--max-new-tokens",
        "12",
        "--json",
    ]);
    assert_eq!(stdout_json(&out)["token_ids"], case["generated_ids"]);
}

#[test]
fn generate_reproduces_image_tokens_and_pngs() {
    let json = expected_json();
    let case = &json["cases"]["t2i.apple"];
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    let out = janus(&[
        "generate",
        "--model",
        s(&fixture_dir().join("bin-bf16")),
        "--prompt",
        case["prompt"].as_str().unwrap(),
        "--parallel-size",
        "2",
        "--cfg-weight",
        "5",
        "--temperature",
        "0",
        "--out",
        s(&out_dir),
        "--json",
    ]);
    let v = stdout_json(&out);
    assert_eq!(v["image_tokens"], case["image_tokens"]);
    let paths: Vec<PathBuf> = v["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| PathBuf::from(p.as_str().unwrap()))
        .collect();
    assert_eq!(paths, vec![out_dir.join("0.png"), out_dir.join("1.png")]);
    for (i, p) in paths.iter().enumerate() {
        let got = image::open(p).unwrap().to_rgb8();
        let want = image::open(fixture_dir().join(format!("t2i_apple_{i}.png")))
            .unwrap()
            .to_rgb8();
        assert_eq!(got.dimensions(), want.dimensions());
        let worst = got
            .as_raw()
            .iter()
            .zip(want.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(worst <= 1, "image {i} differs by {worst} levels");
    }
    let leftovers: Vec<_> = std::fs::read_dir(&out_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        2,
        "only the PNGs are written: {leftovers:?}"
    );
}

/// A copy of the tiny model folder (weights, tokenizer, configs) to break.
fn model_copy() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(fixture_dir()).unwrap() {
        let f = f.unwrap().path();
        if f.is_file()
            && (f.extension().is_some_and(|e| e == "json") || f.ends_with("model.safetensors"))
        {
            std::fs::copy(&f, tmp.path().join(f.file_name().unwrap())).unwrap();
        }
    }
    tmp
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_string(&v).unwrap()).unwrap();
}

/// A PNG whose header claims `w` x `h` pixels (no pixel data): a decompression bomb's shape.
fn png_header_only(path: &Path, w: u32, h: u32) {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in bytes {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(13u32.to_be_bytes());
    png.extend(&ihdr);
    png.extend(crc32(&ihdr).to_be_bytes());
    for chunk in [&b"IDAT"[..], &b"IEND"[..]] {
        png.extend(0u32.to_be_bytes());
        png.extend(chunk);
        png.extend(crc32(chunk).to_be_bytes());
    }
    std::fs::write(path, png).unwrap();
}

/// A `pytorch_model.bin` zip whose pickle is a list of strings, not a state dict.
fn pickle_of_wrong_type(dir: &Path) {
    use std::io::Write;
    let file = std::fs::File::create(dir.join("pytorch_model.bin")).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", opts).unwrap();
    // protocol 2: ['hello']
    zip.write_all(b"\x80\x02]q\x00X\x05\x00\x00\x00helloq\x01a.")
        .unwrap();
    zip.finish().unwrap();
}

/// Fails with exit code 2 and one line on stderr that contains `needle`.
fn assert_input_error(what: &str, out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{what}: exit code; stderr: {err}"
    );
    assert!(!err.contains("panicked"), "{what}: panic: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{what}: one line: {err}");
    assert!(
        err.contains(needle),
        "{what}: expected {needle:?} in {err:?}"
    );
}

/// Every bad input a user can hand the CLI, each answered by one line and exit code 2.
#[test]
fn bad_inputs_are_one_line_errors() {
    let dir = fixture_dir();
    let tmp = tempfile::tempdir().unwrap();
    let t = |name: &str| tmp.path().join(name);
    let square = dir.join("images/square.png");

    let no_config = tempfile::tempdir().unwrap();
    let no_weights = model_copy();
    std::fs::remove_file(no_weights.path().join("model.safetensors")).unwrap();
    let truncated = model_copy();
    let st = truncated.path().join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    let bad_pickle = model_copy();
    std::fs::remove_file(bad_pickle.path().join("model.safetensors")).unwrap();
    pickle_of_wrong_type(bad_pickle.path());
    let bad_cls = model_copy();
    edit_config(bad_cls.path(), |v| {
        v["gen_vision_config"]["cls"] = "VQ-32".into()
    });
    let bad_proj = model_copy();
    edit_config(bad_proj.path(), |v| {
        v["aligner_config"]["params"]["projector_type"] = "mlp_relu".into()
    });
    let bad_shape = model_copy();
    edit_config(bad_shape.path(), |v| {
        v["language_config"]["intermediate_size"] = 128.into()
    });
    std::fs::write(t("notes.png"), "this is not an image").unwrap();
    std::fs::write(t("empty.png"), "").unwrap();
    png_header_only(&t("huge.png"), 60_000, 60_000);
    std::fs::write(
        t("conv.json"),
        r#"[{"role": "<|User|>", "content": "Hi", "images": ["images/x.png"]}]"#,
    )
    .unwrap();
    let long = "word ".repeat(1200);
    let (s_dir, s_sq, s_tmp) = (s(&dir), s(&square), s(tmp.path()));

    let understand = |model: &str, image: &str, question: &str| -> Output {
        janus(&[
            "understand",
            "--model",
            model,
            "--image",
            image,
            "--question",
            question,
            "--max-new-tokens",
            "2",
        ])
    };
    let generate = |extra: &[&str]| -> Output {
        let mut args = vec!["generate", "--model", s_dir, "--out", s_tmp];
        args.extend(extra);
        janus(&args)
    };
    let cases: Vec<(&str, Output, &str)> = vec![
        ("nonexistent model folder", understand("/nonexistent/model", s_sq, "What?"), "model folder not found"),
        ("folder without config", understand(s(no_config.path()), s_sq, "What?"), "model config not found"),
        ("folder without weights", understand(s(no_weights.path()), s_sq, "What?"), "model weights"),
        ("truncated safetensors", understand(s(truncated.path()), s_sq, "What?"), "model.safetensors"),
        ("pickle with an unexpected type", understand(s(bad_pickle.path()), s_sq, "What?"), "pytorch_model.bin"),
        ("unknown VQ class", understand(s(bad_cls.path()), s_sq, "What?"), "gen_vision_config.cls"),
        ("unknown projector type", understand(s(bad_proj.path()), s_sq, "What?"), "projector_type"),
        (
            "config with wrong shapes",
            understand(s(bad_shape.path()), s_sq, "What?"),
            "language_model.model.layers.0.mlp.gate_proj.weight has shape [176, 64] in the checkpoint, the model expects [128, 64]",
        ),
        ("image that is not an image", understand(s_dir, s(&t("notes.png")), "What?"), "notes.png"),
        ("0-byte image", understand(s_dir, s(&t("empty.png")), "What?"), "empty.png"),
        ("huge image", understand(s_dir, s(&t("huge.png")), "What?"), "megapixels"),
        ("missing image", understand(s_dir, s(&t("missing.png")), "What?"), "missing.png"),
        ("more placeholders than images", understand(s_dir, s_sq, "<image_placeholder> and <image_placeholder>?"), "placeholder"),
        ("conversation naming a missing image", janus(&["understand", "--model", s_dir, "--conversation", s(&t("conv.json"))]), "x.png"),
        ("question longer than the context", understand(s_dir, s_sq, &long), "context"),
        ("empty prompt", generate(&["--prompt", "  "]), "prompt is empty"),
        ("prompt longer than the context", generate(&["--prompt", &long]), "context"),
        ("parallel size 0", generate(&["--prompt", "cat", "--parallel-size", "0"]), "parallel size"),
        ("top-p out of range", generate(&["--prompt", "cat", "--top-p", "1.5"]), "top-p"),
        ("unknown dtype", generate(&["--prompt", "cat", "--dtype", "f8"]), "unknown dtype"),
        ("device not compiled in", generate(&["--prompt", "cat", "--device", "metal"]), "metal"),
        (
            "hub id offline, not cached",
            Command::new(env!("CARGO_BIN_EXE_janus"))
                .args(["generate", "--model", "deepseek-ai/Janus-Pro-1B", "--prompt", "cat", "--out", s_tmp])
                .env("HF_HUB_OFFLINE", "1")
                .env("HF_HOME", tmp.path().join("hf-home"))
                .env_remove("HF_HUB_CACHE")
                .output()
                .unwrap(),
            "is not in the Hugging Face cache",
        ),
    ];
    for (what, out, needle) in &cases {
        assert_input_error(what, out, needle);
    }
    let pngs = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "png")
        })
        .count();
    assert_eq!(pngs, 3, "failed runs write no image");
}

/// Ctrl-C during generation: exit 130 and no image file, complete or partial.
#[test]
fn interrupted_generation_leaves_no_file() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("prompts.txt");
    std::fs::write(&prompts, "a cat on a mat\n".repeat(3000)).unwrap();
    let out_dir = tmp.path().join("out");
    let mut child = Command::new(env!("CARGO_BIN_EXE_janus"))
        .args([
            "generate",
            "--model",
            s(&fixture_dir()),
            "--prompts",
            s(&prompts),
            "--out",
            s(&out_dir),
            "--quiet",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "exit code after Ctrl-C");
    let files: Vec<_> = std::fs::read_dir(&out_dir)
        .map(|d| d.filter_map(|e| e.ok()).collect())
        .unwrap_or_default();
    assert!(
        files.is_empty(),
        "no output files: {:?}",
        files.iter().map(|e| e.file_name()).collect::<Vec<_>>()
    );
}

#[test]
fn quantize_saves_a_folder_that_answers_as_a_quantising_load() {
    let dir = fixture_dir();
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("tiny-q8_0");
    let out = janus(&[
        "quantize",
        "--model",
        s(&dir),
        "--quant",
        "q8_0",
        "--out",
        s(&out_dir),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(printed.trim(), s(&out_dir.join("model.gguf")));
    let image = dir.join("images/wide.png");
    let answer = |model: &Path, quant: &str| {
        stdout_json(&janus(&[
            "understand",
            "--model",
            s(model),
            "--quant",
            quant,
            "--image",
            s(&image),
            "--question",
            "Describe this image in detail.",
            "--max-new-tokens",
            "8",
            "--json",
        ]))
    };
    let saved = answer(&out_dir, "none");
    assert_eq!(saved, answer(&dir, "q8_0"));
    // q8_0 keeps the fixture's greedy answer (its first 8 tokens).
    let greedy = expected_json()["cases"]["understand.single"]["generated_ids"]
        .as_array()
        .unwrap()[..8]
        .to_vec();
    assert_eq!(saved["token_ids"], serde_json::Value::Array(greedy));

    let refused = janus(&[
        "quantize",
        "--model",
        s(&dir),
        "--quant",
        "none",
        "--out",
        s(&out_dir),
    ]);
    assert_input_error("quantize --quant none", &refused, "q8_0 or q4k");
    let refused = janus(&[
        "understand",
        "--model",
        s(&out_dir),
        "--quant",
        "q4k",
        "--question",
        "hi",
    ]);
    assert_input_error(
        "a q8_0 folder loaded as q4k",
        &refused,
        "holds q8_0 weights",
    );
}

/// `janus bench --json` on the tiny fixture's config: the keys of the JSON
/// contract, with real timings, and a reduced precision's errors against
/// the f32 run of the same random weights (which the f32 run leaves behind).
#[test]
fn bench_reports_its_json_contract_and_errors_against_f32() {
    let weights = tempfile::tempdir().unwrap();
    let config = fixture_dir().join("config.json");
    let run = |dtype: &str, quant: &str| {
        stdout_json(&janus(&[
            "bench",
            "--config",
            s(&config),
            "--weights-dir",
            s(weights.path()),
            "--dtype",
            dtype,
            "--quant",
            quant,
            "--steps",
            "2",
            "--reps",
            "1",
            "--json",
        ]))
    };
    let f32_run = run("f32", "none");
    for key in [
        "vit_encode_s",
        "und_prefill_s",
        "und_decode_token_s",
        "t2i_step_s",
        "t2i_step_p4_s",
        "t2i_step_p16_s",
        "vq_decode_s",
        "load_s",
    ] {
        let v = f32_run[key].as_f64().unwrap_or(-1.0);
        assert!(v > 0.0 && v < 60.0, "{key}: {v}");
    }
    assert!(f32_run["peak_rss_bytes"].as_u64().unwrap_or(0) > 1 << 20);
    // The kernels the run could use, capped by JANUS_CPU as the test-all
    // runs do.
    let cpu = f32_run["cpu"].as_str().unwrap_or_default();
    let want = match std::env::var("JANUS_CPU").as_deref() {
        Ok("avx2") => &["avx2", "baseline"][..],
        Ok("baseline") => &["baseline"][..],
        _ => &["avx512", "avx2", "baseline"][..],
    };
    assert!(
        want.iter().any(|w| cpu.split('+').next() == Some(*w)),
        "cpu: {cpu:?}"
    );
    assert!(
        f32_run.get("und_logits_rel_l2").is_none(),
        "f32 has no error"
    );

    let q8 = run("bf16", "q8_0");
    for (key, most) in [
        ("und_logits_rel_l2", 0.1),
        ("t2i_logits_rel_l2", 0.1),
        ("vq_image_rel_l2", 0.05),
    ] {
        let e = q8[key].as_f64().unwrap_or(-1.0);
        assert!((0.0..most).contains(&e), "{key}: {e}");
    }
    // q8_0 weights always differ from f32 ones.
    assert!(q8["und_logits_rel_l2"].as_f64().unwrap() > 0.0);
}

/// `janus bench` without `--dtype`/`--quant` runs every configuration in
/// its own process; `--from-gguf` must reach them, so each quantised one
/// loads a `model.gguf` written beside the random weights.
#[test]
fn bench_all_configurations_load_from_gguf() {
    let weights = tempfile::tempdir().unwrap();
    let config = fixture_dir().join("config.json");
    let out = janus(&[
        "bench",
        "--config",
        s(&config),
        "--weights-dir",
        s(weights.path()),
        "--steps",
        "1",
        "--reps",
        "1",
        "--from-gguf",
    ]);
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.starts_with("| workload | f32 none | bf16 none | bf16 q8_0 | bf16 q4k |"),
        "{table}"
    );
    let models: Vec<_> = std::fs::read_dir(weights.path()).unwrap().collect();
    assert_eq!(models.len(), 1, "one folder of random weights");
    let dir = models[0].as_ref().unwrap().path();
    for quant in ["q8_0", "q4k"] {
        let gguf = dir.join(quant).join("model.gguf");
        assert!(gguf.is_file(), "{} was not written", gguf.display());
    }
    assert!(
        !dir.join("none").exists(),
        "unquantised runs load the safetensors"
    );
}

/// A shard index may only name files of the model folder: `../` and
/// absolute paths are refused before anything is opened.
#[test]
fn shard_indexes_cannot_reach_outside_the_model_folder() {
    for name in ["../model.safetensors", "/etc/passwd"] {
        let tmp = model_copy();
        let inner = tmp.path().join("model");
        std::fs::create_dir(&inner).unwrap();
        for f in std::fs::read_dir(tmp.path()).unwrap() {
            let f = f.unwrap().path();
            if f.is_file() && f.extension().is_some_and(|e| e == "json") {
                std::fs::copy(&f, inner.join(f.file_name().unwrap())).unwrap();
            }
        }
        let index = serde_json::json!({"weight_map": {"language_model.model.norm.weight": name}});
        std::fs::write(
            inner.join("model.safetensors.index.json"),
            index.to_string(),
        )
        .unwrap();
        let out = janus(&[
            "understand",
            "--model",
            s(&inner),
            "--question",
            "hi",
            "--max-new-tokens",
            "1",
        ]);
        assert_input_error(name, &out, "not a file of the model folder");
    }
}

/// Outputs: an existing device is written into, never replaced by a file,
/// a closed stdout ends the program quietly (no panic), and a full one is
/// a failure while running (exit 1).
#[test]
fn outputs_into_devices_and_closed_pipes() {
    let dir = fixture_dir();
    let codes = tempfile::tempdir().unwrap();
    let code_file = codes.path().join("codes.json");
    let grid: Vec<u32> = (0..16).collect();
    std::fs::write(
        &code_file,
        serde_json::json!({"grid": [4, 4], "codes": grid}).to_string(),
    )
    .unwrap();
    if std::fs::metadata("/dev/null").is_ok_and(|m| !m.is_file()) {
        let out = janus(&[
            "vq",
            "decode",
            s(&code_file),
            "--model",
            s(&dir),
            "--out",
            "/dev/null",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let meta = std::fs::metadata("/dev/null").unwrap();
        assert!(!meta.is_file(), "/dev/null was replaced by a file");
    }

    let wide = dir.join("images/wide.png");
    let encode = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_janus"));
        cmd.args(["vq", "encode", s(&wide), "--model", s(&dir)]);
        cmd
    };
    let mut child = encode()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(141), "{err}");
    assert!(err.is_empty(), "quiet: {err:?}");

    // A failure while running that no input caused (stdout on a full
    // device): exit 1, not 2, with one line.
    if let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") {
        let out = encode().stdout(full).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("No space left on device"), "{err}");
    }
}

/// Configs that disagree with each other fail at load or before the first
/// step, with one line naming the file: a missing `processor_config.json`
/// (its default expects 576 image tokens, the tiny model has 16 patches), a
/// vocabulary smaller than the tokenizer's ids.
#[test]
fn inconsistent_configs_are_one_line_errors() {
    let image = fixture_dir().join("images/wide.png");
    let tmp = model_copy();
    std::fs::remove_file(tmp.path().join("processor_config.json")).unwrap();
    let out = janus(&[
        "understand",
        "--model",
        s(tmp.path()),
        "--image",
        s(&image),
        "--question",
        "hi",
        "--max-new-tokens",
        "1",
    ]);
    assert_input_error("no processor_config.json", &out, "num_image_tokens 576");

    let tmp = model_copy();
    edit_config(tmp.path(), |v| {
        v["language_config"]["vocab_size"] = serde_json::json!(400)
    });
    let out = janus(&[
        "understand",
        "--model",
        s(tmp.path()),
        "--question",
        "hi",
        "--max-new-tokens",
        "1",
    ]);
    assert_input_error("small vocabulary", &out, "outside the model's vocabulary");

    // Absurd sizes and unusable floats: one line naming the field.
    for (section, key, value, needle) in [
        (
            "language_config",
            "rope_theta",
            serde_json::json!(0.0),
            "rope_theta",
        ),
        (
            "language_config",
            "rms_norm_eps",
            serde_json::json!(-1e-6),
            "rms_norm_eps",
        ),
        (
            "language_config",
            "max_position_embeddings",
            serde_json::json!(1_000_000_000_000u64),
            "max_position_embeddings",
        ),
    ] {
        let tmp = model_copy();
        edit_config(tmp.path(), |v| v[section][key] = value.clone());
        let out = janus(&["understand", "--model", s(tmp.path()), "--question", "hi"]);
        assert_input_error(key, &out, needle);
    }
    let tmp = model_copy();
    edit_config(tmp.path(), |v| {
        v["gen_vision_config"]["params"]["num_res_blocks"] = serde_json::json!(1_000_000_000u64)
    });
    let out = janus(&["understand", "--model", s(tmp.path()), "--question", "hi"]);
    assert_input_error("num_res_blocks", &out, "num_res_blocks");

    // More images than memory holds: refused before anything is allocated.
    let out_dir = tempfile::tempdir().unwrap();
    let out = janus(&[
        "generate",
        "--model",
        s(&fixture_dir()),
        "--prompt",
        "a cat",
        "--parallel-size",
        "10000000000",
        "--out",
        s(out_dir.path()),
    ]);
    assert_input_error("parallel size", &out, "generate fewer at a time");
}

/// The largest per-channel difference between a PNG and `want` (RGB bytes).
fn png_worst_diff(path: &Path, want: &[u8]) -> u8 {
    let got = image::open(path).unwrap().to_rgb8();
    assert_eq!(got.as_raw().len(), want.len(), "{}", path.display());
    got.as_raw()
        .iter()
        .zip(want)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap()
}

#[test]
fn vq_decode_reads_each_code_form_and_encode_crops_the_centre() {
    let exp = expected();
    let tokens = exp["t2i.apple.image_tokens"].to_vec2::<i64>().unwrap();
    let pixels = exp["t2i.apple.pixels_u8"]
        .flatten_all()
        .unwrap()
        .to_vec1::<u8>()
        .unwrap();
    let image_bytes = pixels.len() / 2;
    let want = |i: usize| &pixels[i * image_bytes..(i + 1) * image_bytes];
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture_dir();
    // A list of codes, a list of lists, {"codes": ...}: the official decoder's pixels.
    let forms = [
        ("list", serde_json::json!(tokens[1]), vec![1]),
        ("lists", serde_json::json!(tokens), vec![0, 1]),
        (
            "object",
            serde_json::json!({"grid": [4, 4], "codes": tokens[0]}),
            vec![0],
        ),
    ];
    let vq_decode = |codes: &Path, png: &Path, extra: &[&str]| {
        let mut args = vec![
            "vq",
            "decode",
            s(codes),
            "--model",
            s(&model),
            "--out",
            s(png),
        ];
        args.extend(extra);
        janus(&args)
    };
    for (name, codes, images) in forms {
        let codes_file = tmp.path().join(format!("{name}.json"));
        std::fs::write(&codes_file, codes.to_string()).unwrap();
        let png = tmp.path().join(format!("{name}.png"));
        let out = vq_decode(&codes_file, &png, &[]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(PathBuf::from)
            .collect();
        let expected_paths: Vec<PathBuf> = if images.len() == 1 {
            vec![png.clone()]
        } else {
            (0..images.len())
                .map(|i| tmp.path().join(format!("{name}_{i}.png")))
                .collect()
        };
        assert_eq!(printed, expected_paths, "{name}");
        for (path, &i) in printed.iter().zip(&images) {
            let worst = png_worst_diff(path, want(i));
            assert!(worst <= 1, "{name}: image {i} differs by {worst} levels");
        }
    }
    // --size upscales.
    let big = tmp.path().join("big.png");
    let codes_file = tmp.path().join("list.json");
    let out = vq_decode(&codes_file, &big, &["--size", "40"]);
    assert!(out.status.success());
    let big = image::open(&big).unwrap().to_rgb8();
    assert_eq!(big.dimensions(), (40, 40));
    // The native decode of the same codes (checked above), Lanczos-resized.
    let native = image::open(tmp.path().join("list.png")).unwrap().to_rgb8();
    assert_eq!(
        big.as_raw(),
        janus::resize_square(&native, 40).unwrap().as_raw(),
        "--size 40 is the resized native image"
    );

    // encode: wide.png (200 x 120) gives the codes of its centre 120 x 120 square.
    let wide = model.join("images/wide.png");
    let square = tmp.path().join("centre.png");
    image::open(&wide)
        .unwrap()
        .crop_imm(40, 0, 120, 120)
        .save(&square)
        .unwrap();
    let encode = |image: &Path| {
        let out = janus(&["vq", "encode", s(image), "--model", s(&model)]);
        stdout_json(&out)
    };
    let (of_wide, of_square) = (encode(&wide), encode(&square));
    assert_eq!(of_wide["grid"], serde_json::json!([4, 4]));
    let codes = of_wide["codes"].as_array().unwrap();
    assert_eq!(codes.len(), 16);
    assert!(
        codes.iter().all(|c| c.as_u64().is_some_and(|c| c < 256)),
        "{codes:?}"
    );
    assert_eq!(of_wide, of_square);
    // The official encoder's input (16 x 16, [-1, 1]) as a PNG, converted as
    // the official code writes images (clip((x + 1) / 2 * 255) as uint8,
    // truncated), gives the official codes.
    let input = exp["vq.encode.input"]
        .squeeze(0)
        .unwrap()
        .permute((1, 2, 0))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let bytes: Vec<u8> = input
        .iter()
        .map(|x| ((x + 1.0) / 2.0 * 255.0).clamp(0.0, 255.0) as u8)
        .collect();
    let official = tmp.path().join("official_input.png");
    image::RgbImage::from_raw(16, 16, bytes)
        .unwrap()
        .save(&official)
        .unwrap();
    let of_official = encode(&official);
    assert_eq!(of_official["grid"], serde_json::json!([4, 4]));
    assert_eq!(
        of_official["codes"],
        serde_json::json!(ids(&exp["vq.encode.indices"])),
        "the official encoder's codes"
    );
    // Another crop gives other codes (the crop is what is encoded).
    let left = tmp.path().join("left.png");
    image::open(&wide)
        .unwrap()
        .crop_imm(0, 0, 120, 120)
        .save(&left)
        .unwrap();
    assert_ne!(encode(&left)["codes"], of_wide["codes"]);
}

/// `janus chat` on the tiny model, its three streams piped.
fn spawn_chat(max_new_tokens: &str) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_janus"))
        .args(["chat", "--model", s(&fixture_dir())])
        .args(["--max-new-tokens", max_new_tokens])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn chat_attaches_images_resets_and_answers_as_understand() {
    let json = expected_json();
    let single = json["cases"]["understand.single"]["answer"]
        .as_str()
        .unwrap();
    let text = json["cases"]["understand.text"]["answer"].as_str().unwrap();
    let image = fixture_dir().join("images/wide.png");
    let mut child = spawn_chat("12");
    let script = format!(
        "/image {}\nDescribe this image in detail.\n/reset\nWhat is a cat?\n/image missing.png\n",
        image.display()
    );
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
    drop(child.stdin.take()); // Ctrl-D: the chat ends
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("janus> {single}\njanus> {text}\n")
    );
    assert!(
        stderr.contains("(image 1 attached to your next message)"),
        "{stderr}"
    );
    assert!(stderr.contains("(new conversation)"), "{stderr}");
    // A bad /image is one error line, and the chat goes on.
    assert!(
        stderr.contains("error: ") && stderr.contains("missing.png"),
        "{stderr}"
    );
}

/// Ctrl-C while an answer streams stops that answer (" [stopped]") and the
/// chat goes on; Ctrl-D at the prompt then ends it with exit 0. The signal
/// is sent once the answer's first bytes are out (an answer to the end of
/// the tiny model's context takes far longer than the signal).
#[test]
fn chat_ctrl_c_stops_the_answer_and_the_chat_goes_on() {
    use std::io::{Read, Write};
    let mut child = spawn_chat("100000");
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "What is a cat?").unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while seen.len() < "janus> ".len() + 4 {
        stdout.read_exact(&mut byte).unwrap();
        seen.push(byte[0]);
    }
    assert!(seen.starts_with(b"janus> "));
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut line = Vec::new();
    while !line.ends_with(b"\n") {
        stdout.read_exact(&mut byte).unwrap();
        line.push(byte[0]);
    }
    drop(stdin); // Ctrl-D at the next prompt
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        line.ends_with(b" [stopped]\n"),
        "{}",
        String::from_utf8_lossy(&line)
    );
    // The prompt came back after the stopped answer.
    assert_eq!(stderr.matches("you> ").count(), 2, "{stderr}");
}

#[test]
fn generate_numbers_images_over_prompts_whatever_the_batch_size() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("prompts.txt");
    std::fs::write(&prompts, "A red apple\n\nA cat\n").unwrap();
    let model = fixture_dir();
    let run = |name: &str, extra: &[&str]| {
        let out_dir = tmp.path().join(name);
        let mut args = vec![
            "generate",
            "--model",
            s(&model),
            "--parallel-size",
            "2",
            "--seed",
            "7",
        ];
        args.extend(["--out", s(&out_dir), "--json", "--quiet"]);
        args.extend(extra);
        let v = stdout_json(&janus(&args));
        let names: Vec<String> = v["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                Path::new(p.as_str().unwrap())
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(names, ["0.png", "1.png", "2.png", "3.png"], "{name}");
        v["image_tokens"].clone()
    };
    let flags = run("flags", &["--prompt", "A red apple", "--prompt", "A cat"]);
    // Image k of the call is seeded image_seed(7, k): the first prompt's two
    // images are those of its own run with seed 7, and each image k of the
    // second prompt is the one image of a run seeded so that its image 0
    // gets image_seed(7, k) (image_seed(s, 0) is s ^ image_seed(0, 0)).
    let single = |name: &str, prompt: &str, n: &str, seed: u64| {
        let out_dir = tmp.path().join(name);
        let seed = seed.to_string();
        stdout_json(&janus(&[
            "generate",
            "--model",
            s(&model),
            "--prompt",
            prompt,
            "--parallel-size",
            n,
            "--seed",
            &seed,
            "--out",
            s(&out_dir),
            "--json",
            "--quiet",
        ]))["image_tokens"]
            .as_array()
            .unwrap()
            .clone()
    };
    let mut want = single("apple", "A red apple", "2", 7);
    for k in [2, 3] {
        let seed = janus::image_seed(janus::image_seed(7, k), 0);
        want.extend(single(&format!("cat{k}"), "A cat", "1", seed));
    }
    assert_eq!(want.len(), 4);
    assert_eq!(flags, serde_json::Value::Array(want));
    assert_ne!(flags[2], flags[3], "each image has its own seed");
    // The same prompts from a file (blank line skipped), in batches of 1 or 3
    // images: image k keeps its codes (f32 is exact whatever the batching).
    assert_eq!(run("file", &["--prompts", s(&prompts)]), flags);
    assert_eq!(
        run("batch1", &["--prompts", s(&prompts), "--batch-size", "1"]),
        flags
    );
    assert_eq!(
        run("batch3", &["--prompts", s(&prompts), "--batch-size", "3"]),
        flags
    );
    // --size upscales every image: the native images of the same run, resized.
    let generate_to = |name: &str, extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--model",
            s(&model),
            "--prompt",
            "A cat",
            "--parallel-size",
            "2",
            "--seed",
            "3",
            "--quiet",
        ];
        let out_dir = tmp.path().join(name);
        args.extend(["--out", s(&out_dir)]);
        args.extend(extra);
        let out = janus(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out_dir
    };
    let (native, sized) = (
        generate_to("native", &[]),
        generate_to("sized", &["--size", "48"]),
    );
    for i in 0..2 {
        let native = image::open(native.join(format!("{i}.png")))
            .unwrap()
            .to_rgb8();
        let sized = image::open(sized.join(format!("{i}.png")))
            .unwrap()
            .to_rgb8();
        assert_eq!(sized.dimensions(), (48, 48));
        assert_eq!(
            sized.as_raw(),
            janus::resize_square(&native, 48).unwrap().as_raw(),
            "image {i}: --size 48 is the resized native image"
        );
    }
}

/// Starts a 600-image generation, sends `signal` once image `after` is
/// written, and returns the exit code, the names left in the output folder
/// and the PNGs among them that do not decode whole.
fn signal_while_writing(signal: &str, after: usize) -> (Option<i32>, Vec<String>, Vec<String>) {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    let mut child = Command::new(env!("CARGO_BIN_EXE_janus"))
        .args([
            "generate",
            "--model",
            s(&fixture_dir()),
            "--prompt",
            "a cat",
            "--quiet",
        ])
        .args([
            "--parallel-size",
            "600",
            "--size",
            "256",
            "--out",
            s(&out_dir),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Synchronised on the files themselves, with a deadline.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !out_dir.join(format!("{after}.png")).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "image {after} not written in 120 s"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "janus ended before image {after}"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let sent = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let code = child.wait().unwrap().code();
    let names: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let torn = names
        .iter()
        .filter(|n| n.ends_with(".png"))
        .filter(|n| {
            image::open(out_dir.join(n))
                .map_or(true, |img| (img.width(), img.height()) != (256, 256))
        })
        .cloned()
        .collect();
    (code, names, torn)
}

/// Interrupted while the images are being written, a run leaves whole PNGs
/// only: Ctrl-C stops before the next image (nothing else left), and even a
/// kill mid-write leaves at most an `N.png.partial`, never a torn `N.png`.
#[test]
fn interrupted_writing_leaves_only_whole_pngs() {
    for (signal, after) in [("-INT", 0), ("-KILL", 3), ("-KILL", 40), ("-KILL", 150)] {
        let (code, names, torn) = signal_while_writing(signal, after);
        if signal == "-INT" {
            assert_eq!(code, Some(130), "exit code after Ctrl-C");
        }
        assert!(torn.is_empty(), "{signal}: torn images {torn:?}");
        let pngs = names.iter().filter(|n| n.ends_with(".png")).count();
        assert!(pngs > after && pngs < 600, "{signal}: {pngs} images");
        let others: Vec<&String> = names.iter().filter(|n| !n.ends_with(".png")).collect();
        let allowed_partials = if signal == "-INT" { 0 } else { 1 };
        assert!(
            others.len() <= allowed_partials && others.iter().all(|n| n.ends_with(".png.partial")),
            "{signal}: {others:?}"
        );
    }
}

/// The tiny model with its weights stored as `dtype`.
fn model_stored_as(dtype: candle_core::DType) -> tempfile::TempDir {
    let dir = model_copy();
    let path = dir.path().join("model.safetensors");
    let tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
    let converted: std::collections::HashMap<String, candle_core::Tensor> = tensors
        .into_iter()
        .map(|(n, t)| (n, t.to_dtype(dtype).unwrap()))
        .collect();
    candle_core::safetensors::save(&converted, &path).unwrap();
    dir
}

#[test]
fn f32_and_f16_checkpoints_and_webp_images_answer_as_the_fixture() {
    let case = &expected_json()["cases"]["understand.single"];
    let answer = |model: &Path, image: &Path| {
        let out = janus(&[
            "understand",
            "--model",
            s(model),
            "--image",
            s(image),
            "--question",
            "Describe this image in detail.",
            "--max-new-tokens",
            "12",
            "--json",
        ]);
        stdout_json(&out)["token_ids"].clone()
    };
    let png = fixture_dir().join("images/wide.png");
    // The fixture's bf16 values are exact in f32 and f16 (tiny ones aside).
    for dtype in [candle_core::DType::F32, candle_core::DType::F16] {
        let dir = model_stored_as(dtype);
        assert_eq!(
            answer(dir.path(), &png),
            case["generated_ids"],
            "{dtype:?} checkpoint"
        );
    }
    // The same pixels as lossless WebP.
    let tmp = tempfile::tempdir().unwrap();
    let webp = tmp.path().join("wide.webp");
    let rgb = image::open(&png).unwrap().to_rgb8();
    let file = std::fs::File::create(&webp).unwrap();
    image::codecs::webp::WebPEncoder::new_lossless(file)
        .encode(
            rgb.as_raw(),
            rgb.width(),
            rgb.height(),
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    assert_eq!(
        answer(&fixture_dir(), &webp),
        case["generated_ids"],
        "WebP input"
    );
}
