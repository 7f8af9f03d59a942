//! Reduced-precision weights on the tiny fixture: bf16 weights and q8_0 /
//! 4-bit quantised language-model weights stay close to the exact f32 path
//! (the fixture's sizes are too small for 256-value k-quant blocks, so q4k
//! falls back to q8_0 there; the 4-bit kernels are covered by the unit tests
//! in janus/src/quant.rs), quantised models' q8_0 vision tower stays close
//! too, and greedy decoding / generation (through the bf16 key/value cache
//! of the reduced-precision paths) give the official code's f32 tokens.

mod common;

use candle_core::{DType, Device, IndexOp};
use common::*;
use janus::{question_conversation, Message};
use janus::{GenerateOptions, JanusPro, Quant, SamplingParams, UnderstandOptions};

/// Relative L2 error of the logits allowed against f32. bf16 weights are
/// exact here (the fixture is stored in bf16), but on CPUs with AVX-512-BF16
/// many-row passes round activations to bf16 (2^-9, as PyTorch bf16; measured
/// 2.3e-3), and without it the compute stays f32 (measured < 1e-6);
/// q8_0 loses ~0.3% per matmul.
const TOL_BF16: f64 = 1e-2;
const TOL_Q8: f64 = 3e-2;

fn last_logits(model: &JanusPro) -> candle_core::Tensor {
    let conv = [
        Message::user("Describe the colors."),
        Message::assistant(""),
    ];
    let (_, embeds) = model.understanding_inputs(&conv, &[]).unwrap();
    let lm = &model.modules().language;
    let mut cache = lm.new_cache();
    let hidden = lm.forward_embeds(&embeds, &mut cache).unwrap();
    let last = hidden.i((.., hidden.dim(1).unwrap() - 1)).unwrap();
    lm.lm_logits(&last).unwrap().to_dtype(DType::F32).unwrap()
}

fn cfg_logits(model: &JanusPro) -> candle_core::Tensor {
    let ids = model.generation_ids("a red apple").unwrap();
    let embeds = model.cfg_prompt_embeds(&ids, 1).unwrap();
    let lm = &model.modules().language;
    let mut cache = lm.new_cache();
    let hidden = lm.forward_embeds(&embeds, &mut cache).unwrap();
    model.cfg_logits(&hidden, 5.0).unwrap().mixed
}

#[test]
fn reduced_precision_tracks_f32_and_runs() {
    let dir = fixture_dir();
    let exact = JanusPro::load(&dir, &Device::Cpu, DType::F32).unwrap();
    let (und, t2i) = (last_logits(&exact), cfg_logits(&exact));
    // Image features: with quantisation the vision tower's linears are q8_0.
    let s = exact.modules().config.vision.image_size;
    let pixels: Vec<f32> = (0..3 * s * s)
        .map(|i| (i * 7919 % 2000) as f32 / 1000.0 - 1.0)
        .collect();
    let pixels = candle_core::Tensor::from_vec(pixels, (1, 3, s, s), &Device::Cpu).unwrap();
    let features = exact.modules().encode_images(&pixels).unwrap();
    for (dtype, quant, tol) in [
        (DType::BF16, Quant::None, TOL_BF16),
        (DType::F32, Quant::Q8_0, TOL_Q8),
        (DType::BF16, Quant::Q4K, TOL_Q8),
    ] {
        let what = format!("{dtype:?}/{quant}");
        let model = JanusPro::load_quantized(&dir, &Device::Cpu, dtype, quant).unwrap();
        assert_close(
            &format!("{what} image features"),
            &model.modules().encode_images(&pixels).unwrap(),
            &features,
            tol,
        );
        assert_close(
            &format!("{what} understanding logits"),
            &last_logits(&model),
            &und,
            tol,
        );
        assert_close(
            &format!("{what} cfg logits"),
            &cfg_logits(&model),
            &t2i,
            tol,
        );
        // Greedy decoding and generation give the official f32 tokens: the
        // fixture's greedy margins (>= 0.067) exceed these paths' errors.
        let answer = model
            .understand(
                &question_conversation("What is a cat?", 0),
                &[],
                &UnderstandOptions {
                    max_new_tokens: 12,
                    ..Default::default()
                },
            )
            .unwrap();
        let want = ids(&expected()["understand.text.generated_ids"]);
        assert_eq!(answer.token_ids, want, "{what}: greedy answer");
        let apple = &expected_json()["cases"]["t2i.apple"];
        let prompt = apple["prompt"].as_str().unwrap();
        let want: Vec<Vec<u32>> = serde_json::from_value(apple["image_tokens"].clone()).unwrap();
        let (tokens, _) = greedy_image_tokens(&model, prompt, 2, 5.0);
        assert_eq!(tokens, want, "{what}: greedy image tokens");
        let opts = GenerateOptions {
            sampling: SamplingParams::greedy(),
            seed: Some(1),
            ..Default::default()
        };
        // Two prompts of different lengths in one batch (their caches
        // stacked, in the reduced-precision key/value dtype).
        let two = model
            .generate_tokens_many(&["a cat", prompt], &opts, 2, &mut |_| Ok(()))
            .unwrap();
        assert_eq!(two[1][0], want[0], "{what}: the longer of two prompts");
        assert_eq!(two[0][0].len(), want[0].len(), "{what}: the shorter");
    }
}

