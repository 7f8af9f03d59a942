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

/// Fails with exit code 2 and one line on stderr that contains `needle`.
fn assert_input_error(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "exit code; stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(needle), "expected {needle:?} in {err:?}");
}

fn understand_on(model: &Path) -> Output {
    let image = fixture_dir().join("images/square.png");
    janus(&[
        "understand",
        "--model",
        s(model),
        "--image",
        s(&image),
        "--question",
        "What?",
        "--max-new-tokens",
        "2",
    ])
}

#[test]
fn bad_model_folders_are_one_line_errors() {
    assert_input_error(
        &understand_on(Path::new("/nonexistent/model")),
        "model folder not found",
    );

    let no_weights = model_copy();
    std::fs::remove_file(no_weights.path().join("model.safetensors")).unwrap();
    assert_input_error(&understand_on(no_weights.path()), "model weights");

    let truncated = model_copy();
    let st = truncated.path().join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    assert_input_error(&understand_on(truncated.path()), "model.safetensors");

    let bad_cls = model_copy();
    edit_config(bad_cls.path(), |v| {
        v["gen_vision_config"]["cls"] = "VQ-32".into()
    });
    assert_input_error(&understand_on(bad_cls.path()), "gen_vision_config.cls");

    let bad_proj = model_copy();
    edit_config(bad_proj.path(), |v| {
        v["aligner_config"]["params"]["projector_type"] = "mlp_relu".into()
    });
    assert_input_error(&understand_on(bad_proj.path()), "projector_type");

    let bad_shape = model_copy();
    edit_config(bad_shape.path(), |v| {
        v["language_config"]["intermediate_size"] = 128.into()
    });
    assert_input_error(&understand_on(bad_shape.path()), "language_model.model.layers.0.mlp.gate_proj.weight has shape [176, 64] in the checkpoint, the model expects [128, 64]");
}

#[test]
fn bad_inputs_are_one_line_errors() {
    let dir = fixture_dir();
    let tmp = tempfile::tempdir().unwrap();
    let not_image = tmp.path().join("notes.png");
    std::fs::write(&not_image, "this is not an image").unwrap();
    let out = janus(&[
        "understand",
        "--model",
        s(&dir),
        "--image",
        s(&not_image),
        "--question",
        "What?",
    ]);
    assert_input_error(&out, "notes.png");

    let missing = tmp.path().join("missing.png");
    let out = janus(&[
        "understand",
        "--model",
        s(&dir),
        "--image",
        s(&missing),
        "--question",
        "What?",
    ]);
    assert_input_error(&out, "missing.png");

    // Two placeholders, one image.
    let image = dir.join("images/square.png");
    let out = janus(&[
        "understand",
        "--model",
        s(&dir),
        "--image",
        s(&image),
        "--question",
        "<image_placeholder> and <image_placeholder>?",
    ]);
    assert_input_error(&out, "placeholder");

    let conv = tmp.path().join("conv.json");
    std::fs::write(
        &conv,
        r#"[{"role": "<|User|>", "content": "Hi", "images": ["images/x.png"]}]"#,
    )
    .unwrap();
    let out = janus(&["understand", "--model", s(&dir), "--conversation", s(&conv)]);
    assert_input_error(&out, "x.png");

    let out = janus(&[
        "generate",
        "--model",
        s(&dir),
        "--prompt",
        "cat",
        "--parallel-size",
        "0",
        "--out",
        s(tmp.path()),
    ]);
    assert_input_error(&out, "parallel size");

    let out = janus(&[
        "generate",
        "--model",
        s(&dir),
        "--prompt",
        "  ",
        "--out",
        s(tmp.path()),
    ]);
    assert_input_error(&out, "prompt is empty");

    // The tiny model's context is 1024 positions.
    let long = "word ".repeat(1200);
    let out = janus(&[
        "generate",
        "--model",
        s(&dir),
        "--prompt",
        &long,
        "--out",
        s(tmp.path()),
    ]);
    assert_input_error(&out, "context");
    let out = janus(&[
        "understand",
        "--model",
        s(&dir),
        "--image",
        s(&image),
        "--question",
        &long,
    ]);
    assert_input_error(&out, "context");
}
