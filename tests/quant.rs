//! Reduced-precision weights on the tiny fixture: bf16 weights and q8_0 /
//! 4-bit quantised language-model weights stay close to the exact f32 path
//! (the fixture's sizes are too small for 256-value k-quant blocks, so q4k
//! falls back to q8_0 there; the 4-bit kernels are covered by the unit tests
//! in janus/src/quant.rs), quantised models' q8_0 vision tower stays close
//! too, and greedy decoding / generation (through the bf16 key/value cache
//! of the reduced-precision paths) still run.

mod common;

use candle_core::{DType, Device, IndexOp};
use common::*;
use janus::processor::Message;
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
    let lm = &model.model.language;
    let mut cache = lm.new_cache();
    let hidden = lm.forward_embeds(&embeds, &mut cache).unwrap();
    let last = hidden.i((.., hidden.dim(1).unwrap() - 1)).unwrap();
    lm.lm_logits(&last).unwrap().to_dtype(DType::F32).unwrap()
}

fn cfg_logits(model: &JanusPro) -> candle_core::Tensor {
    let ids = model.generation_ids("a red apple").unwrap();
    let embeds = model.cfg_prompt_embeds(&ids, 1).unwrap();
    let lm = &model.model.language;
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
    let s = exact.model.config.vision.image_size;
    let pixels: Vec<f32> = (0..3 * s * s)
        .map(|i| (i * 7919 % 2000) as f32 / 1000.0 - 1.0)
        .collect();
    let pixels = candle_core::Tensor::from_vec(pixels, (1, 3, s, s), &Device::Cpu).unwrap();
    let features = exact.model.encode_images(&pixels).unwrap();
    for (dtype, quant, tol) in [
        (DType::BF16, Quant::None, TOL_BF16),
        (DType::F32, Quant::Q8_0, TOL_Q8),
        (DType::BF16, Quant::Q4K, TOL_Q8),
    ] {
        let what = format!("{dtype:?}/{quant}");
        let model = JanusPro::load_quantized(&dir, &Device::Cpu, dtype, quant).unwrap();
        assert_close(
            &format!("{what} image features"),
            &model.model.encode_images(&pixels).unwrap(),
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
        let answer = model
            .understand(
                &[Message::user("Hi"), Message::assistant("")],
                &[],
                &UnderstandOptions {
                    max_new_tokens: 4,
                    ..Default::default()
                },
            )
            .unwrap();
        assert!(!answer.token_ids.is_empty(), "{what}: greedy decoding ran");
        let opts = GenerateOptions {
            sampling: SamplingParams::greedy(),
            seed: Some(1),
            ..Default::default()
        };
        let images = model.generate("a cat", &opts).unwrap();
        assert_eq!(images.images.len(), 1, "{what}: generation ran");
    }
}