fn pixels(model: &JanusPro) -> candle_core::Tensor {
    let s = model.modules().config.vision.image_size;
    let v: Vec<f32> = (0..3 * s * s)
        .map(|i| (i * 7919 % 2000) as f32 / 1000.0 - 1.0)
        .collect();
    candle_core::Tensor::from_vec(v, (1, 3, s, s), &Device::Cpu).unwrap()
}

fn assert_same(what: &str, a: &candle_core::Tensor, b: &candle_core::Tensor) {
    assert_eq!(rel_l2(a, b), 0.0, "{what} differ");
}

/// A folder saved by `gguf::save_quantized` loads to exactly the model a
/// quantising load makes (same blocks, same dense tensors), from both the
/// safetensors and the sharded pickle copies, in the quantisation it was
/// saved with.
#[test]
fn saved_quantised_folder_loads_as_the_quantising_load() {
    for (src, quant) in [
        (fixture_dir(), Quant::Q8_0),
        (fixture_dir().join("bin-bf16"), Quant::Q4K),
    ] {
        let out = tempfile::tempdir().unwrap();
        let mut steps = vec![];
        let path = janus::save_quantized(&src, quant, out.path(), &mut |p| {
            steps.push((p.step, p.total));
            Ok(())
        })
        .unwrap();
        assert_eq!(path, out.path().join("model.gguf"));
        let total = steps.last().unwrap().1;
        assert_eq!(steps, (1..=total).map(|s| (s, total)).collect::<Vec<_>>());
        for f in ["config.json", "tokenizer.json", "preprocessor_config.json"] {
            assert!(out.path().join(f).exists(), "{f} copied");
        }
        // q8_0 blocks take 34 bytes per 32 values, against 64 in bf16.
        let bf16_size = std::fs::metadata(fixture_dir().join("model.safetensors"))
            .unwrap()
            .len();
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(
            size < bf16_size * 9 / 10,
            "{size} bytes vs {bf16_size} in bf16"
        );

        let direct = JanusPro::load_quantized(&src, &Device::Cpu, DType::F32, quant).unwrap();
        let saved = JanusPro::load(out.path(), &Device::Cpu, DType::F32).unwrap();
        assert_eq!(saved.quant(), quant);
        let what = format!("{quant} from {}", src.display());
        let px = pixels(&direct);
        assert_same(
            &format!("{what}: image features"),
            &saved.modules().encode_images(&px).unwrap(),
            &direct.modules().encode_images(&px).unwrap(),
        );
        assert_same(
            &format!("{what}: understanding logits"),
            &last_logits(&saved),
            &last_logits(&direct),
        );
        assert_same(
            &format!("{what}: cfg logits"),
            &cfg_logits(&saved),
            &cfg_logits(&direct),
        );
        let n = saved.text_processor().config.num_image_tokens;
        let codes: Vec<u32> = (0..n as u32).map(|i| i * 37 % 97).collect();
        let decoded =
            |m: &JanusPro| m.decode_images(std::slice::from_ref(&codes)).unwrap()[0].clone();
        assert_eq!(decoded(&saved), decoded(&direct), "{what}: VQ decode");
        // The same quantisation may be named again; another is refused.
        let again = JanusPro::load_quantized(out.path(), &Device::Cpu, DType::F32, quant).unwrap();
        assert_eq!(again.quant(), quant);
        let other = if quant == Quant::Q8_0 {
            Quant::Q4K
        } else {
            Quant::Q8_0
        };
        let err = JanusPro::load_quantized(out.path(), &Device::Cpu, DType::F32, other)
            .err()
            .expect("a different quantisation is refused");
        assert!(
            err.to_string().contains(&format!("holds {quant} weights")),
            "{err}"
        );
    }
}

