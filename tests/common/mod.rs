//! Shared helpers of the fixture tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

pub mod folders;
#[allow(unused_imports)]
pub use folders::{fixture_dir, link_files, tiny_576};

/// The two copies of the tiny model: bf16 safetensors, and sharded bf16 pickles.
pub fn model_dirs() -> [PathBuf; 2] {
    [fixture_dir(), fixture_dir().join("bin-bf16")]
}

pub fn expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture_dir().join("expected.safetensors"), &Device::Cpu)
        .expect("expected.safetensors")
}

pub fn expected_json() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture_dir().join("expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("expected.json parses")
}

/// ||a - b|| / ||b|| over all elements, in f64 (the shapes must agree).
pub fn rel_l2(a: &Tensor, b: &Tensor) -> f64 {
    janus_kernels::tensor::rel_l2(a, b).expect("comparable tensors")
}

pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    let err = rel_l2(got, want);
    assert!(err <= tol, "{what}: relative L2 error {err:e} > {tol:e}");
}

pub fn ids(t: &Tensor) -> Vec<u32> {
    t.to_dtype(DType::I64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|x| x as u32)
        .collect()
}

/// The greedy image tokens of `prompt` (argmax of the CFG-mixed logits) and
/// the steps the progress callback saw.
pub fn greedy_image_tokens(
    model: &janus::JanusPro,
    prompt: &str,
    parallel_size: usize,
    cfg_weight: f64,
) -> (Vec<Vec<u32>>, usize) {
    let opts = janus::GenerateOptions {
        parallel_size,
        cfg_weight,
        sampling: janus::SamplingParams::greedy(),
        seed: None,
    };
    let mut steps = 0;
    let tokens = model
        .generate_tokens(prompt, &opts, &mut |p| {
            steps = p.step;
            Ok(())
        })
        .unwrap();
    (tokens, steps)
}

/// The language model's logits after the last position of `embeds` [1, T, D]
/// (a prompt prefilled from a fresh cache).
pub fn last_prompt_logits(model: &janus::JanusPro, embeds: &Tensor) -> Tensor {
    use candle_core::IndexOp;
    let lm = &model.modules().language;
    let hidden = lm.forward_embeds(embeds, &mut lm.new_cache()).unwrap();
    let last_hidden = hidden.i((.., hidden.dim(1).unwrap() - 1)).unwrap();
    lm.lm_logits(&last_hidden).unwrap().squeeze(0).unwrap()
}