#[test]
fn saving_a_quantised_folder_refuses_bad_requests_and_leaves_nothing_behind() {
    let src = fixture_dir();
    let save = |out: &std::path::Path, quant| {
        janus::save_quantized(&src, quant, out, &mut |_| Ok(())).err()
    };
    let tmp = tempfile::tempdir().unwrap();
    let msg = |e: Option<janus::JanusError>| e.expect("refused").to_string();
    assert!(msg(save(tmp.path(), Quant::None)).contains("q8_0 or q4k"));
    assert!(msg(save(&src, Quant::Q8_0)).contains("is the model folder"));
    let has_weights = tmp.path().join("has-weights");
    std::fs::create_dir(&has_weights).unwrap();
    std::fs::write(has_weights.join("model.safetensors"), b"x").unwrap();
    assert!(msg(save(&has_weights, Quant::Q8_0)).contains("already holds model weights"));

    // Cancelled half way: no model.gguf, no partial file, nothing copied.
    let out = tmp.path().join("cancelled");
    let err = janus::save_quantized(&src, Quant::Q8_0, &out, &mut |p| {
        if p.step == 5 {
            Err(janus::JanusError::Cancelled)
        } else {
            Ok(())
        }
    })
    .err()
    .expect("cancelled");
    assert!(matches!(err, janus::JanusError::Cancelled), "{err}");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);

    // A saved folder is not quantised again, and a damaged file is named.
    let saved = tmp.path().join("saved");
    janus::save_quantized(&src, Quant::Q8_0, &saved, &mut |_| Ok(())).unwrap();
    // Saving again into the same folder replaces its model.gguf.
    janus::save_quantized(&src, Quant::Q8_0, &saved, &mut |_| Ok(())).unwrap();
    assert_eq!(
        std::fs::read_dir(&saved)
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("partial"))
            .count(),
        0
    );
    // The file itself is not a model folder.
    let opts = janus::LoadOptions::default();
    let err = JanusPro::from_pretrained(saved.join("model.gguf").to_str().unwrap(), &opts)
        .err()
        .expect("a file");
    assert!(
        err.to_string().contains("is a file; pass the model folder"),
        "{err}"
    );
    let err = janus::save_quantized(&saved, Quant::Q8_0, &tmp.path().join("x"), &mut |_| Ok(()))
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("already quantised (q8_0)"),
        "{err}"
    );
    let gguf = saved.join("model.gguf");
    let bytes = std::fs::read(&gguf).unwrap();
    std::fs::write(&gguf, &bytes[..bytes.len() / 2]).unwrap();
    let err = JanusPro::load(&saved, &Device::Cpu, DType::F32)
        .err()
        .expect("truncated");
    assert!(
        err.to_string().contains("model.gguf") && err.to_string().contains("truncated"),
        "{err}"
    );
    std::fs::write(&gguf, b"not a gguf file").unwrap();
    let err = JanusPro::load(&saved, &Device::Cpu, DType::F32)
        .err()
        .expect("garbage");
    assert!(err.to_string().contains("model.gguf"), "{err}");
    // A GGUF file from elsewhere (here candle's writer, no janus.quant).
    let t = candle_core::quantized::QTensor::quantize(
        &candle_core::Tensor::zeros((2, 32), DType::F32, &Device::Cpu).unwrap(),
        candle_core::quantized::GgmlDType::Q8_0,
    )
    .unwrap();
    let mut f = std::fs::File::create(&gguf).unwrap();
    candle_core::quantized::gguf_file::write(&mut f, &[], &[("x.weight", &t)]).unwrap();
    drop(f);
    let err = JanusPro::load(&saved, &Device::Cpu, DType::F32)
        .err()
        .expect("foreign");
    assert!(
        err.to_string()
            .contains("not a Janus-Pro model written by `janus quantize`"),
        "{err}"
    );
}
